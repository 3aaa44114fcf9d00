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


def mlp_fit_adam(
    params: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    order: torch.Tensor,
    minibatch_size: int,
    activation: str,
    coeff: float,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
) -> torch.Tensor:
    """The semantics of ``trpo_torchrl::mlp_fit_adam``, with autograd and Adam written out.

    ``params`` = [W_0, b_0, W_1, b_1, ...] of an MLP (hidden ``activation``, linear last layer with
    one output). For each epoch e and each slice of ``minibatch_size`` states of the permutation
    ``order[e]``: loss = coeff · mean((MLP(x) − target)²), gradients by autograd, then one step of
    torch.optim.Adam (no weight decay, no amsgrad) that had taken ``step`` steps before the call.
    ``params``, ``exp_avgs`` and ``exp_avg_sqs`` are updated in place; returns the minibatch losses.

    Member-stacked arguments (``inputs`` ``[M, N, F]``, every other tensor with a leading M) are M
    independent fits, member m's from its own slices, one after another; the losses are ``[M, ·]``.
    """
    hyper = (minibatch_size, activation, coeff, lr, beta1, beta2, eps, step)
    if inputs.dim() == 2:
        return _mlp_fit_adam_one(params, exp_avgs, exp_avg_sqs, inputs, targets, order, *hyper)
    per_member = order.shape[1] * -(-inputs.shape[1] // minibatch_size)
    fits = [
        _mlp_fit_adam_one(
            [p[m] for p in params],
            [t[m] for t in exp_avgs],
            [t[m] for t in exp_avg_sqs],
            inputs[m],
            targets[m],
            order[m],
            *hyper,
        )
        for m in range(inputs.shape[0])
    ]
    return torch.stack(fits) if fits else inputs.new_zeros(0, per_member)


def _mlp_fit_adam_one(
    params,
    exp_avgs,
    exp_avg_sqs,
    inputs,
    targets,
    order,
    minibatch_size,
    activation,
    coeff,
    lr,
    beta1,
    beta2,
    eps,
    step,
) -> torch.Tensor:
    """One critic's fit (:func:`mlp_fit_adam` on unstacked tensors)."""
    act = torch.tanh if activation == "tanh" else torch.relu
    num_states = inputs.shape[0]
    losses = []
    k = 0
    for perm in order:
        for start in range(0, num_states, minibatch_size):
            idx = perm[start : start + minibatch_size]
            with torch.enable_grad():  # its own gradients, also when called under no_grad
                weights = [p.detach().requires_grad_(True) for p in params]
                h = inputs[idx]
                for layer in range(len(weights) // 2):
                    h = torch.nn.functional.linear(h, weights[2 * layer], weights[2 * layer + 1])
                    if layer < len(weights) // 2 - 1:
                        h = act(h)
                loss = coeff * (h.reshape(-1) - targets[idx]).pow(2).mean()
                grads = torch.autograd.grad(loss, weights)
            k += 1
            t = step + k
            with torch.no_grad():
                for p, m, v, g in zip(params, exp_avgs, exp_avg_sqs, grads):
                    m.lerp_(g, 1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
                    p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
            losses.append(loss.detach())
    if not losses:
        return torch.zeros(0, dtype=inputs.dtype, device=inputs.device)
    return torch.stack(losses)
