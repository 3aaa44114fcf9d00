"""Small training-app runs the app tests share: a tiny batch on the command line, a config built
from keywords, and a trainer's parameters by name."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from trpo_torchrl.app.cli import main
from trpo_torchrl.app.config import build_config

# 2 environments × 64 steps: 128 frames per iteration, two short critic epochs
TINY = [
    "--num-envs",
    "2",
    "--steps-per-env",
    "64",
    "--critic-epochs",
    "2",
    "--critic-minibatch",
    "64",
    "--progress",
    "false",
]


def train_tiny(tmp_path, *extra):
    """`trpo-torchrl train` with the TINY batch into tmp_path/run; returns the exit code."""
    return main(["train", "--logdir", str(tmp_path), "--run-name", "run", *TINY, *extra])


def app_config(tmp_path, name, total_frames, env="CartPole-v1", **kw):
    """A tiny config for a Trainer writing to tmp_path/name, checkpointing every iteration."""
    base = dict(
        env=env,
        total_frames=total_frames,
        num_envs=2,
        steps_per_env=64,
        critic_epochs=2,
        critic_minibatch=64,
        progress=False,
        eval_episodes=0,
        logdir=str(tmp_path),
        run_name=name,
        checkpoint_every=1,
        logger="none",
    )
    base.update(kw)
    return build_config(base)


def trainer_parameters(trainer):
    """The actor's (a.) and critic's (c.) tensors by name."""
    return {
        **{f"a.{k}": v for k, v in trainer.actor.state_dict().items()},
        **{f"c.{k}": v for k, v in trainer.critic.state_dict().items()},
    }


def progress_rows(run: Path) -> list[dict]:
    """The iteration rows of ``run``'s progress.csv (none while it does not exist yet)."""
    path = Path(run) / "progress.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [row for row in csv.DictReader(f) if row["frames"]]


ROOT = Path(__file__).resolve().parent.parent


def start_cli(argv: list[str], **popen) -> subprocess.Popen:
    """``python -m trpo_torchrl *argv`` started from the repository root, this checkout first on the
    path, its output piped as text; ``popen`` adds Popen's own arguments (a ``preexec_fn``, a session)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "trpo_torchrl", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
