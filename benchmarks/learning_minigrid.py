"""MiniGrid learning checks: does ``trpo-torchrl train`` reach the target evaluation return within
the frame budget?

    MiniGrid-Empty-5x5-v0     evaluation mean return >= 0.8 within 60 000 frames
    MiniGrid-DoorKey-5x5-v0   solved (evaluation mean return >= 0.8) within 500 000 frames

A MiniGrid return is 1 − 0.9 · steps / max_steps on reaching the goal and 0 otherwise, so 0.8 means
every evaluated episode reached the goal, quickly. Each run uses the task's preset (rl-zoo3's PPO
DoorKey settings: 8 environments × 128 steps, the grid and direction as one normalised flat vector
through an MLP, as the zoo's FlatObsWrapper runs do; app/minigrid.py) and evaluates
deterministically every ``--eval-every``
iterations on ``--eval-episodes`` episodes; the table gives the first frame count at which the
evaluation reached the target and the final evaluation.

    python benchmarks/learning_minigrid.py                          # both tasks, seed 0
    python benchmarks/learning_minigrid.py --task empty --seeds 3
    python benchmarks/learning_minigrid.py --task doorkey --frames 200000   # a cut budget
    python benchmarks/learning_minigrid.py --tiny                   # smoke test: 2 iterations of 2 x 64 steps

(Not named minigrid.py: run from this folder, that name would shadow the minigrid package.)
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Stopwatch, machine, our_config, write_json  # noqa: E402

TASKS = {
    "empty": ("MiniGrid-Empty-5x5-v0", 60_000),
    "doorkey": ("MiniGrid-DoorKey-5x5-v0", 500_000),
}
TARGET = 0.8


def run(env: str, frames: int, seed: int, args, logdir: Path) -> dict:
    from trpo_torchrl.app.train import Trainer

    overrides = dict(
        total_frames=frames,
        seed=seed,
        logger="csv",
        logdir=str(logdir),
        run_name=f"{env}__seed{seed}",
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        threads=args.threads,
    )
    if args.tiny:
        overrides.update(num_envs=2, steps_per_env=64, critic_epochs=1, critic_minibatch=64, eval_every=1)
    config = our_config(env, **overrides)
    trainer = Trainer(config)
    with Stopwatch() as sw:
        outcome = trainer.train()
    with open(trainer.run_dir / "progress.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval_return")]
    evals = [(int(r["frames"]), float(r["eval_return"])) for r in rows]
    reached = next((f for f, ret in evals if ret >= TARGET), None)
    return {
        "env": env,
        "seed": seed,
        "budget": frames,
        "frames": outcome.frames,
        "seconds": sw.seconds,
        "evaluations": evals,
        "final_eval": evals[-1][1] if evals else float("nan"),
        "frames_to_target": reached,
        "passed": reached is not None and reached <= frames,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=(*TASKS, "both"), default="both")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per task")
    ap.add_argument("--eval-every", type=int, default=5, help="iterations between evaluations")
    ap.add_argument("--eval-episodes", type=int, default=20, help="episodes per evaluation")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--frames", type=int, default=None, help="train this many frames instead of the task's budget (a cut run)"
    )
    ap.add_argument("--logdir", default=None, help="keep the run directories here (default: a temporary folder)")
    ap.add_argument("--tiny", action="store_true", help="2 iterations of 2 x 64 steps: smoke test only")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    tasks = list(TASKS) if args.task == "both" else [args.task]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(args.logdir or tmp)
        for task in tasks:
            env, budget = TASKS[task]
            for seed in range(args.seeds):
                frames = args.frames or (256 if args.tiny else budget)
                rows.append(run(env, frames, seed, args, logdir))
                r = rows[-1]
                r["task_budget"], r["cut"] = budget, frames < budget
                print(
                    f"{env} seed {seed}: final eval {r['final_eval']:.3f}, target {TARGET} reached at "
                    f"{r['frames_to_target']} frames (budget {r['budget']}"
                    f"{f', cut from {budget}' if r['cut'] else ''}), {r['seconds']:.0f} s",
                    flush=True,
                )
    print(f"\n{'task':26} {'seed':>4} {'budget':>8} {'to target':>9} {'final eval':>10} {'passed':>6}")
    for r in rows:
        print(
            f"{r['env']:26} {r['seed']:>4} {r['budget']:>8} {str(r['frames_to_target']):>9} "
            f"{r['final_eval']:>10.3f} {str(r['passed']):>6}"
        )
    result = {"benchmark": "minigrid", "machine": machine(), "target": TARGET, "rows": rows}
    print(result["machine"])
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
