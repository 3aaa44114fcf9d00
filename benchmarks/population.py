"""What does one batched update of M policies cost, against M single-policy updates one after another?

Each member is a tanh-MLP diagonal-Gaussian policy with HalfCheetah's sizes (17 observations,
6 actions, 64x64 hidden) and its own batch of `--states` states. For M in {1, 4, 16, 64}:
  * batched:    one PopulationTrustRegionUpdate call on the [M, states] batch (stacked parameters,
                one CG call with B = M, one [K, M] line search);
  * sequential: M TrustRegionUpdate calls, one per member, on the same data.
Both include building the policy batch from the TensorDict and writing the parameters back; the
parameters are restored after every call so every repeat sees the same data and the same θ_old.
Columns: ms per update of the whole population, batched(M) / batched(1) (the issue's target: at
most 6x at M = 16 on CPU, at most 2x at M = 64 on CUDA), and sequential / batched.

With --app-seeds N it also times whole training runs: `trpo-torchrl train --seeds N` (one process,
batched actor steps) against N single runs one after another, same configuration, on CPU.

Warm-up calls are excluded; CUDA timings synchronise before reading the clock.
Usage: python benchmarks/population.py [--quick] [--device cpu|cuda|all] [--states N] [--app-seeds N] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_ms, pick_devices, write_json  # noqa: E402

from trpo_torchrl import PopulationTrustRegionUpdate, TRPOLoss, TrustRegionUpdate, gaussian_actor

OBS, ACT, HIDDEN = 17, 6, 64


def make_actor(seed: int, device):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(OBS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, ACT))
    return gaussian_actor(net, ACT).to(device)


def make_critic(device):
    from tensordict.nn import TensorDictModule

    return TensorDictModule(nn.Linear(OBS, 1), in_keys=["observation"], out_keys=["state_value"]).to(device)


def member_batch(actor, states: int, seed: int, device) -> TensorDict:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(states, OBS, generator=gen).to(device)
    with torch.no_grad():
        td = actor(TensorDict({"observation": obs}, [states], device=device))
    # an advantage a step can improve on: actions aligned with the first observation feature
    td["advantage"] = td["action"].sum(-1, keepdim=True) * obs[:, :1]
    return td


def bench(device, members_list, states, reps, options):
    rows = []
    base = None
    for members in members_list:
        actors = [make_actor(m, device) for m in range(members)]
        batches = [member_batch(a, states, 100 + m, device) for m, a in enumerate(actors)]
        stacked = torch.stack(batches)
        params = TensorDict.from_modules(*actors, as_module=True)
        population = PopulationTrustRegionUpdate(
            TRPOLoss(make_actor(0, device), make_critic(device)), params, **options
        )
        singles = [TrustRegionUpdate(TRPOLoss(a, make_critic(device)), **options) for a in actors]
        theta_pop = population.flat_parameters()
        theta_singles = [u.flat_parameters() for u in singles]

        def batched():
            population(stacked)
            population.write_parameters(theta_pop)

        def sequential():
            for update, batch, theta in zip(singles, batches, theta_singles):
                update(batch)
                update.write_parameters(theta)

        t_batched = median_ms(batched, device, reps)
        t_seq = median_ms(sequential, device, max(1, reps // 2))
        accepted = population(stacked)["step_accepted"].float().mean().item()
        population.write_parameters(theta_pop)
        if base is None:
            base = t_batched
        row = dict(
            device=device.type,
            members=members,
            states=states,
            batched_ms=t_batched,
            sequential_ms=t_seq,
            batched_over_one=t_batched / base,
            sequential_over_batched=t_seq / t_batched,
            accepted_fraction=accepted,
        )
        rows.append(row)
        print(
            f"{device.type:>4} {members:>4} {states:>6} {t_batched:>11.1f} {t_seq:>13.1f} "
            f"{row['batched_over_one']:>9.2f}x {row['sequential_over_batched']:>9.2f}x {accepted:>6.2f}",
            flush=True,
        )
    return rows


def bench_app(env: str, seeds: int, frames: int, logdir: Path):
    """Wall clock of ``train --seeds M`` against M single runs one after another (same config)."""
    from trpo_torchrl.app.config import build_config
    from trpo_torchrl.app.population import PopulationTrainer
    from trpo_torchrl.app.train import Trainer

    base = dict(
        env=env,
        total_frames=frames,
        num_envs=4,
        steps_per_env=256,
        eval_episodes=0,
        progress=False,
        logger="none",
        checkpoint_every=0,
        logdir=str(logdir),
    )
    t0 = time.perf_counter()
    PopulationTrainer(build_config(dict(base, seeds=seeds, run_name="population"))).train()
    t_population = time.perf_counter() - t0
    t0 = time.perf_counter()
    for seed in range(seeds):
        Trainer(build_config(dict(base, seed=seed, run_name=f"single{seed}"))).train()
    t_sequential = time.perf_counter() - t0
    row = dict(
        env=env,
        seeds=seeds,
        frames_per_seed=frames,
        population_s=t_population,
        sequential_s=t_sequential,
        sequential_over_population=t_sequential / t_population,
    )
    print(
        f"{env:>14} {seeds:>5} {frames:>8} {t_population:>12.1f} {t_sequential:>13.1f} {t_sequential / t_population:>9.2f}x"
    )
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="M in {1, 4, 16}, 256 states per member, few repeats")
    ap.add_argument(
        "--device", default="all", choices=["cpu", "cuda", "all"], help="where to run (all: CPU, and CUDA when present)"
    )
    ap.add_argument("--states", type=int, default=None, help="states per member (default 2048; 256 with --quick)")
    ap.add_argument("--members", type=str, default=None, help="comma-separated population sizes (default 1,4,16,64)")
    ap.add_argument(
        "--fvp", default="gauss_newton", choices=["gauss_newton", "kl_hessian"], help="Fisher-vector product"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument(
        "--app-seeds",
        type=int,
        default=0,
        help="also time `train --seeds N` against N single runs one after another (0: skip)",
    )
    ap.add_argument("--app-env", default="CartPole-v1", help="environment of the --app-seeds comparison")
    ap.add_argument("--app-frames", type=int, default=8192, help="frames per seed of the --app-seeds comparison")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = pick_devices(args.device)
    states = args.states or (256 if args.quick else 2048)
    members = (
        [int(m) for m in args.members.split(",")] if args.members else ([1, 4, 16] if args.quick else [1, 4, 16, 64])
    )
    reps = 3 if args.quick else 10
    options = dict(max_kl=0.01, damping=0.1, cg_iters=10, backtrack_iters=10, fvp=args.fvp)

    info = machine()
    print("machine:", json.dumps(info))
    print(f"\nactor step of M members, {states} states each, {options}; ms per update of the whole population")
    print(
        f"{'dev':>4} {'M':>4} {'states':>6} {'batched':>11} {'sequential':>13} {'vs M=1':>10} {'seq/bat':>10} {'acc.':>6}"
    )
    results = dict(machine=info, options=options, rows=[])
    for dev in devices:
        results["rows"] += bench(dev, members, states, reps, options)
    if args.app_seeds:
        import tempfile

        print("\nwhole training runs on CPU, wall clock in s")
        print(f"{'env':>14} {'seeds':>5} {'frames':>8} {'--seeds N':>12} {'N runs':>13} {'ratio':>10}")
        with tempfile.TemporaryDirectory() as logdir:
            results["app"] = bench_app(args.app_env, args.app_seeds, args.app_frames, Path(logdir))
    write_json(args.out, results)


if __name__ == "__main__":
    main()
