"""Small factories for the policies TRPO is usually run with, as TorchRL ProbabilisticActors.

Each actor writes its distribution parameters (``loc``/``scale`` or ``logits``) and the action's
log-probability into the collected batch, which is what :class:`~trpo_torchrl.TRPOLoss` rebuilds π_old from.
"""

from __future__ import annotations

import torch
from tensordict.nn import InteractionType, NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.modules import IndependentNormal, OneHotCategorical, ProbabilisticActor
from torch.distributions import Categorical

__all__ = ["StateIndependentScale", "gaussian_actor", "categorical_actor"]


class StateIndependentScale(nn.Module):
    """Maps a mean ``loc`` to ``(loc, exp(log_std))``, one learned log-std per action dimension.

    The classic TRPO Gaussian: the spread does not depend on the state, so it can only shrink as the
    whole policy grows confident.
    """

    def __init__(self, action_dim: int, init_log_std: float = 0.0):
        super().__init__()
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def forward(self, loc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loc, self.log_std.exp().expand_as(loc)


def gaussian_actor(
    net: nn.Module,
    action_dim: int,
    *,
    in_keys=("observation",),
    state_dependent_scale: bool = False,
    init_log_std: float = 0.0,
    spec=None,
) -> ProbabilisticActor:
    """A diagonal-Gaussian actor.

    Args:
        net: maps the observation to the mean ``[..., action_dim]``, or to ``[..., 2 * action_dim]``
            (mean and pre-softplus scale) when ``state_dependent_scale`` is set.
        action_dim: the action size.
        in_keys: the observation keys ``net`` reads.
        state_dependent_scale: ``False`` (default) learns one log-std per dimension,
            :class:`StateIndependentScale`; ``True`` takes the scale from ``net``'s output.
        init_log_std: the initial log-std of the state-independent scale.
        spec: the action spec, forwarded to :class:`~torchrl.modules.ProbabilisticActor`.
    """
    head = NormalParamExtractor() if state_dependent_scale else StateIndependentScale(action_dim, init_log_std)
    module = TensorDictModule(nn.Sequential(net, head), in_keys=list(in_keys), out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        distribution_class=IndependentNormal,
        return_log_prob=True,
        # sample when no exploration type is set: TRPO's surrogate needs on-policy random actions
        default_interaction_type=InteractionType.RANDOM,
        spec=spec,
    )


def categorical_actor(net: nn.Module, *, in_keys=("observation",), one_hot: bool = True, spec=None) -> ProbabilisticActor:
    """A discrete actor over ``net``'s logits; ``one_hot`` matches TorchRL's one-hot action specs
    (the default for Gymnasium's ``Discrete`` spaces), ``False`` gives integer actions."""
    module = TensorDictModule(net, in_keys=list(in_keys), out_keys=["logits"])
    return ProbabilisticActor(
        module,
        in_keys=["logits"],
        distribution_class=OneHotCategorical if one_hot else Categorical,
        return_log_prob=True,
        # sample when no exploration type is set: TRPO's surrogate needs on-policy random actions
        default_interaction_type=InteractionType.RANDOM,
        spec=spec,
    )
