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

    python benchmarks/critic_fit.py [--device cpu|cuda|all] [--hidden 64,256] [--out critic_fit.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_ms, pick_devices, write_json  # noqa: E402

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


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--device", default="all", choices=["cpu", "cuda", "all"], help="where to run (all: CPU, and CUDA when present)"
    )
    ap.add_argument("--hidden", type=str, default="64,256", help="comma-separated hidden widths (two hidden layers)")
    ap.add_argument("--states", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--minibatch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--quick", action="store_true", help="hidden 64 only, 5 epochs, few repeats")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if not extension_loaded():
        sys.exit(
            "critic_fit.py compares the compiled kernels: build the extension first (python setup.py build_ext --inplace)"
        )
    torch.set_num_threads(args.threads)
    hidden = [64] if args.quick else [int(h) for h in args.hidden.split(",")]
    epochs, reps = (5, 3) if args.quick else (args.epochs, args.reps)
    print(
        f"critic fit: {OBS}->h->h->1 tanh MLP, {args.states} states, {epochs} epochs of {args.minibatch}; "
        f"ms per fit (median of {reps})"
    )
    print(
        f"{'dev':>4} {'hidden':>6} {'steps':>6} {'ours':>9} {'composite':>11} {'eager':>9} {'comp/ours':>10} "
        f"{'eager/ours':>9} {'loss diff':>9}"
    )
    rows = [
        bench(device, h, args.states, epochs, args.minibatch, reps)
        for device in pick_devices(args.device)
        for h in hidden
    ]
    if args.out:
        write_json(args.out, {"benchmark": "critic_fit", "machine": machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
