"""Does the training app's recurrent policy learn a task that needs memory?

Trains ``CartPoleNoVel-v1`` (CartPole without its velocities: the policy has to infer them from the
history) through the command line with ``--policy lstm`` and, for contrast, ``--policy mlp`` (the
same preset, frames and seed; the MLP sees only the current position and angle), then evaluates each
final checkpoint as ``trpo-torchrl eval`` does (the deterministic policy, 20 episodes, the run's
evaluation seed). The issue's bar: the LSTM's mean evaluation return ≥ 400 within 300k frames.
Each run also evaluates every ``--eval-every`` iterations (10 episodes), which gives the first
frame count at which it reached 400.

    python benchmarks/learning_recurrent.py --out bench_out/recurrent.json     # 300k frames each
    python benchmarks/learning_recurrent.py --policies lstm --frames 100000   # one policy, fewer frames
    python benchmarks/learning_recurrent.py --tiny                             # smoke test: 512 frames
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, write_json  # noqa: E402

from trpo_torchrl.app.cli import main  # noqa: E402

TASK = "CartPoleNoVel-v1"
EPISODES = 20
BAR = 400.0


def first_reaching(progress: Path, bar: float) -> int | None:
    """The frames at the first periodic evaluation whose mean return reached ``bar`` (None: never)."""
    with progress.open() as f:
        for row in csv.DictReader(f):
            if row.get("eval_return") and float(row["eval_return"]) >= bar:
                return int(row["frames"])
    return None


def run(policy: str, seed: int, frames: int, logdir: Path, episodes: int, eval_every: int) -> dict:
    name = f"{TASK}__{policy}__seed{seed}"
    argv = ["train", "--env", TASK, "--policy", policy, "--seed", str(seed), "--total-frames", str(frames)]
    argv += ["--eval-episodes", "10", "--eval-every", str(eval_every), "--progress", "false"]
    argv += ["--logger", "none", "--logdir", str(logdir), "--run-name", name]
    start = time.perf_counter()
    assert main(argv) == 0
    seconds = time.perf_counter() - start
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["eval", "--checkpoint", str(logdir / name), "--episodes", str(episodes), "--json"]) == 0
    result = json.loads(buffer.getvalue().strip().splitlines()[-1])
    return {
        "policy": policy,
        "seed": seed,
        "frames": frames,
        "eval_mean": result["mean_return"],
        "eval_std": result["std_return"],
        "frames_to_400": first_reaching(logdir / name / "progress.csv", BAR),
        "train_s": seconds,
    }


def main_(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300_000)
    parser.add_argument("--policies", nargs="+", default=["lstm", "mlp"], choices=["lstm", "gru", "mlp"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100, help="iterations between periodic evaluations")
    parser.add_argument("--logdir", default=None, help="keep the run directories here (default: a temporary one)")
    parser.add_argument("--tiny", action="store_true", help="512 frames, 2 evaluation episodes")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    frames, episodes = (512, 2) if args.tiny else (args.frames, EPISODES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(args.logdir) if args.logdir else Path(tmp)
        for policy in args.policies:
            rows.append(run(policy, args.seed, frames, logdir, episodes, args.eval_every))
    print(f"\n{TASK}, {frames} frames per run (its preset); evaluation: {episodes} deterministic episodes (max 500)")
    print(f"{'policy':<6} {'seed':>4} {'eval mean':>9} {'eval std':>8} {'frames to 400':>13} {'train s':>8}")
    for r in rows:
        reached = "-" if r["frames_to_400"] is None else str(r["frames_to_400"])
        print(
            f"{r['policy']:<6} {r['seed']:>4} {r['eval_mean']:>9.1f} {r['eval_std']:>8.1f} {reached:>13} "
            f"{r['train_s']:>8.0f}"
        )
    result = {"machine": machine(), "task": TASK, "episodes": episodes, "runs": rows}
    print(json.dumps(result))
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main_()
