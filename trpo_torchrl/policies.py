"""Small factories for the policies TRPO is usually run with, as TorchRL ProbabilisticActors.

Each actor writes its distribution parameters (``loc``/``scale`` or ``logits``) and the action's
log-probability into the collected batch, which is what :class:`~trpo_torchrl.TRPOLoss` rebuilds π_old from.
"""

from __future__ import annotations

import torch
from tensordict.nn import InteractionType, NormalParamExtractor, TensorDictModule, TensorDictModuleBase
from tensordict.nn.probabilistic import interaction_type
from torch import nn
from torch.distributions import Categorical
from torchrl.modules import IndependentNormal, OneHotCategorical, ProbabilisticActor

from .modules import gaussian_heads, has_forward_hooks, sequential_leaves
from .validation import check_count, check_number

__all__ = ["StateIndependentScale", "gaussian_actor", "categorical_actor", "GaussianSampler", "collection_policy"]


class StateIndependentScale(nn.Module):
    """Maps a mean ``loc`` to ``(loc, exp(log_std))``, one learned log-std per action dimension.

    The classic TRPO Gaussian: the spread does not depend on the state, so it can only shrink as the
    whole policy grows confident.
    """

    def __init__(self, action_dim: int, init_log_std: float = 0.0):
        super().__init__()
        action_dim = check_count("StateIndependentScale", "action_dim", action_dim)
        init_log_std = check_number("StateIndependentScale", "init_log_std", init_log_std)
        self.log_std = nn.Parameter(torch.full((action_dim,), init_log_std))

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


def categorical_actor(
    net: nn.Module, *, in_keys=("observation",), one_hot: bool = True, spec=None
) -> ProbabilisticActor:
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


class GaussianSampler(TensorDictModuleBase):
    """The collection-time form of a Gaussian actor whose network ends in a scale head (a
    :func:`gaussian_actor`, or tensordict's ``NormalParamExtractor`` or ``AddStateIndependentNormalScale``):
    the same network and parameters (shared, not copied), run by its own forward pass, the same entries written (``loc``, ``scale``, the action and its log-probability) and
    the same random draws, without the TensorDict-module machinery a ProbabilisticActor runs per call.

    On a small CPU that machinery costs several times the network itself at each environment step
    (``benchmarks/throughput.py`` measures collection).
    It samples under the RANDOM interaction type (what collectors use) and returns the mean otherwise.
    While the actor or its TensorDict modules have forward hooks (which this shortcut would skip),
    it calls the actor itself.
    """

    def __init__(self, actor):
        super().__init__()
        module = actor.module[0]
        # kept unregistered: its parameters are the network's, already registered as ``net``
        self.__dict__["_actor"] = actor
        self.__dict__["_wrappers"] = (actor, *actor.module)
        self.net = module.module
        self.in_keys = list(module.in_keys)
        self._params_keys = list(module.out_keys)  # loc, scale
        self._action_key = actor.dist_sample_keys[0]
        self._log_prob_key = actor.log_prob_keys[0]
        self.out_keys = [*self._params_keys, self._action_key, self._log_prob_key]
        self._distribution_class = actor.module[-1].distribution_class
        self._distribution_kwargs = dict(actor.module[-1].distribution_kwargs)

    def forward(self, tensordict):
        # hooks on the modules this shortcut does not call (the network's own hooks still run)
        if any(has_forward_hooks(m, recurse=False) for m in self._wrappers):
            return self._actor(tensordict)
        loc, scale = self.net(*(tensordict.get(key) for key in self.in_keys))
        dist = self._distribution_class(loc, scale, **self._distribution_kwargs)
        mode = interaction_type()
        if mode is None or mode is InteractionType.RANDOM:
            action = dist.rsample() if dist.has_rsample else dist.sample()
        else:
            action = dist.deterministic_sample
        tensordict.set(self._params_keys[0], loc)
        tensordict.set(self._params_keys[1], scale)
        tensordict.set(self._action_key, action)
        tensordict.set(self._log_prob_key, dist.log_prob(action))
        return tensordict


def collection_policy(actor):
    """A :class:`GaussianSampler` for a ``ProbabilisticActor`` over an ``IndependentNormal`` whose
    network ends in a scale head (:func:`~trpo_torchrl.modules.gaussian_heads`:
    :class:`StateIndependentScale`, ``NormalParamExtractor``, ``AddStateIndependentNormalScale``),
    the actor itself for anything else.

    The network must end in the head by its own forward pass (its last leaf in
    :func:`~trpo_torchrl.modules.sequential_leaves`): an ``nn.Sequential`` subclass whose
    ``forward`` differs is not taken for the stack of its children. The sampler runs the network
    itself, so any head's scale is the module's own."""
    try:
        module, prob = actor.module[0], actor.module[-1]
        leaves = list(sequential_leaves(module.module)) if type(module) is TensorDictModule else []
        plain = (
            type(actor) is ProbabilisticActor
            and len(actor.module) == 2
            and type(module) is TensorDictModule
            and bool(leaves)
            and type(leaves[-1]) in gaussian_heads()
            and prob.distribution_class is IndependentNormal
            and prob.return_log_prob
            and not getattr(actor, "safe", False)  # a safe actor projects its samples into the spec
            and len(actor.dist_sample_keys) == 1
            and len(actor.log_prob_keys) == 1
        )
    except (AttributeError, IndexError, TypeError):
        plain = False
    return GaussianSampler(actor) if plain else actor
