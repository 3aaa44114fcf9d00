"""examples/torchrl_ppo_style.py — a TorchRL script built from TorchRL's own modules (TanhNormal over
MLP + NormalParamExtractor, ValueOperator, Collector, GAE, CSVLogger) — runs a few iterations
end to end, logs through the TorchRL logger, moves the actor and keeps every step inside the trust
region. Run through a subprocess, as a user would."""

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_KL = 0.01
FRAMES, PER_BATCH = 1024, 512

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("gymnasium") is None, reason="needs gymnasium"),
    pytest.mark.slow,
]


def run_example(logdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # small flags: two iterations, a short critic fit, one evaluation episode after the second
    args = ["--total-frames", str(FRAMES), "--frames-per-batch", str(PER_BATCH), "--max-kl", str(MAX_KL)]
    args += ["--critic-epochs", "2", "--eval-every", "2", "--eval-episodes", "1", "--logdir", str(logdir)]
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "torchrl_ppo_style.py"), *args, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def scalars(logdir: Path, name: str) -> list[tuple[int, float]]:
    """One logged series of the CSVLogger: (frames, value) rows."""
    path = logdir / "trpo_torchrl_ppo_style" / "scalars" / f"{name}.csv"
    with path.open() as f:
        return [(int(step), float(value)) for step, value in csv.reader(f)]


def check_run(proc: subprocess.CompletedProcess, logdir: Path) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    iterations = FRAMES // PER_BATCH
    kl = scalars(logdir, "train/kl")
    assert [step for step, _ in kl] == [PER_BATCH * (i + 1) for i in range(iterations)]
    # every step inside the trust region, and the line search took one each time (Pendulum leaves room)
    assert all(0.0 <= value <= MAX_KL for _, value in kl), kl
    assert all(value == 1.0 for _, value in scalars(logdir, "train/step_accepted"))
    # the actor moved, by the accepted steps
    assert all(value > 0 for _, value in scalars(logdir, "train/actor_step_norm"))
    assert all(value > 0 for _, value in scalars(logdir, "train/surrogate_improvement"))
    (evaluation,) = scalars(logdir, "eval/reward")
    assert evaluation[0] == FRAMES


def test_example_runs_with_kl_hessian_products(tmp_path):
    check_run(run_example(tmp_path, "--fvp", "kl_hessian"), tmp_path)


def test_example_runs_with_the_default_products(tmp_path):
    check_run(run_example(tmp_path), tmp_path)
