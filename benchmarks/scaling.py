"""How do steps per second and time per iteration change with more collector workers, and with more
learner ranks?

Each point is a real ``trpo-torchrl train`` run on HalfCheetah-v5 (its preset: 2 environments ×
1024 steps = 2048 frames per iteration, so every point learns from the same batch size):

  * workers  – ``--collector sync`` for 1 worker, ``--collector multisync --workers W`` (or
               ``--collector ray`` with ``--ray``) for W = 2, 4, … up to the cores present;
  * ranks    – ``torchrun --nproc-per-node K -m trpo_torchrl train --collector sync …`` (launched
               as ``python -m torch.distributed.run``) for K = 2, 4, … up to the cores present, each
               rank collecting 2048 / K frames and the update averaged over the ranks.

Both sweeps start from the same point, one process with ``--collector sync`` (TorchRL's
``Collector``), so they measure what the extra processes buy, not the app's own single-process
``direct`` loop, which is faster still (``benchmarks/throughput.py``).

Every run gets ``OMP_NUM_THREADS=--threads`` (default 1), the value torchrun itself gives its ranks:
the networks are small, and on a busy machine a process whose policy call spreads over several
intra-op threads waits for the slowest of them at every environment step, which would flatter
every multi-process point against the single-process one.

Time per iteration is the median of rank 0's per-iteration wall time (collection + advantages +
actor step + critic fit + weight push) from ``progress.csv``, after ``--warmup`` iterations that
are left out (worker start-up, first-call allocations). Steps/s is frames per iteration over it.

    python benchmarks/scaling.py                       # both sweeps, up to the cores present
    python benchmarks/scaling.py --max-workers 2 --max-ranks 2 --iterations 4
    python benchmarks/scaling.py --ray                 # the worker sweep on a local Ray instead
    python benchmarks/scaling.py --out scaling.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torchrl

import trpo_torchrl

FRAMES_PER_BATCH = 2048  # HalfCheetah-v5's preset: 2 envs × 1024 steps


def powers_of_two_up_to(n: int) -> list[int]:
    out, k = [], 1
    while k <= n:
        out.append(k)
        k *= 2
    if out[-1] != n and FRAMES_PER_BATCH % n == 0 and 1024 % n == 0:
        out.append(n)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_point(label: str, launcher: list[str], flags: list[str], args, logdir: Path) -> dict:
    """Runs one training and reads its per-iteration times back from progress.csv."""
    run = logdir / label
    cmd = [
        *launcher,
        "train",
        "--env",
        args.env,
        "--logdir",
        str(logdir),
        "--run-name",
        label,
        "--total-frames",
        str(args.iterations * FRAMES_PER_BATCH),
        "--eval-episodes",
        "0",
        "--checkpoint-every",
        "0",
        "--logger",
        "none",
        "--progress",
        "false",
        "--seed",
        "0",
        *flags,
    ]
    print(f"[{label}] {' '.join(cmd)}", file=sys.stderr, flush=True)
    # run from the scratch folder (MuJoCo drops its log file in the working directory), with the
    # trpo_torchrl this script imported first on the path
    package_root = str(Path(trpo_torchrl.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=logdir)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with (run / "progress.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["fps"]]
    elapsed = [float(r["time_s"]) for r in rows]
    per_iteration = [b - a for a, b in zip([0.0, *elapsed], elapsed)][args.warmup :]
    seconds = statistics.median(per_iteration)
    return {
        "label": label,
        "command": " ".join(cmd),
        "iterations_timed": len(per_iteration),
        "seconds_per_iteration": seconds,
        "steps_per_second": FRAMES_PER_BATCH / seconds,
        "per_iteration_s": per_iteration,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--iterations", type=int, default=5, help="iterations per run (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="first iterations left out of the timing (default: 1)")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count(), help="largest worker count (default: cores)")
    parser.add_argument("--max-ranks", type=int, default=os.cpu_count(), help="largest rank count (default: cores)")
    parser.add_argument("--ray", action="store_true", help="sweep workers on TorchRL's Ray collector (local Ray)")
    parser.add_argument("--skip-ranks", action="store_true", help="only the worker sweep")
    parser.add_argument("--skip-workers", action="store_true", help="only the rank sweep")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run (default: 1)")
    parser.add_argument("--out", default="scaling.json", help="JSON file to write (default: scaling.json)")
    args = parser.parse_args()
    if args.iterations <= args.warmup:
        parser.error("--iterations must exceed --warmup")

    app = [sys.executable, "-m", "trpo_torchrl"]
    points = []
    with tempfile.TemporaryDirectory(prefix="trpo_scaling_") as tmp:
        logdir = Path(tmp)
        if not args.skip_workers:
            collector = "ray" if args.ray else "multisync"
            for w in powers_of_two_up_to(args.max_workers):
                flags = ["--collector", "sync"] if w == 1 else ["--collector", collector, "--workers", str(w)]
                point = run_point(f"workers{w}", app, flags, args, logdir)
                points.append(
                    {
                        "sweep": "workers",
                        "collector": "sync" if w == 1 else collector,
                        "workers": w,
                        "ranks": 1,
                        **point,
                    }
                )
        if not args.skip_ranks:
            for k in powers_of_two_up_to(args.max_ranks):
                single = [p for p in points if p["sweep"] == "workers" and p["workers"] == 1]
                if k == 1 and single:  # one rank with one sync worker is the run already timed
                    points.append({**single[0], "sweep": "ranks"})
                    continue
                launcher = (
                    app
                    if k == 1
                    else [
                        sys.executable,
                        "-m",
                        "torch.distributed.run",
                        "--nproc-per-node",
                        str(k),
                        "--master-addr",
                        "127.0.0.1",
                        "--master-port",
                        str(free_port()),
                        "-m",
                        "trpo_torchrl",
                    ]
                )
                point = run_point(f"ranks{k}", launcher, ["--collector", "sync"], args, logdir)
                points.append({"sweep": "ranks", "collector": "sync", "workers": 1, "ranks": k, **point})

    machine = {
        "node": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "trpo_torchrl": trpo_torchrl.__version__,
        "compiled_ops": trpo_torchrl.extension_loaded(),
        "omp_num_threads": args.threads,
        "load_average_at_end": os.getloadavg(),
    }
    Path(args.out).write_text(
        json.dumps(
            {"machine": machine, "env": args.env, "frames_per_batch": FRAMES_PER_BATCH, "points": points}, indent=2
        )
    )

    print(
        f"\n{args.env}, {FRAMES_PER_BATCH} frames per iteration · {machine['cpu_count']} cores "
        f"({machine['processor']}, {machine['node']}) · torch {machine['torch']}, torchrl {machine['torchrl']} · "
        f"OMP_NUM_THREADS={args.threads} · load average at the end {machine['load_average_at_end'][0]:.1f}\n"
    )
    print("| sweep | collector | workers | ranks | s / iteration | steps/s | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for sweep in ("workers", "ranks"):
        rows = [p for p in points if p["sweep"] == sweep]
        if not rows:
            continue
        base = rows[0]["seconds_per_iteration"]
        for p in rows:
            print(
                f"| {sweep} | {p['collector']} | {p['workers']} | {p['ranks']} | {p['seconds_per_iteration']:.3f} "
                f"| {p['steps_per_second']:.0f} | {base / p['seconds_per_iteration']:.2f}× |"
            )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
