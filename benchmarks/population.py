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

With --end-to-end it times whole `trpo-torchrl train` processes instead (interpreter start, env
construction, collection, updates, checkpoints; no evaluation): for each environment (its preset;
default HalfCheetah-v5 and CartPole-v1) and each M (default 1, 2, 4, 8, 16), `train --seeds M` (its
members in `procs` processes, one per core with two members or more each, every process one
collection loop and one batched actor step for its members), `--seeds M --member-processes 1` (all
in one process), M single runs one after another and M single processes side by side. Columns:
seconds of wall time, each against `--seeds 1` of the same environment (the issue's targets on 2
cores, HalfCheetah at 40,960 frames per member: `--seeds 4` <= 2.0x, `--seeds 8` <= 3.5x), and the
machine's core count.

Warm-up calls are excluded; CUDA timings synchronise before reading the clock.
Usage: python benchmarks/population.py [--quick] [--device cpu|cuda|all] [--states N] [--app-seeds N] [--out results.json]
       python benchmarks/population.py --end-to-end [--e2e-members 1,4] [--e2e-envs HalfCheetah-v5]
              [--e2e-frames 40960] [--e2e-modes population,one_process,sequential,parallel]
              [--env-threads N] [--env-workers N] [--member-processes P]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_ms, pick_devices, write_json  # noqa: E402

from trpo_torchrl import PopulationTrustRegionUpdate, TRPOLoss, TrustRegionUpdate, gaussian_actor

ROOT = Path(__file__).resolve().parent.parent
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


def _train_command(env: str, frames: int, logdir: Path, name: str, *, seed: int = 0, seeds: int = 1, extra=()):
    return [
        sys.executable,
        "-m",
        "trpo_torchrl",
        "train",
        "--env",
        env,
        "--total-frames",
        str(frames),
        "--seed",
        str(seed),
        "--seeds",
        str(seeds),
        "--logdir",
        str(logdir),
        "--run-name",
        name,
        "--eval-episodes",
        "0",
        "--progress",
        "false",
        "--logger",
        "none",
        *extra,
    ]


def _run(commands: list[list[str]]) -> float:
    """Wall time of ``commands`` started together, until the last one ends; a failure is an error."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands
    ]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - t0
    for p, err, c in zip(procs, errors, commands):
        if p.returncode:
            raise SystemExit(f"{' '.join(c)} failed ({p.returncode}):\n{err[-2000:]}")
    return seconds


def bench_end_to_end(envs, members_list, frames, modes, extra, member_processes=None) -> list[dict]:
    """Whole ``trpo-torchrl train`` processes: ``--seeds M`` (its members in the processes it
    chooses, ``procs``), ``--seeds M --member-processes 1`` (all in one process), M single runs in
    a row and M single processes side by side."""
    from trpo_torchrl.app.config import build_config
    from trpo_torchrl.app.member_processes import resolve_member_processes

    rows = []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\nwhole training processes, wall clock in s ({cores} cores; {frames} frames per member)")
    print(
        f"{'env':>16} {'M':>3} {'procs':>5} {'--seeds M':>10} {'vs M=1':>7} {'one process':>12} {'vs M=1':>7} "
        f"{'M in a row':>11} {'vs M=1':>7} {'M side by side':>15} {'vs M=1':>7}"
    )
    flags = {extra[i].lstrip("-").replace("-", "_"): extra[i + 1] for i in range(0, len(extra), 2)}
    for env in envs:
        one = None  # this environment's --seeds 1 (every mode is then the same single run)
        for members in members_list:
            times = {}
            group_extra = (
                [*extra, "--member-processes", str(member_processes)] if member_processes is not None else extra
            )
            procs = resolve_member_processes(
                build_config({**flags, "env": env, "seeds": members, "member_processes": member_processes or 0})
            )
            with tempfile.TemporaryDirectory() as logdir:
                logdir = Path(logdir)
                if "population" in modes or members == 1:
                    command = _train_command(env, frames, logdir, "group", seeds=members, extra=group_extra)
                    times["population"] = _run([command])
                if members > 1 and "one_process" in modes:
                    single = [*extra, "--member-processes", "1"]
                    times["one_process"] = _run(
                        [_train_command(env, frames, logdir, "one", seeds=members, extra=single)]
                    )
                if members > 1 and "sequential" in modes:
                    times["sequential"] = sum(
                        _run([_train_command(env, frames, logdir, f"single{k}", seed=k, extra=extra)])
                        for k in range(members)
                    )
                if members > 1 and "parallel" in modes:
                    times["parallel"] = _run(
                        [_train_command(env, frames, logdir, f"side{k}", seed=k, extra=extra) for k in range(members)]
                    )
            if members == 1:
                one = times["population"]
            row = dict(env=env, members=members, processes=procs, frames_per_member=frames, cores=cores, seconds=times)
            row["over_seeds1"] = {k: v / one for k, v in times.items()} if one else {}
            rows.append(row)

            def cell(k, width):
                if k not in times:
                    return f"{'-':>{width}} {'-':>7}"
                ratio = f"{times[k] / one:>6.2f}x" if one else f"{'-':>7}"
                return f"{times[k]:>{width}.1f} {ratio}"

            print(
                f"{env:>16} {members:>3} {procs:>5} {cell('population', 10)} {cell('one_process', 12)} "
                f"{cell('sequential', 11)} {cell('parallel', 15)}",
                flush=True,
            )
    return rows


def bench_collection(envs, members_list, steps, reps) -> list[dict]:
    """One batch for each of M members (each its own preset-sized environments, app-built actor,
    generator): the members' own DirectCollectors one after another, against one PopulationCollector
    with its sub-environments stepped in turn, on a thread pool of one thread per core, and in worker
    processes (``env_workers`` = cores: every member's AsyncVectorEnv stepped in lockstep). Best of
    ``reps`` (the least disturbed by other load on the machine)."""
    from trpo_torchrl.app.config import build_config
    from trpo_torchrl.app.envs import make_env
    from trpo_torchrl.app.models import build_models
    from trpo_torchrl.collectors import DirectCollector, PopulationCollector, gym_vector_env

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    print(f"\none batch per member, best of {reps}, ms ({cores} cores; {steps} steps per environment)")
    print(
        f"{'env':>16} {'M':>3} {'envs':>5} {'own collectors':>15} {'one loop':>9} {'+ threads':>10} "
        f"{'+ workers':>10} {'threads':>8}"
    )
    for env_id in envs:
        for members in members_list:
            config = build_config({"env": env_id, "logger": "none", "progress": False})

            def member_collectors(env_workers):
                collectors = []
                for m in range(members):
                    env = make_env(env_id, config.num_envs, seed=m)
                    venv = gym_vector_env(env)
                    torch.manual_seed(m)
                    actor, _, normalizer = build_models(config, venv.single_observation_space, venv.single_action_space)
                    normalizer.update(torch.randn(64, venv.single_observation_space.shape[0]))
                    generator = torch.Generator().manual_seed(m)
                    collectors.append(
                        DirectCollector(
                            env,
                            actor,
                            frames_per_batch=config.num_envs * steps,
                            generator=generator,
                            env_workers=env_workers,
                        )
                    )
                return collectors

            collectors, with_workers = member_collectors(0), member_collectors(cores)
            loops = {
                "one loop": PopulationCollector(collectors, env_threads=1),
                "+ threads": PopulationCollector(collectors, env_threads=cores),
                "+ workers": PopulationCollector(with_workers),
            }
            best = {"own collectors": float("inf"), **{k: float("inf") for k in loops}}
            for _ in range(reps):  # interleaved, so a burst of load hits every variant alike
                t0 = time.perf_counter()
                for c in collectors:
                    c.rollout()
                best["own collectors"] = min(best["own collectors"], time.perf_counter() - t0)
                for name, loop in loops.items():
                    t0 = time.perf_counter()
                    loop.rollout()
                    best[name] = min(best[name], time.perf_counter() - t0)
            threads = loops["+ threads"].env_threads
            for loop in loops.values():
                loop.shutdown()
            for c in collectors + with_workers:
                c.shutdown()
            ms = {k: 1000 * v for k, v in best.items()}
            rows.append(
                dict(
                    env=env_id,
                    members=members,
                    num_envs=config.num_envs,
                    steps=steps,
                    ms=ms,
                    threads=threads,
                    env_workers=cores,
                )
            )
            print(
                f"{env_id:>16} {members:>3} {config.num_envs:>5} {ms['own collectors']:>15.1f} {ms['one loop']:>9.1f} "
                f"{ms['+ threads']:>10.1f} {ms['+ workers']:>10.1f} {threads:>8}",
                flush=True,
            )
    return rows


def main(argv=None):
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
    ap.add_argument(
        "--end-to-end",
        action="store_true",
        help="time whole `trpo-torchrl train` processes (--seeds M, M in a row, M side by side) instead",
    )
    ap.add_argument("--e2e-envs", default="HalfCheetah-v5,CartPole-v1", help="environments of --end-to-end")
    ap.add_argument("--e2e-members", default="1,2,4,8,16", help="values of M of --end-to-end")
    ap.add_argument("--e2e-frames", type=int, default=40_960, help="frames per member of --end-to-end")
    ap.add_argument(
        "--e2e-modes",
        default="population,one_process,sequential,parallel",
        help="which of population (--seeds M), one_process (--seeds M --member-processes 1), sequential "
        "(M in a row), parallel (M side by side) to time",
    )
    ap.add_argument("--env-threads", type=int, default=None, help="pass --env-threads N to every run of --end-to-end")
    ap.add_argument("--env-workers", type=int, default=None, help="pass --env-workers N to every run of --end-to-end")
    ap.add_argument(
        "--member-processes", type=int, default=None, help="pass --member-processes P to the --seeds M runs"
    )
    ap.add_argument(
        "--collection",
        action="store_true",
        help="time one batch per member: own DirectCollectors in turn vs one PopulationCollector (in turn, threads, workers)",
    )
    ap.add_argument("--collect-steps", type=int, default=256, help="steps per environment of --collection")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.collection:
        info = machine()
        print("machine:", json.dumps(info))
        rows = bench_collection(
            [e for e in args.e2e_envs.split(",") if e],
            [int(m) for m in args.e2e_members.split(",")],
            args.collect_steps,
            reps=3 if args.quick else 7,
        )
        write_json(args.out, dict(machine=info, collection=rows))
        return rows
    if args.end_to_end:
        info = machine()
        print("machine:", json.dumps(info))
        modes = [m for m in args.e2e_modes.split(",") if m]
        unknown = sorted(set(modes) - {"population", "one_process", "sequential", "parallel"})
        if unknown:
            raise SystemExit(
                f"--e2e-modes: unknown {', '.join(unknown)} (choose from population, one_process, sequential, parallel)"
            )
        extra = ["--env-threads", str(args.env_threads)] if args.env_threads is not None else []
        extra += ["--env-workers", str(args.env_workers)] if args.env_workers is not None else []
        rows = bench_end_to_end(
            [e for e in args.e2e_envs.split(",") if e],
            [int(m) for m in args.e2e_members.split(",")],
            args.e2e_frames,
            modes,
            extra,
            args.member_processes,
        )
        write_json(
            args.out,
            dict(
                machine=info,
                end_to_end=rows,
                env_threads=args.env_threads,
                env_workers=args.env_workers,
                member_processes=args.member_processes,
            ),
        )
        return rows
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
