"""Does the training app learn with MultiDiscrete and MultiBinary actions?

Trains ``examples.sign_envs:SignLevels-v0`` (MultiDiscrete([2, 3, 4, 5]), independent categoricals)
and ``examples.sign_envs:SignBits-v0`` (MultiBinary(8), independent Bernoullis) through the command
line (``trpo-torchrl train --env examples.sign_envs:Id``, sb3-contrib's default TRPO settings but
4 environments × 512 steps per batch), then evaluates the final checkpoint as ``trpo-torchrl eval``
does (the deterministic policy, 20 episodes of 32 steps, the run's evaluation seed) and compares
it with uniformly random actions on the same episodes and the best possible return (32).

    python benchmarks/learning_spaces.py --out bench_out/spaces.json   # 30 720 frames per task, 2 seeds
    python benchmarks/learning_spaces.py --tiny                          # smoke test: 2 048 frames, 1 seed
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, write_json  # noqa: E402

import examples.sign_envs  # noqa: E402,F401 - registers the tasks
from trpo_torchrl.app.cli import main  # noqa: E402
from trpo_torchrl.app.evaluate import EVAL_SEED_OFFSET  # noqa: E402

TASKS = ["examples.sign_envs:SignLevels-v0", "examples.sign_envs:SignBits-v0"]
EPISODES = 20


def random_returns(env_id: str, seed: int, episodes: int) -> list[float]:
    """Uniformly random actions on the episodes the evaluation runs (same seeds, one env each)."""
    returns = []
    for k in range(episodes):
        env = gym.make(env_id.split(":")[1])
        env.reset(seed=seed + k)
        # not the env's own seed: the same generator stream would draw the observation's answer
        env.action_space.seed(seed + k + 1_000_003)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += reward
            done = terminated or truncated
        returns.append(total)
    return returns


def run(task: str, seed: int, frames: int, logdir: Path, episodes: int) -> dict:
    name = f"{task.split(':')[1]}__seed{seed}"
    argv = ["train", "--env", task, "--seed", str(seed), "--total-frames", str(frames)]
    argv += ["--num-envs", "4", "--steps-per-env", "512", "--eval-episodes", "0", "--progress", "false"]
    argv += ["--logger", "none", "--logdir", str(logdir), "--run-name", name]
    start = time.perf_counter()
    assert main(argv) == 0
    seconds = time.perf_counter() - start
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["eval", "--checkpoint", str(logdir / name), "--episodes", str(episodes), "--json"]) == 0
    result = json.loads(buffer.getvalue().strip().splitlines()[-1])
    rand = random_returns(task, seed + EVAL_SEED_OFFSET, episodes)
    return {
        "task": task,
        "seed": seed,
        "frames": frames,
        "eval_mean": result["mean_return"],
        "random_mean": float(np.mean(rand)),
        "train_s": seconds,
    }


def main_(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30_720)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="2 048 frames, 1 seed, 2 evaluation episodes")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    frames, seeds, episodes = (2048, 1, 2) if args.tiny else (args.frames, args.seeds, EPISODES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in TASKS:
            for seed in range(seeds):
                rows.append(run(task, seed, frames, Path(tmp), episodes))
    print(f"\n{frames} frames per run; evaluation: {episodes} deterministic episodes of 32 steps (max return 32)")
    print(f"{'task':<36} {'seed':>4} {'trained':>8} {'random':>8} {'train s':>8}")
    for r in rows:
        print(f"{r['task']:<36} {r['seed']:>4} {r['eval_mean']:>8.2f} {r['random_mean']:>8.2f} {r['train_s']:>8.1f}")
    result = {"machine": machine(), "episodes": episodes, "runs": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main_()
