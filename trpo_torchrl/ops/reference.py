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
