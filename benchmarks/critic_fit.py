"""What does one critic fit cost, kernel by kernel?

The fit of rl-zoo3's MuJoCo preset: a 17→64→64→1 tanh MLP, 2048 states, 20 epochs of minibatches
of 128 (320 Adam steps), float32; by default also the same fit at 256 wide (--hidden 64,256).
Timed on each device, in one run:
  * ours       – trpo_torchrl.ops.mlp_fit_adam: the device's own kernel (CPU: loop-fused C++;
                 CUDA: the whole fit in one thread block, one launch)
  * composite  – the same op's ATen-composed kernel (~40 ATen calls per Adam step), reached by
                 redispatching to CompositeExplicitAutograd
  * eager      – the Python reference (trpo_torchrl.ops.reference.mlp_fit_adam): the eager
                 PyTorch loop the op replaces
Every call starts from the same parameters and Adam state, so all three do the same arithmetic;
the script checks that their final losses agree. CUDA timings synchronise before reading the clock.

With --members M[,M...] it asks instead what M critics cost fitted in one call (the op's member
dimension, as trpo_torchrl.fit_critics runs a population's critics) against M calls one after
another: the app's default critic fit (17→64→64→1 tanh, 2 048 states, the app's critic epochs and
minibatch size), each member its own network, states and order.

    python benchmarks/critic_fit.py [--device cpu|cuda|all] [--hidden 64,256] [--out critic_fit.json]
    python benchmarks/critic_fit.py --device cpu --members 1,4,8 [--out critic_members.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_ms, pick_devices, write_json  # noqa: E402

from trpo_torchrl.app.config import TrainConfig
from trpo_torchrl.ops import extension_loaded, mlp_fit_adam, reference

OBS = 17


def problem(device, hidden: int, states: int, epochs: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(OBS, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    params = [p.detach().to(device) for p in net.parameters()]
    x = torch.randn(states, OBS, generator=g).to(device)
    y = (x[:, :1].sin() * 3).reshape(-1)
    order = torch.stack([torch.randperm(states, generator=g) for _ in range(epochs)]).to(device)
    return params, x, y, order


def bench(device, hidden, states, epochs, minibatch, reps):
    params, x, y, order = problem(device, hidden, states, epochs)
    options = (minibatch, "tanh", 1.0, 1e-3, 0.9, 0.999, 1e-8, 0)
    op = torch.ops.trpo_torchrl.mlp_fit_adam.default
    composite_keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    runners = {
        "ours": lambda s: mlp_fit_adam(*s, x, y, order, minibatch_size=minibatch),
        "composite": lambda s: op.redispatch(composite_keys, *s, x, y, order, *options),
        "eager": lambda s: reference.mlp_fit_adam(*s, x, y, order, *options),
    }

    def fresh():
        return [p.clone() for p in params], [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]

    row = dict(
        device=device.type,
        hidden=hidden,
        states=states,
        epochs=epochs,
        minibatch=minibatch,
        adam_steps=epochs * -(-states // minibatch),
    )
    losses = {}
    start = fresh()
    for name, run in runners.items():
        state = fresh()
        losses[name] = run(fresh()).detach().cpu()

        def call():
            # the same starting point every time: copy the starting state in (no allocation), then fit
            with torch.no_grad():
                torch._foreach_copy_([t for group in state for t in group], [t for group in start for t in group])
            run(state)

        row[f"{name}_ms"] = median_ms(call, device, reps if name != "eager" else max(3, reps // 3))
    for name in ("composite", "eager"):
        row[f"{name}_over_ours"] = row[f"{name}_ms"] / row["ours_ms"]
        row[f"{name}_final_loss_rel_diff"] = float(
            (losses[name][-1] - losses["ours"][-1]).abs() / losses["ours"][-1].abs().clamp_min(1e-12)
        )
    print(
        f"{device.type:>4} {hidden:>6} {row['adam_steps']:>6} {row['ours_ms']:>9.2f} {row['composite_ms']:>11.2f} "
        f"{row['eager_ms']:>9.2f} {row['composite_over_ours']:>9.1f}x {row['eager_over_ours']:>8.1f}x "
        f"{max(row['composite_final_loss_rel_diff'], row['eager_final_loss_rel_diff']):>9.1e}",
        flush=True,
    )
    return row


def interleaved_ms(calls: dict, device, reps: int) -> dict[str, list[float]]:
    """Wall times in ms of each of ``calls``, one of each in turn per repeat, after one warm-up each."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def bench_members(device, hidden, states, epochs, minibatch, members, reps):
    problems = [problem(device, hidden, states, epochs, seed=m) for m in range(members)]
    layers = len(problems[0][0])
    start = [torch.stack([p[0][i] for p in problems]) for i in range(layers)]
    inputs, targets, orders = (torch.stack([p[k] for p in problems]) for k in (1, 2, 3))

    def fresh():
        return [t.clone() for t in start], [torch.zeros_like(t) for t in start], [torch.zeros_like(t) for t in start]

    stacked = fresh()
    # member m's state for the separate calls: views of one stacked copy, so both sides reset alike
    separate = fresh()
    views = [tuple([t[m] for t in group] for group in separate) for m in range(members)]

    def reset(state):
        with torch.no_grad():
            torch._foreach_copy_([t for group in state for t in group], [t for group in fresh() for t in group])

    def batched():
        return mlp_fit_adam(*stacked, inputs, targets, orders, minibatch_size=minibatch)

    def one_by_one():
        return torch.stack(
            [
                mlp_fit_adam(*views[m], inputs[m], targets[m], orders[m], minibatch_size=minibatch)
                for m in range(members)
            ]
        )

    reset(stacked)
    together = batched().detach().cpu()
    reset(separate)
    apart = one_by_one().detach().cpu()
    row = dict(
        device=device.type,
        hidden=hidden,
        members=members,
        states=states,
        epochs=epochs,
        minibatch=minibatch,
        adam_steps=epochs * -(-states // minibatch),
        final_loss_rel_diff=float(((together[:, -1] - apart[:, -1]).abs() / apart[:, -1].abs().clamp_min(1e-12)).max()),
    )

    def timed(state, run):
        def call():
            reset(state)
            run()

        return call

    # the two sides alternate, so that load from other jobs hits both alike
    times = interleaved_ms({"batched": timed(stacked, batched), "separate": timed(separate, one_by_one)}, device, reps)
    row["batched_ms"], row["separate_ms"] = statistics.median(times["batched"]), statistics.median(times["separate"])
    row["separate_over_batched"] = row["separate_ms"] / row["batched_ms"]
    print(
        f"{device.type:>4} {hidden:>6} {members:>7} {row['adam_steps']:>6} {row['batched_ms']:>11.2f} "
        f"{row['separate_ms']:>12.2f} {row['batched_ms'] / members:>14.2f} {row['separate_over_batched']:>9.2f}x "
        f"{row['final_loss_rel_diff']:>9.1e}",
        flush=True,
    )
    return row


def main_members(args, members: list[int]) -> list[dict]:
    config = TrainConfig()
    states = args.states
    epochs = args.epochs if args.epochs is not None else (2 if args.quick else config.critic_epochs)
    minibatch = args.minibatch if args.minibatch is not None else config.critic_minibatch
    hidden = [int(h) for h in args.hidden.split(",")] if args.hidden else list(config.hidden_sizes[:1])
    reps = 3 if args.quick else args.reps
    print(
        f"M critic fits in one call vs M calls: {OBS}->h->h->1 tanh MLPs, {states} states each, {epochs} epochs "
        f"of {minibatch}; ms per M fits (median of {reps}); {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(
        f"{'dev':>4} {'hidden':>6} {'members':>7} {'steps':>6} {'batched':>11} {'separate':>12} "
        f"{'batched/member':>14} {'sep/batch':>10} {'loss diff':>9}"
    )
    return [
        bench_members(device, h, states, epochs, minibatch, m, reps)
        for device in pick_devices(args.device)
        for h in hidden
        for m in members
    ]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--device", default="all", choices=["cpu", "cuda", "all"], help="where to run (all: CPU, and CUDA when present)"
    )
    ap.add_argument(
        "--hidden",
        type=str,
        default=None,
        help="comma-separated hidden widths (two hidden layers; default 64,256, with --members the app's 64)",
    )
    ap.add_argument("--states", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=None, help="default 20 (with --members: the app's critic_epochs)")
    ap.add_argument("--minibatch", type=int, default=None, help="default 128 (with --members: the app's)")
    ap.add_argument(
        "--members",
        type=str,
        default=None,
        help="comma-separated member counts M: time M critic fits in one call against M calls instead",
    )
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--quick", action="store_true", help="hidden 64 only, 5 epochs (2 with --members), few repeats")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if not extension_loaded():
        sys.exit(
            "critic_fit.py compares the compiled kernels: build the extension first (python setup.py build_ext --inplace)"
        )
    torch.set_num_threads(args.threads)
    if args.members:
        rows = main_members(args, [int(m) for m in args.members.split(",")])
        if args.out:
            write_json(args.out, {"benchmark": "critic_fit_members", "machine": machine(), "rows": rows})
        return rows
    minibatch = args.minibatch if args.minibatch is not None else 128
    hidden = [64] if args.quick else [int(h) for h in (args.hidden or "64,256").split(",")]
    epochs, reps = (5, 3) if args.quick else (args.epochs if args.epochs is not None else 20, args.reps)
    print(
        f"critic fit: {OBS}->h->h->1 tanh MLP, {args.states} states, {epochs} epochs of {minibatch}; "
        f"ms per fit (median of {reps})"
    )
    print(
        f"{'dev':>4} {'hidden':>6} {'steps':>6} {'ours':>9} {'composite':>11} {'eager':>9} {'comp/ours':>10} "
        f"{'eager/ours':>9} {'loss diff':>9}"
    )
    rows = [
        bench(device, h, args.states, epochs, minibatch, reps) for device in pick_devices(args.device) for h in hidden
    ]
    if args.out:
        write_json(args.out, {"benchmark": "critic_fit", "machine": machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
