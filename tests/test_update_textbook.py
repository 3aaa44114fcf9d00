"""TrustRegionUpdate against a from-scratch textbook TRPO step on a MuJoCo-sized Gaussian policy.

The textbook step here uses only torch.autograd: the surrogate's gradient, Fisher-vector products
by double backward of the mean KL, a plain conjugate gradient with a host check per iteration, the
step scaled to sqrt(2δ / xᵀ(F + λI)x), and a backtracking line search that stops at the first
candidate with KL ≤ δ and an improved surrogate — the way sb3-contrib writes it. Our sync-free,
batched, Gauss–Newton version must land on the same parameters.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torch.distributions import Normal, kl_divergence

from trpo_torchrl import TRPOLoss, TrustRegionUpdate, gaussian_actor

OBS, ACT, N = 17, 6, 1024  # HalfCheetah's sizes


def _textbook_step(
    net, obs, act, old_logp, adv, *, max_kl, damping, cg_iters, backtrack_iters, coeff, kl_reduction="sum"
):
    params = [p for p in net.parameters() if p.requires_grad]

    def dist():
        loc, scale = net(obs)
        return Normal(loc, scale)

    with torch.no_grad():
        d_old = dist()
        old = Normal(d_old.loc.clone(), d_old.scale.clone())

    def surrogate():
        return (torch.exp(dist().log_prob(act).sum(-1) - old_logp) * adv).mean()

    def mean_kl():
        kl = kl_divergence(old, dist())  # [N, d]: one KL per action dimension
        # "mean" is sb3-contrib's measure: its Normal is not Independent, so .mean() runs over N·d
        return kl.sum(-1).mean() if kl_reduction == "sum" else kl.mean()

    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    g = flat(torch.autograd.grad(surrogate(), params))

    def fvp(v):
        grad_kl = flat(torch.autograd.grad(mean_kl(), params, create_graph=True))
        return flat(torch.autograd.grad((grad_kl * v).sum(), params)) + damping * v

    x, r, p = torch.zeros_like(g), g.clone(), g.clone()
    rr = r @ r
    for _ in range(cg_iters):
        ap = fvp(p)
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        rr_new = r @ r
        if rr_new < 1e-10:
            break
        p, rr = r + rr_new / rr * p, rr_new
    step = x * math.sqrt(2 * max_kl / float(x @ fvp(x)))
    theta0 = flat([q.detach() for q in params])

    def assign(theta):
        i = 0
        for q in params:
            q.data.copy_(theta[i : i + q.numel()].view_as(q))
            i += q.numel()

    with torch.no_grad():
        base = surrogate()
        for k in range(backtrack_iters):
            assign(theta0 + coeff**k * step)
            if mean_kl() <= max_kl and surrogate() > base:
                return flat([q.detach() for q in params]), k
        assign(theta0)
        return theta0, backtrack_iters


@pytest.mark.parametrize("kl_reduction", ["sum", "mean"])
@pytest.mark.parametrize("fvp", ["gauss_newton", "kl_hessian"])
def test_update_equals_textbook_trpo_step(fvp, kl_reduction):
    torch.manual_seed(0)
    dtype = torch.float64
    mlp = nn.Sequential(nn.Linear(OBS, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, ACT))
    actor = gaussian_actor(mlp, ACT, init_log_std=0.0).to(dtype)
    critic = TensorDictModule(nn.Linear(OBS, 1), in_keys=["observation"], out_keys=["state_value"]).to(dtype)
    obs = torch.randn(N, OBS, dtype=dtype) * 2
    with torch.no_grad():
        batch = actor(TensorDict({"observation": obs}, [N]))
    # an advantage a policy step can improve: actions aligned with a fixed direction of the state
    w = torch.randn(OBS, ACT, dtype=dtype)
    batch["advantage"] = (batch["action"] * torch.tanh(obs @ w)).sum(-1, keepdim=True) + 0.1 * torch.randn(
        N, 1, dtype=dtype
    )
    batch["value_target"] = torch.zeros(N, 1, dtype=dtype)

    adv = batch["advantage"].reshape(-1)
    adv = (adv - adv.mean()) / adv.std()
    reference_net = [m for m in actor.modules() if isinstance(m, nn.Sequential)][0]
    reference_net = copy.deepcopy(reference_net)  # Sequential(mlp, StateIndependentScale)
    options = dict(max_kl=0.04, damping=0.1, cg_iters=25, backtrack_iters=10)
    ref_theta, ref_k = _textbook_step(
        reference_net,
        obs,
        batch["action"],
        batch["action_log_prob"].reshape(-1),
        adv,
        coeff=0.8,
        kl_reduction=kl_reduction,
        **options,
    )

    loss = TRPOLoss(actor, critic, normalize_advantage=True, kl_reduction=kl_reduction)
    update = TrustRegionUpdate(loss, backtrack_coeff=0.8, fvp=fvp, **options)
    theta0 = update.flat_parameters()
    metrics = update(batch)
    ours = update.flat_parameters()
    assert bool(metrics["step_accepted"]) and int(metrics["backtrack_steps"]) == ref_k
    assert not torch.equal(ours, theta0)
    rel = (ours - ref_theta).norm() / (ref_theta - theta0).norm()
    assert rel < 1e-6, f"relative difference {rel:.2e} from the textbook step"
