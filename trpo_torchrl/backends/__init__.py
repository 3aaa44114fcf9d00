"""Policy backends: how the trust-region step evaluates a policy on a batch.

The engine (:mod:`trpo_torchrl.engine`) needs four things of a policy around θ_old — the objective
and its gradient, Fisher-vector products, and the terms of the line-search candidates — for one
policy (θ ``[n]``) or a population (θ ``[M, n]``, member-stacked batches). Two backends give them,
behind one interface (:class:`~trpo_torchrl.engine.Evaluation`):

* :class:`FunctionalBackend` (``torch.func`` through the loss's own policy evaluation): any actor
  and any distribution the loss can take a KL of;
* :class:`MLPBackend` (explicit matrix products over one forward pass): plain MLP policies, a
  Gaussian (a state-independent or a state-dependent scale head) or a categorical.

:class:`PolicyBackends` is the one place that picks between them.
"""

from __future__ import annotations

import logging

import torch

from ..loss import PolicyBatch, TRPOLoss, _trainable_parameters
from .functional import FunctionalBackend
from .mlp import MLPBackend, MLPPolicyPlan

__all__ = ["FunctionalBackend", "MLPBackend", "MLPPolicyPlan", "ParameterLayout", "PolicyBackends"]

_log = logging.getLogger("trpo_torchrl")


class ParameterLayout:
    """Where each trainable parameter of a module sits in the flat vector θ (fixed at construction)."""

    def __init__(self, module: torch.nn.Module):
        named = _trainable_parameters(module)
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]

    @property
    def num_parameters(self) -> int:
        return sum(self.numels)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., n]`` → name → ``[..., *shape]`` views; leading dimensions are kept."""
        lead = theta.shape[:-1]
        chunks = theta.split(self.numels, dim=-1)
        return {name: c.reshape(*lead, *shape) for name, c, shape in zip(self.names, chunks, self.shapes)}


class PolicyBackends:
    """The backends of one actor: the explicit-MLP one when it applies to a batch, else ``torch.func``.

    Args:
        loss_module: the loss whose actor is evaluated; θ's layout (:attr:`layout`) is over its
            trainable parameters.
        settings (TrustRegionSettings): the step's settings (the FVP form, damping, subsample).
        generator, fast_mlp: as for :class:`~trpo_torchrl.TrustRegionUpdate`.
    """

    def __init__(self, loss_module: TRPOLoss, settings, *, generator: torch.Generator | None, fast_mlp: bool):
        # the layout of θ is fixed here; the Parameter objects themselves are looked up at each call
        # (they are the actor's own, shared with the collector's policy, wherever they have moved)
        self.layout = ParameterLayout(loss_module.actor_network)
        self.functional = FunctionalBackend(loss_module, self.layout, settings, generator)
        self.mlp = None
        if fast_mlp and loss_module._recurrent_actor:
            _log.info("the actor step evaluates the policy through torch.func: the actor is recurrent")
        elif fast_mlp:
            plan = MLPPolicyPlan.describe(loss_module.actor_network, self.layout.names, self.layout.numels)
            if plan:
                self.mlp = MLPBackend(plan, self.functional)
            else:
                _log.info("the actor step evaluates the policy through torch.func: %s", plan)

    @property
    def plan(self) -> MLPPolicyPlan | None:
        """The plain-MLP plan for the actor as it is now (``None``: the ``torch.func`` path)."""
        return self.mlp.plan if self.mlp is not None and self.mlp.plan.applies() else None

    def for_batch(self, batch: PolicyBatch, members: bool = False) -> FunctionalBackend | MLPBackend:
        """The backend for this batch: the MLP one when its plan applies now and takes the batch's
        inputs (``[N, in]``, or ``[M, N, in]`` for a population), else the functional one."""
        plan = self.plan
        if plan is not None and plan.accepts(batch.inputs, members=members):
            return self.mlp
        return self.functional

    def evaluate(self, batch: PolicyBatch, theta_old: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None):
        """The evaluation of ``batch`` around ``theta_old`` (``[n]``, or ``[M, n]`` with ``batch``'s
        fields ``[M, N, ...]`` and the members' own ``buffers``) by the backend that applies."""
        members = theta_old.dim() == 2
        return self.for_batch(batch, members).evaluate(batch, theta_old.detach(), buffers or {})
