"""Stepping M members' sub-environments (num_envs each, the preset's) in worker processes: which layout of
gymnasium's AsyncVectorEnv is faster, M vector envs stepped in lockstep (step_async on every member's,
then step_wait on each: what `--env-workers` does) or one vector env over all M x num_envs
sub-environments? And what does either cost against stepping the sub-environments in this process?

Random actions, no policy: the environments' share of collection only. Each layout forks its workers
from the live sub-environments (as `DirectCollector(env_workers=N)` does) and returns empty info dicts.
Columns: seconds for `--steps` steps of every sub-environment, best of `--reps`, and the microseconds
per sub-environment step.

Usage: python benchmarks/env_workers_layout.py [--env HalfCheetah-v5] [--members 1,4,8] [--steps 512] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402

from trpo_torchrl.app.config import build_config  # noqa: E402
from trpo_torchrl.app.envs import make_env  # noqa: E402
from trpo_torchrl.collectors import _WorkerEnv, gym_vector_env  # noqa: E402


def _in_process(subs, actions, steps):
    for t in range(steps):
        a = actions[t % len(actions)]
        for i, sub in enumerate(subs):
            _, _, terminated, truncated, _ = sub.step(a[i])
            if terminated or truncated:
                sub.reset()


def _workers(groups):
    owner = os.getpid()
    return [
        gym.vector.AsyncVectorEnv(
            [partial(_WorkerEnv, sub, i, owner) for i, sub in enumerate(group)],
            shared_memory=True,
            copy=False,
            context="fork",
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        for group in groups
    ]


def _lockstep(vectors, actions, steps):
    for t in range(steps):
        a = actions[t % len(actions)]
        start = 0
        for v in vectors:
            v.step_async(a[start : start + v.num_envs])
            start += v.num_envs
        for v in vectors:
            v.step_wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--members", default="1,4,8")
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    info = machine()
    print("machine:", json.dumps(info))
    n = build_config({"env": args.env, "logger": "none"}).num_envs
    print(
        f"\n{args.env}, {n} environments per member, {args.steps} steps, best of {args.reps}: s (µs per sub-env step)"
    )
    print(f"{'M':>3} {'in this process':>18} {'M vector envs, lockstep':>24} {'one vector env':>18}")
    rows = []
    for members in [int(m) for m in args.members.split(",")]:
        subs = [s for m in range(members) for s in gym_vector_env(make_env(args.env, n, seed=m)).envs]
        space = subs[0].action_space
        space.seed(0)
        actions = [np.stack([space.sample() for _ in subs]) for _ in range(16)]
        layouts = {
            "lockstep": _workers([subs[m * n : (m + 1) * n] for m in range(members)]),
            "one": _workers([subs]),
        }
        best = {"here": float("inf"), "lockstep": float("inf"), "one": float("inf")}
        for _ in range(args.reps):  # interleaved, so a burst of load hits every layout alike
            t0 = time.perf_counter()
            _in_process(subs, actions, args.steps)
            best["here"] = min(best["here"], time.perf_counter() - t0)
            for name, vectors in layouts.items():
                t0 = time.perf_counter()
                _lockstep(vectors, actions, args.steps)
                best[name] = min(best[name], time.perf_counter() - t0)
        for vectors in layouts.values():
            for v in vectors:
                v.close()
        per = {k: 1e6 * v / (args.steps * len(subs)) for k, v in best.items()}
        rows.append(dict(env=args.env, members=members, num_envs=n, steps=args.steps, seconds=best, us_per_step=per))
        print(
            f"{members:>3} {best['here']:>9.3f} ({per['here']:>5.0f}) {best['lockstep']:>15.3f} ({per['lockstep']:>5.0f}) "
            f"{best['one']:>9.3f} ({per['one']:>5.0f})",
            flush=True,
        )
    write_json(args.out, dict(machine=info, rows=rows))
    return rows


if __name__ == "__main__":
    main()
