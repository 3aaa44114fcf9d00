"""Running statistics for the training app: observation normalisation and reward scaling.

Both follow Stable-Baselines3's ``VecNormalize`` (observations standardised and clipped to ±10;
rewards divided by the running std of the discounted return, clipped to ±10), with one change of
timing: the statistics are updated once per batch, after the TRPO update. Collection and update then
see the same normalisation, so the importance ratio is exactly 1 at θ_old.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trpo_torchrl.collectors import FrozenStandardize
from trpo_torchrl.distributed import all_gather_cat


class RunningMoments(nn.Module):
    """Mean and variance of a stream of samples ``[..., *shape]``, merged batch by batch."""

    def __init__(self, shape: tuple[int, ...] = (), eps: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).reshape(-1, *self.mean.shape)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        # Chan et al.'s parallel merge of two sets of moments
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)


class ObservationNormalizer(nn.Module):
    """``clip((x − mean) / sqrt(var + eps), ±clip)`` with running statistics; put it first in the
    actor's and the critic's network (the same instance) and call :meth:`update` once per batch."""

    def __init__(self, shape: tuple[int, ...], *, clip: float = 10.0, eps: float = 1e-8, enabled: bool = True):
        super().__init__()
        self.moments = RunningMoments(shape)
        self.clip = clip
        self.eps = eps
        self.enabled = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if not self.enabled else self.frozen_forward(x.dtype)(x)

    def frozen_forward(self, dtype: torch.dtype):
        """:meth:`forward` for the current statistics, computed once (``None`` when disabled: the
        identity); :class:`~trpo_torchrl.collectors.DirectCollector` runs it at every step of a batch."""
        if not self.enabled:
            return None
        mean = self.moments.mean.to(dtype)
        std = (self.moments.var + self.eps).sqrt().to(dtype)
        return FrozenStandardize(mean, std, self.clip)

    def update(self, x: torch.Tensor) -> None:
        if self.enabled:
            self.moments.update(x)


class RewardScaler(nn.Module):
    """Divides rewards by the running std of each environment's discounted return.

    ``returns`` carries each environment's running return from one batch to the next (reset at
    episode ends), so it is part of the state that a checkpoint saves. With a ``process_group`` the
    std is that of every rank's returns, so all learner ranks scale by the same factor.
    """

    def __init__(self, num_envs: int, gamma: float, *, clip: float = 10.0, eps: float = 1e-8, process_group=None):
        super().__init__()
        self.process_group = process_group
        self.moments = RunningMoments(())
        self.register_buffer("returns", torch.zeros(num_envs, dtype=torch.float64))
        self.gamma = gamma
        self.clip = clip
        self.eps = eps

    @torch.no_grad()
    def __call__(self, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Scales ``reward`` ``[num_envs, T, 1]`` (time second) given the ``done`` flags of the same steps."""
        # the scan runs in numpy on the host: a torch loop over the steps costs ~10 µs per step
        r = reward.detach().to(torch.float64).reshape(reward.shape[0], reward.shape[1]).cpu().numpy().T.copy()
        d = done.reshape(reward.shape[0], reward.shape[1]).cpu().numpy().T.copy()
        running = self.returns.cpu().numpy().copy()
        returns_t = np.empty_like(r)  # [T, num_envs]
        for t in range(r.shape[0]):
            running = running * self.gamma + r[t]
            returns_t[t] = running
            running[d[t]] = 0.0
        returns = torch.from_numpy(returns_t.T.copy()).to(self.returns.device)
        running = torch.from_numpy(running).to(self.returns.device)
        self.returns.copy_(running)
        self.moments.update(all_gather_cat(returns.reshape(-1), self.process_group))
        std = (self.moments.var + self.eps).sqrt()
        return (reward / std.to(reward.dtype)).clamp(-self.clip, self.clip)
