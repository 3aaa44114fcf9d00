"""Atari with the Nature-CNN policy: how many frames per second does training reach, ours against
sb3-contrib's TRPO with ``CnnPolicy`` on the same frames, and what learning curve does a budget give?

Both sides play the same game the same way: ``gym.make(id, frameskip=1)`` with v5's sticky actions
(0.25 per emulator frame: ours drawn in a Gymnasium wrapper, sb3's by the emulator), up to 30 no-op resets, frame skip 4 with max-pooling, 84×84 grayscale, 4 stacked frames,
life-loss episodes and sign-clipped rewards for training, the same number of environments and
steps per batch and the same TRPO settings (the app's ``atari`` preset, rl-zoo3's PPO Atari
numbers). Ours: the training app's ``Trainer`` (app/atari.py's wrappers, ``--policy cnn``). Peer:
``sb3_contrib.TRPO("CnnPolicy")`` on ``make_atari_env(id, env_kwargs={"frameskip": 1})`` +
``VecFrameStack(4)`` (Stable-Baselines3's AtariWrapper: the same preprocessing, FIRE pressed at the
start of each life in games that wait for it as ours does; its frame stack starts from zeros, ours
from the first frame).
A frame is one agent step (4 emulator frames) on both sides.

fps (default): runs alternate (ours, peer, ...) in one process, construction not timed; the table
gives the median frames/s per side. curve: one training run of ``--frames`` with an evaluation
every ``--eval-every`` iterations; prints train_return (whole games' raw scores) per iteration and
writes the run directory (progress.csv) under ``--logdir``.

    python benchmarks/atari.py                                  # Pong, 20 480 frames x 1 run per side
    python benchmarks/atari.py --env ALE/Breakout-v5 --frames 51200 --runs 2
    python benchmarks/atari.py --no-ours                        # the sb3-contrib side alone
    python benchmarks/atari.py --curve --frames 1000000 --logdir runs/atari
    python benchmarks/atari.py --tiny                           # smoke test: 2 iterations of 2 x 64 steps
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Stopwatch, machine, median, our_config, sb3_available, sb3_trpo_kwargs, write_json  # noqa: E402


def atari_config(env: str, **overrides):
    """Our config for ``env`` (the ``atari`` preset) with the CNN policy where the app has the option."""
    from trpo_torchrl.app.config import FIELDS

    if "policy" in FIELDS:
        overrides.setdefault("policy", "cnn")
    return our_config(env, **overrides)


def sb3_atari_trpo(config, *, verbose: int = 0):
    """sb3-contrib's TRPO with ``CnnPolicy`` and our ``config``'s settings, on rl-zoo3's Atari env."""
    import ale_py
    import gymnasium as gym
    from sb3_contrib import TRPO
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    env = make_atari_env(config.env, n_envs=config.num_envs, seed=config.seed, env_kwargs={"frameskip": 1})
    env = VecFrameStack(env, n_stack=4)
    return TRPO("CnnPolicy", env, verbose=verbose, **sb3_trpo_kwargs(config))


def run_ours(config, tmp: Path) -> dict:
    from trpo_torchrl.app.train import Trainer

    trainer = Trainer(config, run_dir=tmp / f"ours_{config.seed}")
    with Stopwatch(trainer.device.type == "cuda") as sw:
        result = trainer.train()
    return {"frames": result.frames, "seconds": sw.seconds, "fps": result.frames / sw.seconds}


def run_peer(config) -> dict:
    model = sb3_atari_trpo(config)
    with Stopwatch(config.device.startswith("cuda")) as sw:
        model.learn(total_timesteps=config.total_frames)
    frames = model.num_timesteps
    scores = [info["r"] for info in model.ep_info_buffer]  # Monitor: whole games' raw scores
    model.env.close()
    return {"frames": frames, "seconds": sw.seconds, "fps": frames / sw.seconds, "game_scores": scores}


def fps(args, overrides) -> dict:
    with_peer = not args.no_peer and sb3_available()
    if not with_peer and not args.no_peer:
        print("sb3_contrib is not importable: timing ours only (pip install '.[bench]' for the peer)")
    ours_rows, peer_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            config = atari_config(args.env, seed=r, **overrides)
            line = f"run {r}:"
            if not args.no_ours:
                ours_rows.append(run_ours(config, Path(tmp)))
                line += f" ours {ours_rows[-1]['fps']:.1f} frames/s"
            if with_peer:
                peer_rows.append(run_peer(config))
                line += f", sb3-contrib {peer_rows[-1]['fps']:.1f} frames/s"
            print(line, flush=True)
    result = {
        "benchmark": "atari_fps",
        "machine": machine(),
        "env": args.env,
        "config": config.to_dict(),
        "frames_per_run": config.total_frames,
    }
    print(
        f"\nend-to-end frames/s, {args.env}, {config.total_frames} frames per run, "
        f"{config.num_envs} envs x {config.steps_per_env} steps per batch, median of {args.runs}, device {config.device}"
    )
    print(f"{'':12} {'frames/s':>9} {'s/run':>7}")
    if ours_rows:
        result["ours"], result["ours_fps"] = ours_rows, median([r["fps"] for r in ours_rows])
        print(f"{'ours':12} {result['ours_fps']:>9.1f} {median([r['seconds'] for r in ours_rows]):>7.1f}")
    if peer_rows:
        result["peer"], result["peer_fps"] = peer_rows, median([r["fps"] for r in peer_rows])
        print(f"{'sb3-contrib':12} {result['peer_fps']:>9.1f} {median([r['seconds'] for r in peer_rows]):>7.1f}")
    if ours_rows and peer_rows:
        result["speedup"] = result["ours_fps"] / result["peer_fps"]
        print(f"speedup (ours / sb3-contrib): {result['speedup']:.2f}x")
    return result


def curve(args, overrides) -> dict:
    import csv

    from trpo_torchrl.app.train import Trainer

    overrides.update(
        logger="csv",
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        checkpoint_every=max(1, args.eval_every),
    )
    config = atari_config(args.env, seed=args.seed, logdir=args.logdir, **overrides)
    trainer = Trainer(config)
    with Stopwatch(trainer.device.type == "cuda") as sw:
        outcome = trainer.train()
    with open(trainer.run_dir / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    print(f"\n{args.env}, {outcome.frames} frames in {sw.seconds:.0f} s ({outcome.frames / sw.seconds:.0f} frames/s)")
    print(f"{'frames':>9} {'train_return':>12} {'games':>5} {'eval_return':>11}")
    for row in rows:
        print(
            f"{row['frames']:>9} {float(row['train_return'] or 'nan'):>12.1f} {row['train_episodes']:>5} "
            f"{row.get('eval_return', '') or '':>11}"
        )
    return {
        "benchmark": "atari_curve",
        "machine": machine(),
        "env": args.env,
        "config": config.to_dict(),
        "run_dir": str(trainer.run_dir),
        "seconds": sw.seconds,
        "rows": rows,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="ALE/Pong-v5")
    ap.add_argument("--frames", type=int, default=20_480, help="frames per run (a multiple of the batch)")
    ap.add_argument("--runs", type=int, default=1, help="fps: runs per side, alternating")
    ap.add_argument("--curve", action="store_true", help="one learning run of --frames (ours)")
    ap.add_argument("--eval-every", type=int, default=50, help="curve: iterations between evaluations")
    ap.add_argument("--eval-episodes", type=int, default=5, help="curve: games per evaluation")
    ap.add_argument("--seed", type=int, default=0, help="curve: the run's seed")
    ap.add_argument("--logdir", default="runs/atari", help="curve: where the run directory goes")
    ap.add_argument("--device", default="cpu", help="cpu or cuda, both sides")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="2 iterations of 2 x 64 steps: smoke test only")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"total_frames": args.frames, "device": args.device, "threads": args.threads}
    if args.tiny:
        args.runs = 1
        overrides.update(total_frames=256, num_envs=2, steps_per_env=64, critic_epochs=1, critic_minibatch=64)
    result = curve(args, overrides) if args.curve else fps(args, overrides)
    print(result["machine"])
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
