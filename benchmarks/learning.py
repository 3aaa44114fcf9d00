"""Does our TRPO learn as well as sb3-contrib's, frame for frame, with the same rl-zoo3 preset?

For each task, seed and library: train from scratch with the task's rl-zoo3 TRPO preset (ours:
the training app's Trainer; peer: sb3_contrib.TRPO with the same hyperparameters and rl-zoo3's
VecNormalize), and at the same evaluation frames run the same evaluation on both: the
deterministic policy (the Gaussian's mean, the categorical's mode) on 10 fresh environments of a
synchronous Gymnasium vector env seeded with 10_000 + seed, each environment's first episode,
undiscounted return, observation statistics frozen. Outputs: return-vs-frames curves (PNG, mean
over seeds with the min-max band) and a final table per task and library with the mean, the
interquartile mean (IQM, 25 % trimmed mean) and a 95 % bootstrap confidence interval of the mean
over seeds (10 000 resamples), then per task ours minus sb3-contrib: the difference of the means,
its standard error, a two-sided permutation test (20 000 relabellings) and a bootstrap 95 % CI of
the difference.

Budgets:
  --budget short   what fits in about 30 minutes on a 2-core CPU: HalfCheetah-v5, Hopper-v5,
                   Walker2d-v5 at 30 720 frames (15 iterations of 2 x 1024), CartPole-v1 at
                   40 960 frames (40 iterations of 2 x 512), 3 seeds, 3 evaluation points.
                   Far too short for MuJoCo returns to mean much beyond "both climb alike".
  --budget full    the published protocol: 1M frames on the MuJoCo tasks and 100k on CartPole,
                   10 seeds, 20 evaluation points. One 1M-frame run trains in ~180-235 s (ours)
                   and ~500-535 s (sb3-contrib) on one core of the 2-core VM, evaluation aside:
                   one task's 10 seeds, both libraries, take ~65 min with --jobs 2 there, all
                   three MuJoCo tasks ~3.3 h; so split the sweep by task or by seeds, e.g.
                   python benchmarks/learning.py --budget full --tasks Hopper-v5 --seeds 2 --first-seed 4 --jobs 2 --out bench_out/hop_s4
                   and pool the parts with --merge (--jobs N trains N runs at once in worker
                   processes: one per core)

Published reference figures (TRPO, sb3-contrib with the rl-zoo3 presets; final trained agents, not
curves, and on the v3 MuJoCo tasks, so for orientation only):
  * rl-baselines3-zoo, benchmark.md (DLR-RM/rl-baselines3-zoo, commit 02a1a90): mean +- std of the
    episode return over ~150k evaluation steps: HalfCheetah-v3 1785.5 +- 68.7 (1M frames),
    Hopper-v3 3618.4 +- 356.8 (1M), Walker2d-v3 4933.1 +- 1452.5 (1M), CartPole-v1 500.0 +- 0.0 (100k).
  * the zoo's trained agent on the Hugging Face Hub, sb3/trpo-Hopper-v3 (results.json):
    3673.27 +- 3.75, deterministic, 10 episodes.
  sb3-contrib's own documentation page for TRPO: no results table was found for it.

    python benchmarks/learning.py --budget short --out bench_out/learning
    python benchmarks/learning.py --tiny          # smoke test: CartPole, 2 iterations, 1 seed
    python benchmarks/learning.py --merge bench_out/hc_a bench_out/hc_b --out bench_out/hc
                                  # one table and plot from sweeps split over jobs or machines
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, our_config, sb3_available, sb3_trpo, write_json  # noqa: E402

BUDGETS = {
    "short": {"frames": {"mujoco": 30_720, "CartPole-v1": 40_960}, "seeds": 3, "evals": 3},
    "full": {"frames": {"mujoco": 1_000_000, "CartPole-v1": 100_000}, "seeds": 10, "evals": 20},
    "tiny": {"frames": {"mujoco": 256, "CartPole-v1": 256}, "seeds": 1, "evals": 1},
}
TASKS = ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "CartPole-v1"]
EVAL_EPISODES = 10
REFERENCES = {
    "source": "DLR-RM/rl-baselines3-zoo benchmark.md (commit 02a1a90), trpo rows; v3 MuJoCo tasks",
    "HalfCheetah-v5": {"task": "HalfCheetah-v3", "mean": 1785.476, "std": 68.672, "frames": 1_000_000},
    "Hopper-v5": {"task": "Hopper-v3", "mean": 3618.386, "std": 356.768, "frames": 1_000_000},
    "Walker2d-v5": {"task": "Walker2d-v3", "mean": 4933.148, "std": 1452.538, "frames": 1_000_000},
    "CartPole-v1": {"task": "CartPole-v1", "mean": 500.0, "std": 0.0, "frames": 100_000},
}


# ---------------------------------------------------------------- one evaluation, both libraries
def evaluate(act, env_id: str, seed: int, episodes: int = EVAL_EPISODES) -> float:
    """Mean undiscounted return of the first episode of each of ``episodes`` fresh environments."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    venv = gym.make_vec(
        env_id, num_envs=episodes, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}
    )
    space = venv.single_action_space
    obs, _ = venv.reset(seed=seed)
    total = np.zeros(episodes)
    finished = np.zeros(episodes, dtype=bool)
    while not finished.all():
        action = act(obs)
        if isinstance(space, gym.spaces.Box):
            action = np.clip(action, space.low, space.high)
        obs, reward, terminated, truncated, _ = venv.step(action)
        total += np.where(finished, 0.0, reward)
        finished |= terminated | truncated
    venv.close()
    return float(total.mean())


def ours_policy(actor, discrete: bool):
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    @torch.no_grad()
    def act(obs):
        td = TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32)}, batch_size=[obs.shape[0]])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            action = actor(td)["action"]
        return action.argmax(-1).numpy() if discrete else action.numpy()

    return act


def peer_policy(model):
    from stable_baselines3.common.vec_env import VecNormalize

    env = model.get_env()

    def act(obs):
        if isinstance(env, VecNormalize):
            obs = env.normalize_obs(obs)  # the running statistics, not updated here
        return model.predict(obs, deterministic=True)[0]

    return act


def eval_iterations(total_iterations: int, evals: int) -> set[int]:
    return {max(1, round(total_iterations * (k + 1) / evals)) for k in range(evals)}


# ---------------------------------------------------------------- training with evaluations
def train_ours(config, eval_at: set[int], run_dir: Path, task: str) -> list[dict]:
    from trpo_torchrl.app.train import Trainer

    trainer = Trainer(config, run_dir=run_dir)
    discrete = config.env == "CartPole-v1"
    act = ours_policy(trainer.actor, discrete)
    curve, train_s = [], 0.0
    for it in range(1, trainer.total_iterations + 1):
        start = time.perf_counter()
        batch = trainer.next_batch()
        trainer.step(batch)  # the app's own iteration: what `trpo-torchrl train` runs
        trainer.frames += batch.numel()
        train_s += time.perf_counter() - start
        if it in eval_at:
            curve.append(
                {
                    "iteration": it,
                    "frames": trainer.frames,
                    "train_s": train_s,
                    "return": evaluate(act, task, seed=10_000 + config.seed),
                }
            )
    trainer.shutdown()
    return curve


def train_peer(config, eval_at: set[int], task: str) -> list[dict]:
    from stable_baselines3.common.callbacks import BaseCallback

    model = sb3_trpo(config)
    batch = config.num_envs * config.steps_per_env
    curve: list[dict] = []
    clock = {"train_s": 0.0, "start": None}

    def record():
        it = model.num_timesteps // batch
        if it in eval_at and not any(c["iteration"] == it for c in curve):
            curve.append(
                {
                    "iteration": it,
                    "frames": model.num_timesteps,
                    "train_s": clock["train_s"],
                    "return": evaluate(peer_policy(model), task, seed=10_000 + config.seed),
                }
            )

    class EvalAtIterations(BaseCallback):
        # a rollout starts after the previous iteration's train(): evaluate there, off the clock
        def _on_rollout_start(self):
            if clock["start"] is not None:
                clock["train_s"] += time.perf_counter() - clock["start"]
            record()
            clock["start"] = time.perf_counter()

        def _on_step(self):
            return True

    model.learn(total_timesteps=config.total_frames, callback=EvalAtIterations())
    clock["train_s"] += time.perf_counter() - clock["start"]
    record()
    model.get_env().close()
    return curve


def run_seed(job) -> tuple[list[dict], list[dict] | None]:
    """One seed of one task: ours, then the peer when asked; (our curve, the peer's curve or None)."""
    task, seed, overrides, evals, with_peer, threads, tmp = job
    torch.set_num_threads(threads)
    config = our_config(task, seed=seed, **overrides)
    total_iterations = -(-config.total_frames // config.frames_per_batch)
    eval_at = eval_iterations(total_iterations, evals)
    t0 = time.perf_counter()
    ours = train_ours(config, eval_at, Path(tmp) / f"{task}_{seed}", task)
    msg = f"{task} seed {seed}: ours {ours[-1]['return']:.1f}"
    peer = None
    if with_peer:
        peer = train_peer(config, eval_at, task)
        msg += f", sb3-contrib {peer[-1]['return']:.1f}"
    print(f"{msg}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return ours, peer


def run_seeds(jobs: list, processes: int) -> list:
    """The seeds one after another, or in ``processes`` worker processes (results in seed order)."""
    if processes <= 1:
        return [run_seed(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_seed, jobs))


# ---------------------------------------------------------------- statistics and outputs
def iqm(x: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle half (25 % trimmed each side, whole samples)."""
    x = np.sort(np.asarray(x, dtype=float))
    cut = int(np.floor(0.25 * len(x)))
    return float(x[cut : len(x) - cut].mean())


def bootstrap_ci(x: np.ndarray, reps: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over seeds."""
    x = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(reps, len(x)))].mean(1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def summarize(finals: list[float]) -> dict:
    x = np.asarray(finals, dtype=float)
    lo, hi = bootstrap_ci(x)
    return {"n": len(x), "mean": float(x.mean()), "iqm": iqm(x), "ci95": [lo, hi], "finals": finals}


def compare(ours: list[float], peer: list[float], reps: int = 20_000, seed: int = 0) -> dict:
    """Ours against the peer over seeds: the difference of the means (also as % of the peer's), its
    standard error (unpooled), a two-sided permutation test of "same distribution" (library labels
    shuffled ``reps`` times) and a percentile-bootstrap 95 % CI of the difference."""
    a, b = np.asarray(ours, dtype=float), np.asarray(peer, dtype=float)
    diff = float(a.mean() - b.mean())
    se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))) if min(len(a), len(b)) > 1 else float("nan")
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([a, b])
    shuffled = np.argsort(rng.random((reps, len(pooled))), axis=1)  # one permutation per row
    draws = pooled[shuffled]
    extreme = np.abs(draws[:, : len(a)].mean(1) - draws[:, len(a) :].mean(1)) >= abs(diff) - 1e-9 * max(1.0, abs(diff))
    boot = a[rng.integers(0, len(a), size=(10_000, len(a)))].mean(1) - b[
        rng.integers(0, len(b), size=(10_000, len(b)))
    ].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "difference": diff,
        "percent_of_peer": 100 * diff / abs(b.mean()) if b.mean() else float("nan"),
        "standard_error": se,
        "permutation_p": float(extreme.mean()),
        "ci95_difference": [float(lo), float(hi)],
    }


def comparisons(summary: dict) -> dict:
    return {
        task: compare(libs["ours"]["finals"], libs["sb3-contrib"]["finals"])
        for task, libs in summary.items()
        if "ours" in libs and "sb3-contrib" in libs
    }


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(runs)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for lib, color in (("ours", "tab:blue"), ("sb3-contrib", "tab:orange")):
            curves = runs[task].get(lib)
            if not curves:
                continue
            frames = [c["frames"] for c in curves[0]]
            returns = np.array([[c["return"] for c in curve] for curve in curves])
            ax.plot(frames, returns.mean(0), color=color, marker="o", label=f"{lib} (n={len(curves)})")
            ax.fill_between(frames, returns.min(0), returns.max(0), color=color, alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("frames")
        ax.set_ylabel("eval return (deterministic, 10 ep.)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def print_comparisons(comparison: dict) -> None:
    if not comparison:
        return
    print("\nours - sb3-contrib, final return (two-sided permutation test of equal distributions)")
    print(f"{'task':16} {'difference':>11} {'% of sb3':>9} {'SE':>8} {'p':>6} {'95% CI of the difference':>26}")
    for task, c in comparison.items():
        ci = f"[{c['ci95_difference'][0]:+.1f}, {c['ci95_difference'][1]:+.1f}]"
        print(
            f"{task:16} {c['difference']:>+11.1f} {c['percent_of_peer']:>+8.1f}% {c['standard_error']:>8.1f} "
            f"{c['permutation_p']:>6.2f} {ci:>26}"
        )


def print_table(runs: dict, summary: dict, seeds: dict) -> None:
    print(f"\nfinal deterministic return ({EVAL_EPISODES} episodes)")
    print(
        f"{'task':16} {'library':12} {'seeds':>5} {'frames':>9} {'mean':>9} {'IQM':>9} {'95% CI':>21} {'zoo ref (v3)':>16}"
    )
    for task in runs:
        ref = REFERENCES.get(task)
        for lib, s in summary[task].items():
            frames = runs[task][lib][0][-1]["frames"]
            reftxt = f"{ref['mean']:.0f} @ {ref['frames'] // 1000}k" if ref else "—"
            ci = f"[{s['ci95'][0]:.1f}, {s['ci95'][1]:.1f}]"
            print(
                f"{task:16} {lib:12} {len(seeds[task]):>5} {frames:>9} {s['mean']:>9.1f} {s['iqm']:>9.1f} {ci:>21} {reftxt:>16}"
            )


def seed_list(result: dict, task: str) -> list[int]:
    """The seeds of ``task``'s runs, in run order (files from before ``seed_list`` existed ran
    ``seeds`` consecutive seeds from their config's seed)."""
    if "seed_list" in result:
        return list(result["seed_list"][task])
    first = result["configs"][task]["seed"]
    return list(range(first, first + result["seeds"]))


# config keys that do not change what a run learns
BOOKKEEPING = {"seed", "threads", "logdir", "run_name", "progress", "logger", "checkpoint_every"}


def merge(folders: list[str]) -> dict:
    """One result from several ``learning.json`` (a sweep split over jobs or machines): the runs of
    each task pooled, curves cut to the evaluation frames every run has, statistics recomputed.
    Refuses runs whose configurations differ in anything but the seed, and a seed seen twice."""
    import json

    from trpo_torchrl.app.config import TrainConfig

    defaults = TrainConfig().to_dict()
    sources = []
    for folder in folders:
        path = Path(folder) / "learning.json" if Path(folder).is_dir() else Path(folder)
        if not path.is_file():
            raise SystemExit(f"--merge: {path} does not exist")
        result = json.loads(path.read_text())
        if result.get("benchmark") != "learning":
            raise SystemExit(f"--merge: {path} is not a learning.py result")
        sources.append((path, result))
    runs: dict = {}
    configs: dict = {}
    seeds: dict = {}
    for path, result in sources:
        for task, libs in result["runs"].items():
            # keys a file predates count as their default; the run's bookkeeping may differ
            config = {k: v for k, v in {**defaults, **result["configs"][task]}.items() if k not in BOOKKEEPING}
            if task in configs and config != configs[task][0]:
                diff = sorted(
                    k for k in config.keys() | configs[task][0].keys() if config.get(k) != configs[task][0].get(k)
                )
                raise SystemExit(f"--merge: {task} in {path} differs from {configs[task][1]} in {', '.join(diff)}")
            configs.setdefault(task, (config, path))
            these = seed_list(result, task)
            twice = sorted(set(these) & set(seeds.get(task, [])))
            if twice:
                raise SystemExit(f"--merge: {task} seed(s) {twice} appear in more than one input (again in {path})")
            seeds.setdefault(task, []).extend(these)
            for lib, curves in libs.items():
                if curves and len(curves) != len(these):
                    raise SystemExit(f"--merge: {path} holds {len(curves)} {lib} runs of {task} for {len(these)} seeds")
                runs.setdefault(task, {}).setdefault(lib, []).extend(curves)
    summary = {}
    for task, libs in runs.items():
        common = set.intersection(*({c["frames"] for c in curve} for curves in libs.values() for curve in curves))
        for lib in libs:
            libs[lib] = [[c for c in curve if c["frames"] in common] for curve in libs[lib]]
        summary[task] = {lib: summarize([c[-1]["return"] for c in curves]) for lib, curves in libs.items() if curves}
    return {
        "benchmark": "learning",
        "merged_from": [
            {
                "path": str(p),
                "machine": r.get("machine"),
                "budget": r.get("budget"),
                "seed_list": {t: seed_list(r, t) for t in r["runs"]},
            }
            for p, r in sources
        ],
        "eval_episodes": EVAL_EPISODES,
        "seed_list": seeds,
        "configs": {t: {**c, "seed": seeds[t][0]} for t, (c, _) in configs.items()},  # of the first seed
        "summary": summary,
        "runs": runs,
        "references": REFERENCES,
    }


def write_outputs(result: dict, out: str | None) -> None:
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "learning.json", result)
        plot(result["runs"], out / "learning.png")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=["short", "full"], default="short")
    ap.add_argument("--tiny", action="store_true", help="smoke test: CartPole-v1, 2 iterations of 2 x 64 steps, 1 seed")
    ap.add_argument("--tasks", nargs="+", default=None, help=f"subset of {TASKS}")
    ap.add_argument("--seeds", type=int, default=None, help="override the budget's number of seeds")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run from here (to split a sweep across jobs)")
    ap.add_argument("--frames", type=int, default=None, help="override the budget's frames on the MuJoCo tasks")
    ap.add_argument("--evals", type=int, default=None, help="override the budget's number of evaluation points")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument(
        "--collector", default=None, help="our collector (default: the app's, 'direct'); e.g. 'sync' for TorchRL's"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both libraries (default 1)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="seeds trained at once in worker processes (each with --threads threads; default 1)",
    )
    ap.add_argument("--out", default=None, help="folder for learning.json and learning.png")
    ap.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="FOLDER",
        help="train nothing: pool the runs of these earlier --out folders (or learning.json files)",
    )
    args = ap.parse_args(argv)
    if args.merge:
        result = merge(args.merge)
        result["comparison"] = comparisons(result["summary"])
        print_table(result["runs"], result["summary"], result["seed_list"])
        print_comparisons(result["comparison"])
        write_outputs(result, args.out)
        return result
    torch.set_num_threads(args.threads)
    budget = BUDGETS["tiny" if args.tiny else args.budget]
    tasks = ["CartPole-v1"] if args.tiny else (args.tasks or TASKS)
    seeds = args.seeds or budget["seeds"]
    with_peer = sb3_available() and not args.no_peer
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    if not with_peer and not args.no_peer:
        print("sb3_contrib is not importable: training ours only (pip install '.[bench]' for the peer)")

    runs: dict = {}
    summary: dict = {}
    configs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            frames = budget["frames"]["CartPole-v1" if task == "CartPole-v1" else "mujoco"]
            if args.frames and task != "CartPole-v1":
                frames = args.frames
            overrides = {"total_frames": frames}
            if args.collector:
                overrides["collector"] = args.collector
            if args.tiny:
                overrides.update(steps_per_env=64, critic_epochs=2)
            runs[task] = {"ours": [], "sb3-contrib": []}
            jobs = [
                (task, seed, overrides, args.evals or budget["evals"], with_peer, args.threads, tmp)
                for seed in range(args.first_seed, args.first_seed + seeds)
            ]
            configs[task] = our_config(task, seed=args.first_seed, **overrides).to_dict()
            for ours, peer in run_seeds(jobs, args.jobs):
                runs[task]["ours"].append(ours)
                if peer:
                    runs[task]["sb3-contrib"].append(peer)
            summary[task] = {
                lib: summarize([c[-1]["return"] for c in curves]) for lib, curves in runs[task].items() if curves
            }

    seed_lists = {task: list(range(args.first_seed, args.first_seed + seeds)) for task in tasks}
    result = {
        "benchmark": "learning",
        "machine": machine(),
        "budget": "tiny" if args.tiny else args.budget,
        "seeds": seeds,
        "seed_list": seed_lists,
        "eval_episodes": EVAL_EPISODES,
        "configs": configs,
        "summary": summary,
        "comparison": comparisons(summary),
        "runs": runs,
        "references": REFERENCES,
    }
    print_table(runs, summary, seed_lists)
    print_comparisons(result["comparison"])
    write_outputs(result, args.out)
    return result


if __name__ == "__main__":
    main()
