"""How much faster is our batched, sync-free conjugate gradient than the usual PyTorch CG loop,
and how much cheaper is the Gauss-Newton Fisher-vector product than the KL double backward?

Part 1 (CG): B systems of size n with the tridiagonal SPD operator
A v = d * v + 0.25 * (v shifted left + v shifted right), d in [1, 10] (diagonally dominant). It
is cheap, allocates one tensor, and costs the same per row batched or not, so the time measured
is the solver's own. Columns:
  * sync-loop:   the peers' loop (sb3-contrib's shape), one system at a time, a host read of
                 r.r every iteration to decide `break`; B systems = B solves.
  * ours:        trpo_torchrl.ops.conjugate_gradient on the whole [B, n] batch (compiled op).
  * ours-ref:    the same solver on the pure-PyTorch reference step.
All run max_iter = 10 iterations (residual_tol is small enough that none stops early).

Part 2 (FVP): one product (F + 0.1 I) v for tanh MLP diagonal-Gaussian policies on 2048 states
(17 observations, 6 actions, HalfCheetah's sizes), (a) KL double backward vs (b) J^T M J
(default: J v through the transpose of the recorded pullback), with (b)'s one-off setup per theta,
and (b) with use_linearize=True (J v from a traced jvp: products about as cheap, costly setup); (c) the same J^T M J product by the plain-MLP
plan TrustRegionUpdate uses for such policies (trpo_torchrl.backends.mlp: explicit matrix products
over the activations of one forward pass), with its setup (that forward pass).

Part 3 (``--cnn STATES``, alone): the same product for the app's Nature-CNN categorical policy on
STATES Atari frames, J v by the transpose trick against linearize (what the update takes for a
policy with convolutions), per product, per set-up and per step (set-up + 16 products).

Warm-up calls are excluded; CUDA timings synchronise before reading the clock.
Usage: python benchmarks/cg.py [--quick] [--device cpu|cuda|all] [--cnn 1024] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_ms, pick_devices, write_json  # noqa: E402

from trpo_torchrl import gaussian_actor
from trpo_torchrl.backends.mlp import MLPPolicyPlan
from trpo_torchrl.fisher import gauss_newton_fisher_vector_product, kl_fisher_vector_product
from trpo_torchrl.ops import conjugate_gradient


def sync_loop_cg(matvec, b, max_iter=10, residual_tol=1e-10):
    """CG the way the peers write it: one [n] system, Python control flow on tensor values."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rdotr = torch.dot(r, r)
    for _ in range(max_iter):
        Ap = matvec(p)
        alpha = rdotr / torch.dot(p, Ap)
        x += alpha * p
        r -= alpha * Ap
        new_rdotr = torch.dot(r, r)
        if new_rdotr.item() < residual_tol:  # the host waits for the device here, every iteration
            break
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    return x


def bench_cg(device, sizes, batches, max_iter, reps):
    rows = []
    for n in sizes:
        gen = torch.Generator(device="cpu").manual_seed(0)
        d = (1 + 9 * torch.rand(n, generator=gen)).to(device)

        def matvec(v):  # [.., n] -> [.., n], rows independent
            # in-place slice updates: torch.roll's temporaries made the operator (not the
            # solver) the bulk of the time for batched inputs on CPU
            out = d * v
            out[..., 1:].add_(v[..., :-1], alpha=0.25)
            out[..., :-1].add_(v[..., 1:], alpha=0.25)
            return out

        for B in batches:
            b = torch.randn(B, n, generator=gen).to(device)

            def run_sync():
                for i in range(B):
                    sync_loop_cg(matvec, b[i], max_iter, 1e-30)

            def run_ours():
                conjugate_gradient(matvec, b, max_iter=max_iter, residual_tol=1e-30)

            def run_ref():
                saved = os.environ.get("TRPO_TORCHRL_FORCE_REFERENCE")
                os.environ["TRPO_TORCHRL_FORCE_REFERENCE"] = "1"
                try:
                    conjugate_gradient(matvec, b, max_iter=max_iter, residual_tol=1e-30)
                finally:
                    if saved is None:
                        del os.environ["TRPO_TORCHRL_FORCE_REFERENCE"]
                    else:
                        os.environ["TRPO_TORCHRL_FORCE_REFERENCE"] = saved

            r = max(2, reps if n * B <= 1_000_000 else reps // 3)
            t_sync = median_ms(run_sync, device, r)
            t_ours = median_ms(run_ours, device, r)
            t_ref = median_ms(run_ref, device, r)
            rows.append(
                dict(
                    device=device.type,
                    n=n,
                    B=B,
                    sync_loop_ms=t_sync,
                    ours_ms=t_ours,
                    ours_ref_ms=t_ref,
                    speedup=t_sync / t_ours,
                )
            )
            print(
                f"{device.type:>4} {n:>9} {B:>4} {t_sync:>11.3f} {t_ours:>9.3f} {t_ref:>9.3f} {t_sync / t_ours:>8.2f}x",
                flush=True,
            )
    return rows


def make_policy(hidden, device, n_states=2048, obs_dim=17, act_dim=6):
    """A tanh MLP Gaussian policy (state-independent log-std) as functions of a flat theta."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(obs_dim, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, act_dim),
    ).to(device)
    names = [k for k, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat(
        [torch.nn.utils.parameters_to_vector(net.parameters()).detach(), torch.full((act_dim,), -0.5, device=device)]
    )
    obs = torch.randn(n_states, obs_dim, device=device)

    def dist_fn(th):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = th[i : i + shape.numel()].view(shape)
            i += shape.numel()
        loc = functional_call(net, params, (obs,))
        return loc, th[i:].exp().expand_as(loc)

    loc0, scale0 = (t.detach() for t in dist_fn(theta))
    # the same policy as a TorchRL actor (θ laid out the same way: the net's parameters, then the log-std)
    actor = gaussian_actor(net, act_dim, init_log_std=-0.5)
    named = [(name, p) for name, p in actor.named_parameters() if p.requires_grad]
    plan = MLPPolicyPlan.build(actor, [name for name, _ in named], [p.numel() for _, p in named])

    def kl_fn(th):
        loc, scale = dist_fn(th)
        kl = torch.log(scale / scale0) + (scale0**2 + (loc0 - loc) ** 2) / (2 * scale**2) - 0.5
        return kl.sum(-1).mean()

    return theta, dist_fn, kl_fn, (plan, obs)


def bench_fvp(device, hiddens, reps):
    rows = []
    for hidden in hiddens:
        theta, dist_fn, kl_fn, (plan, obs) = make_policy(hidden, device)
        v = torch.randn_like(theta)
        fvp_a = kl_fisher_vector_product(kl_fn, theta, damping=0.1)
        t_setup_j = median_ms(
            lambda: gauss_newton_fisher_vector_product(dist_fn, theta, "normal", damping=0.1),
            device,
            max(2, reps // 4),
            warmup=1,
        )
        t_setup_l = median_ms(
            lambda: gauss_newton_fisher_vector_product(dist_fn, theta, "normal", damping=0.1, use_linearize=True),
            device,
            max(2, reps // 8),
            warmup=1,
        )
        fvp_b = gauss_newton_fisher_vector_product(dist_fn, theta, "normal", damping=0.1)
        fvp_l = gauss_newton_fisher_vector_product(dist_fn, theta, "normal", damping=0.1, use_linearize=True)
        # agreement of the undamped products (damping would hide a difference in F v)
        fa = kl_fisher_vector_product(kl_fn, theta)(v)
        fb = gauss_newton_fisher_vector_product(dist_fn, theta, "normal")(v)
        err = ((fa - fb).norm() / fa.norm()).item()
        fvp_c = plan.linearize(obs, theta).fisher_vector_product(kl_scale=1.0, damping=0.1)
        err_c = ((fvp_c(v) - fvp_b(v)).norm() / fvp_b(v).norm()).item()
        t_a = median_ms(lambda: fvp_a(v), device, reps)
        t_b = median_ms(lambda: fvp_b(v), device, reps)
        t_l = median_ms(lambda: fvp_l(v), device, reps)
        t_c = median_ms(lambda: fvp_c(v), device, reps)
        t_setup_c = median_ms(lambda: plan.linearize(obs, theta), device, max(2, reps // 4), warmup=1)
        rows.append(
            dict(
                device=device.type,
                policy=f"{hidden}x{hidden}",
                params=theta.numel(),
                states=2048,
                kl_double_backward_ms=t_a,
                gauss_newton_ms=t_b,
                gauss_newton_setup_ms=t_setup_j,
                gauss_newton_linearize_ms=t_l,
                gauss_newton_linearize_setup_ms=t_setup_l,
                mlp_plan_ms=t_c,
                mlp_plan_setup_ms=t_setup_c,
                speedup=t_a / t_b,
                plan_speedup=t_b / t_c,
                rel_diff=err,
                plan_rel_diff=err_c,
            )
        )
        print(
            f"{device.type:>4} {hidden:>4}x{hidden:<4} {theta.numel():>7} {t_a:>10.3f} {t_b:>10.3f} {t_setup_j:>9.3f} "
            f"{t_l:>9.3f} {t_setup_l:>9.1f} {t_c:>9.3f} {t_setup_c:>9.3f} {t_a / t_b:>7.2f}x {t_b / t_c:>7.2f}x  "
            f"{err:.1e} {err_c:.1e}",
            flush=True,
        )
    return rows


def bench_cnn_fvp(device, states: int, reps: int, products: int = 16) -> dict:
    """The Gauss-Newton product of the app's Nature-CNN categorical policy (6 actions, ``uint8
    4×84×84`` frames): J v by the transpose of the recorded pullback against ``linearize``, each
    product and its set-up, and one step's ``products`` products with their set-up."""
    from torch import nn
    from torch.func import functional_call

    from trpo_torchrl.app.models import ImageCNN, mlp

    torch.manual_seed(0)
    net = nn.Sequential(ImageCNN((4, 84, 84)), mlp(512, 6, (), "tanh", 0.01)).to(device)
    frames = torch.randint(0, 256, (states, 4, 84, 84), dtype=torch.uint8, device=device)
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def dist_fn(flat):
        named = dict(zip(names, (t.view(shape) for t, shape in zip(flat.split([s.numel() for s in shapes]), shapes))))
        return functional_call(net, named, (frames,))

    v = torch.randn_like(theta)
    row = dict(device=device.type, policy="nature-cnn", params=theta.numel(), states=states)
    products_out = {}
    for form, linear in (("transpose", False), ("linearize", True)):
        setup = median_ms(
            lambda: gauss_newton_fisher_vector_product(dist_fn, theta, "categorical", use_linearize=linear),
            device,
            max(2, reps // 2),
        )
        fvp = gauss_newton_fisher_vector_product(dist_fn, theta, "categorical", use_linearize=linear)
        products_out[form] = fvp(v)
        each = median_ms(lambda: fvp(v), device, reps)
        row[f"{form}_ms"], row[f"{form}_setup_ms"] = each, setup
        row[f"{form}_step_ms"] = setup + products * each
    a, b = products_out["transpose"], products_out["linearize"]
    row["rel_diff"] = ((a - b).norm() / a.norm()).item()
    row["step_speedup"] = row["transpose_step_ms"] / row["linearize_step_ms"]
    print(
        f"{device.type:>4} nature-cnn {states:>6} {row['params']:>8} {row['transpose_ms']:>10.0f} "
        f"{row['transpose_setup_ms']:>10.0f} {row['linearize_ms']:>10.0f} {row['linearize_setup_ms']:>10.0f} "
        f"{row['step_speedup']:>8.2f}x  {row['rel_diff']:.1e}",
        flush=True,
    )
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CG on n in {5k, 70k} and B in {1, 8} only; fewer repeats")
    ap.add_argument(
        "--device", default="all", choices=["cpu", "cuda", "all"], help="where to run (all: CPU, and CUDA when present)"
    )
    ap.add_argument("--max-iter", type=int, default=10, help="CG iterations per solve")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument(
        "--cnn",
        type=int,
        default=0,
        metavar="STATES",
        help="only the Nature-CNN policy's product forms on this many frames (1024: the atari preset's batch)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cnn:
        info = machine()
        print("machine:", json.dumps(info))
        print(f"\nGauss-Newton product of the Nature-CNN policy, {args.cnn} frames; ms; a step = set-up + 16 products")
        print(
            f"{'dev':>4} {'policy':>10} {'states':>6} {'params':>8} {'transpose':>10} {'setup':>10} "
            f"{'linearize':>10} {'setup':>10} {'step t/l':>9}  rel.diff"
        )
        rows = [bench_cnn_fvp(dev, args.cnn, 3 if args.quick else 5) for dev in pick_devices(args.device)]
        write_json(args.out, dict(machine=info, cnn_fvp=rows))
        return

    devices = pick_devices(args.device)
    sizes = [5_000, 70_000] if args.quick else [5_000, 70_000, 1_000_000]
    batches = [1, 8] if args.quick else [1, 8, 64]
    hiddens = [64, 256]
    reps = 5 if args.quick else 20

    info = machine()
    print("machine:", json.dumps(info))
    results = dict(machine=info, max_iter=args.max_iter, cg=[], fvp=[])
    print(f"\nCG, {args.max_iter} iterations; times in ms per solve of the whole batch")
    print(f"{'dev':>4} {'n':>9} {'B':>4} {'sync-loop':>11} {'ours':>9} {'ours-ref':>9} {'speedup':>9}")
    for dev in devices:
        results["cg"] += bench_cg(dev, sizes, batches, args.max_iter, reps)
    print("\nFisher-vector product (F + 0.1 I) v, 2048 states; ms per product")
    print(
        f"{'dev':>4} {'policy':>9} {'params':>7} {'(a) KL-2bw':>10} {'(b) JtMJ':>10} {'(b) setup':>9} "
        f"{'(b) lin.':>9} {'lin.setup':>9} {'(c) plan':>9} {'(c) setup':>9} {'a/b':>8} {'b/c':>8}  rel.diff a~b, c~b"
    )
    for dev in devices:
        results["fvp"] += bench_fvp(dev, hiddens, reps * 4)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
