"""End to end, how many environment steps per second does training reach, ours against
sb3-contrib's TRPO, on HalfCheetah-v5 with the same rl-zoo3 preset?

Both train from scratch for the same fixed number of frames (collection, advantages, actor step,
critic fit, observation/reward normalisation; no evaluation, no logging, no checkpoints):

  * ours:  the training app's ``Trainer`` (by default its ``direct`` collector: its own loop over a
           synchronous Gymnasium vector env; ``--collector sync`` for TorchRL's ``Collector``;
           FusedGAE, TrustRegionUpdate, CriticFit), ``trainer.train()`` timed;
  * peer:  ``sb3_contrib.TRPO(...).learn(total_timesteps)`` timed (``DummyVecEnv`` + ``VecNormalize``).

Construction is not timed. Runs alternate (ours, peer, ours, peer, ...) in one process so machine
load hits both alike; the table gives the median frames/s per side and the ratio.

    python benchmarks/throughput.py                    # 20 480 frames (10 iterations) x 2 runs each
    python benchmarks/throughput.py --frames 102400 --runs 3
    python benchmarks/throughput.py --quick            # 1 run of 10 240 frames each
    python benchmarks/throughput.py --collector sync   # ours on TorchRL's Collector instead
    python benchmarks/throughput.py --out bench_out/throughput.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Stopwatch, machine, median, our_config, sb3_available, sb3_trpo, write_json  # noqa: E402


def run_ours(config, tmp: Path) -> dict:
    from trpo_torchrl.app.train import Trainer

    trainer = Trainer(config, run_dir=tmp / f"ours_{config.seed}")
    with Stopwatch(trainer.device.type == "cuda") as sw:
        result = trainer.train()
    return {"frames": result.frames, "seconds": sw.seconds, "fps": result.frames / sw.seconds}


def run_peer(config) -> dict:
    model = sb3_trpo(config)
    with Stopwatch() as sw:
        model.learn(total_timesteps=config.total_frames)
    frames = model.num_timesteps
    model.env.close()
    return {"frames": frames, "seconds": sw.seconds, "fps": frames / sw.seconds}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--frames", type=int, default=20_480, help="frames per run (a multiple of the batch)")
    ap.add_argument("--runs", type=int, default=2, help="runs per side, alternating")
    ap.add_argument("--quick", action="store_true", help="1 run of 10 240 frames per side")
    ap.add_argument("--tiny", action="store_true", help="2 iterations of 2 x 64 steps: smoke test only")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument(
        "--collector",
        choices=("direct", "sync"),
        default="direct",
        help="our collector: the app's own loop (default) or TorchRL's Collector",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for both sides (default 1: small networks, shared cores)",
    )
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    frames, runs = (10_240, 1) if args.quick else (args.frames, args.runs)
    overrides = {"total_frames": frames, "collector": args.collector}
    if args.tiny:
        runs = 1
        overrides.update(total_frames=256, steps_per_env=64, critic_epochs=2)
    with_peer = sb3_available() and not args.no_peer
    if not with_peer and not args.no_peer:
        print("sb3_contrib is not importable: timing ours only (pip install '.[bench]' for the peer)")

    ours_rows, peer_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(runs):
            config = our_config(args.env, seed=r, **overrides)
            ours_rows.append(run_ours(config, Path(tmp)))
            print(f"run {r}: ours {ours_rows[-1]['fps']:.0f} frames/s", end="", flush=True)
            if with_peer:
                peer_rows.append(run_peer(config))
                print(f", sb3-contrib {peer_rows[-1]['fps']:.0f} frames/s", end="")
            print()

    result = {
        "benchmark": "throughput",
        "machine": machine(),
        "env": args.env,
        "config": config.to_dict(),
        "frames_per_run": config.total_frames,
        "ours": ours_rows,
        "ours_fps": median([r["fps"] for r in ours_rows]),
    }
    print(
        f"\nend-to-end frames/s, {args.env}, {config.total_frames} frames per run, "
        f"{config.num_envs} envs x {config.steps_per_env} steps per batch, median of {runs}"
    )
    print(f"{'':12} {'frames/s':>9} {'s/run':>7}")
    print(f"{'ours':12} {result['ours_fps']:>9.0f} {median([r['seconds'] for r in ours_rows]):>7.1f}")
    if peer_rows:
        result["peer"] = peer_rows
        result["peer_fps"] = median([r["fps"] for r in peer_rows])
        result["speedup"] = result["ours_fps"] / result["peer_fps"]
        print(f"{'sb3-contrib':12} {result['peer_fps']:>9.0f} {median([r['seconds'] for r in peer_rows]):>7.1f}")
        print(f"speedup (ours / sb3-contrib): {result['speedup']:.2f}x")
    print(result["machine"])
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
