"""Is TRPO really heavier than PPO? Our TRPO against TorchRL's own ClipPPOLoss, same collectors,
same networks, same frames, same seeds.

Both runs are built by the training app's Trainer from the task's rl-zoo3 TRPO preset: the same
collector (the app's default) over the same synchronous Gymnasium vector env, the same actor and critic MLPs
(64x64 tanh, orthogonal init), the same observation normaliser and reward scaler, the same FusedGAE
advantages and λ-returns, the same batch (e.g. 2 x 1024 frames on MuJoCo). Only the update differs:

  * TRPO: TrustRegionUpdate (CG on Fisher-vector products, line search) + CriticFit, the preset's
          settings (e.g. max_kl 0.04 / 0.01, CG 25, critic 20 epochs x 128);
  * PPO:  torchrl.objectives.ClipPPOLoss (clip 0.2, critic_coeff 0.5, advantages normalised per
          minibatch, no entropy bonus) with one Adam (lr 3e-4) over actor and critic, 10 epochs of
          minibatches of 64, gradient norm clipped to 0.5 (rl-zoo3's / SB3's PPO defaults).

Measured: wall-clock per iteration (collection + update, median) and frames/s, and the
deterministic evaluation return (10 episodes, as in learning.py) at the same iterations, against
frames and against training seconds (evaluation time excluded). Outputs a table, JSON and
trpo_vs_ppo.png.

    python benchmarks/trpo_vs_ppo.py --out bench_out/trpo_vs_ppo      # short: ~15 min on 2 cores
    python benchmarks/trpo_vs_ppo.py --frames 1000000 --seeds 5 --evals 20 --tasks Hopper-v5 --out ...
    python benchmarks/trpo_vs_ppo.py --tiny                            # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, our_config, write_json  # noqa: E402
from learning import eval_iterations, evaluate, ours_policy  # noqa: E402

TASKS = ["HalfCheetah-v5", "Hopper-v5", "CartPole-v1"]
PPO = {"lr": 3e-4, "epochs": 10, "minibatch": 64, "clip": 0.2, "critic_coeff": 0.5, "max_grad_norm": 0.5}


class PPOUpdate:
    """TorchRL's ClipPPOLoss on the Trainer's networks and batch; replaces the TRPO step + critic fit."""

    def __init__(self, trainer, generator: torch.Generator):
        from torchrl.objectives import ClipPPOLoss

        self.trainer = trainer
        self.loss = ClipPPOLoss(
            trainer.actor,
            trainer.critic,
            clip_epsilon=PPO["clip"],
            entropy_bonus=False,
            critic_coeff=PPO["critic_coeff"],
            normalize_advantage=True,
        )
        self.params = [p for p in self.loss.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=PPO["lr"])
        self.generator = generator

    def __call__(self, batch) -> None:
        t = self.trainer
        if t.reward_scaler is not None:
            batch["next", "reward"] = t.reward_scaler(batch["next", "reward"], batch["next", "done"])
        with torch.no_grad():
            t.loss.value_estimator(batch)  # the same FusedGAE advantages and targets as TRPO
        data = batch.reshape(-1)
        n = data.numel()
        for _ in range(PPO["epochs"]):
            perm = torch.randperm(n, generator=self.generator)
            for start in range(0, n, PPO["minibatch"]):
                out = self.loss(data[perm[start : start + PPO["minibatch"]]])
                loss = out["loss_objective"] + out["loss_critic"]
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, PPO["max_grad_norm"])
                self.optimizer.step()
        t.normalizer.update(batch["observation"])
        t.collection.sync_policy()


def run(algo: str, config, eval_at: set[int], run_dir: Path) -> dict:
    from trpo_torchrl.app.train import Trainer

    trainer = Trainer(config, run_dir=run_dir)
    update = PPOUpdate(trainer, torch.Generator().manual_seed(config.seed + 2)) if algo == "ppo" else trainer.step
    act = ours_policy(trainer.actor, discrete=config.env == "CartPole-v1")
    curve, iteration_s, train_s, frames = [], [], 0.0, 0
    for it in range(1, trainer.total_iterations + 1):
        start = time.perf_counter()
        batch = trainer.next_batch()
        update(batch)
        dt = time.perf_counter() - start
        iteration_s.append(dt)
        train_s += dt
        frames += batch.numel()
        if it in eval_at:
            curve.append(
                {
                    "iteration": it,
                    "frames": frames,
                    "train_s": train_s,
                    "return": evaluate(act, config.env, seed=10_000 + config.seed),
                }
            )
    trainer.shutdown()
    return {"curve": curve, "iteration_s": iteration_s, "frames": frames, "train_s": train_s}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.4), squeeze=False)
    for col, task in enumerate(tasks):
        for algo, color in (("trpo", "tab:blue"), ("ppo", "tab:green")):
            runs = results[task][algo]
            returns = np.array([[c["return"] for c in r["curve"]] for r in runs])
            frames = [c["frames"] for c in runs[0]["curve"]]
            seconds = np.array([[c["train_s"] for c in r["curve"]] for r in runs]).mean(0)
            for row, x in ((0, frames), (1, seconds)):
                ax = axes[row][col]
                ax.plot(x, returns.mean(0), color=color, marker="o", label=f"{algo.upper()} (n={len(runs)})")
                ax.fill_between(x, returns.min(0), returns.max(0), color=color, alpha=0.2)
        axes[0][col].set_title(task)
        axes[0][col].set_xlabel("frames")
        axes[1][col].set_xlabel("training seconds (mean over seeds)")
        for row in (0, 1):
            axes[row][col].set_ylabel("eval return")
            axes[row][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--frames", type=int, default=20_480, help="frames per MuJoCo run (CartPole: 1.5x this)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--evals", type=int, default=3, help="evaluation points per run")
    ap.add_argument("--tiny", action="store_true", help="smoke test: CartPole, 2 iterations of 2 x 64, 1 seed")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", default=None, help="folder for trpo_vs_ppo.json and trpo_vs_ppo.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = ["CartPole-v1"] if args.tiny else args.tasks
    seeds = 1 if args.tiny else args.seeds

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            frames = int(args.frames * 1.5) if task == "CartPole-v1" else args.frames
            overrides = {"total_frames": frames}
            if args.tiny:
                overrides.update(total_frames=256, steps_per_env=64, critic_epochs=2)
            results[task] = {"trpo": [], "ppo": []}
            for seed in range(seeds):
                config = our_config(task, seed=seed, **overrides)
                total_iterations = -(-config.total_frames // config.frames_per_batch)
                eval_at = eval_iterations(total_iterations, 1 if args.tiny else args.evals)
                for algo in ("trpo", "ppo"):  # alternate: machine load hits both alike
                    r = run(algo, config, eval_at, Path(tmp) / f"{task}_{algo}_{seed}")
                    results[task][algo].append(r)
                    print(
                        f"{task} seed {seed} {algo}: return {r['curve'][-1]['return']:.1f}, "
                        f"{statistics.median(r['iteration_s']) * 1e3:.0f} ms/iteration",
                        flush=True,
                    )

    table = []
    print(f"\n{'task':16} {'algo':5} {'ms/iter':>8} {'frames/s':>9} {'final return':>13} {'train s':>8}")
    for task in tasks:
        for algo in ("trpo", "ppo"):
            runs = results[task][algo]
            row = {
                "task": task,
                "algo": algo,
                "iteration_ms": 1e3 * statistics.median([s for r in runs for s in r["iteration_s"]]),
                "fps": statistics.median([r["frames"] / r["train_s"] for r in runs]),
                "final_return_mean": float(np.mean([r["curve"][-1]["return"] for r in runs])),
                "frames": runs[0]["frames"],
                "train_s": float(np.mean([r["train_s"] for r in runs])),
            }
            table.append(row)
            print(
                f"{task:16} {algo:5} {row['iteration_ms']:>8.0f} {row['fps']:>9.0f} "
                f"{row['final_return_mean']:>13.1f} {row['train_s']:>8.1f}"
            )
    result = {
        "benchmark": "trpo_vs_ppo",
        "machine": machine(),
        "ppo": PPO,
        "seeds": seeds,
        "table": table,
        "runs": results,
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "trpo_vs_ppo.json", result)
        plot(results, out / "trpo_vs_ppo.png")
    return result


if __name__ == "__main__":
    main()
