"""Pure-PyTorch references of the compiled ops: the fallback without ``trpo_torchrl._C`` and the
oracle the kernels are tested against.

They take the ops' canonical layout — ``[rows, T]`` tensors, time last — and favour being
obviously right over being fast.
"""

from __future__ import annotations

import torch


def gae_scan(
    gamma: torch.Tensor,
    lmbda: torch.Tensor,
    state_value: torch.Tensor,
    next_state_value: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
    terminated: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE on ``[rows, T]`` tensors (flags bool), the semantics of ``trpo_torchrl::gae``.

    delta_t = r_t + gamma_t (1 - terminated_t) V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma_t lmbda_t (1 - done_t) A_{t+1},   A_T = 0
    returns (A, A + V). Differentiable with autograd.
    """
    zero = torch.zeros((), dtype=state_value.dtype, device=state_value.device)
    delta = reward + torch.where(terminated, zero, gamma) * next_state_value - state_value
    discount = torch.where(done, zero, lmbda * gamma)
    steps = []
    adv = torch.zeros_like(state_value[:, 0])
    for t in range(state_value.shape[1] - 1, -1, -1):
        adv = delta[:, t] + adv * discount[:, t]
        steps.append(adv)
    if steps:
        advantage = torch.stack(steps[::-1], dim=1)
    else:
        advantage = torch.empty_like(state_value)
    return advantage, advantage + state_value


def cg_step(
    x: torch.Tensor,
    r: torch.Tensor,
    p: torch.Tensor,
    Ap: torch.Tensor,
    rdotr: torch.Tensor,
    iterations: torch.Tensor,
    converged: torch.Tensor,
    breakdown: torch.Tensor,
    residual_tol: float,
) -> None:
    """One masked conjugate-gradient iteration on ``[B, n]`` systems, in place; the semantics of
    ``trpo_torchrl::cg_step``.

    For each system with ``active = ~converged & ~breakdown``: alpha = rdotr / (p . Ap); a
    curvature p . Ap that is not positive and finite (or an alpha that is not finite) sets
    ``breakdown`` and leaves x and r alone; otherwise x += alpha p, r -= alpha Ap,
    ``converged`` when r . r <= residual_tol, and p = r + (r . r / rdotr) p. Every system that is
    not active after the step gets p = 0. Only tensor ops: no host synchronisation.
    """
    active = ~(converged | breakdown)
    pAp = (p * Ap).sum(-1)
    alpha = rdotr / pAp
    ok = (pAp > 0) & torch.isfinite(pAp) & torch.isfinite(alpha)
    step = active & ok
    alpha = torch.where(step, alpha, torch.zeros_like(alpha))
    x_new = x + alpha[:, None] * p
    r_new = r - alpha[:, None] * Ap
    x.copy_(torch.where(step[:, None], x_new, x))
    r.copy_(torch.where(step[:, None], r_new, r))
    new_rr = (r * r).sum(-1)
    done = step & (new_rr <= residual_tol)
    keep_going = step & ~done
    beta = new_rr / torch.where(step, rdotr, torch.ones_like(rdotr))
    p.copy_(torch.where(keep_going[:, None], r + beta[:, None] * p, torch.zeros_like(p)))
    rdotr.copy_(torch.where(step, new_rr, rdotr))
    iterations.add_(step.to(iterations.dtype))
    converged.logical_or_(done)
    breakdown.logical_or_(active & ~ok)
