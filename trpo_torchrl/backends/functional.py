"""The ``torch.func`` backend: any policy the loss can evaluate, one policy or a population.

The objective, the KL and the distribution parameters come from :class:`~trpo_torchrl.TRPOLoss`'s own
policy evaluation with θ substituted functionally (``torch.func.functional_call``). A population's
members are the leading dimension of θ ``[M, n]`` and of the batch, and every function is vmapped over
them; its Fisher is block diagonal, so the population's θ is seen as one long vector ``[M·n]`` and the
tested single-vector products of :mod:`trpo_torchrl.fisher` apply unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..distributions import composite_families, joint_log_prob
from ..fisher import gauss_newton_fisher_vector_product, kl_fisher_vector_product, subsample_indices
from ..loss import PolicyBatch, TRPOLoss, distribution_parameters

__all__ = ["FunctionalBackend", "subsample"]

_log = logging.getLogger("trpo_torchrl")


def subsample(
    batch: PolicyBatch, fraction: float, generator: torch.Generator | None, members: int | None
) -> PolicyBatch:
    """The states the Fisher is averaged over: a random ``fraction`` of the batch (``[N]`` fields),
    or of each member's own states (``[M, N]`` fields; ``members=M``), drawn from ``generator``.
    A sequence batch (a recurrent policy's) keeps a random ``fraction`` of its rows, whole: the
    recurrence needs every step of a row before a chosen one."""
    device = batch.advantage.device
    if members is None and batch.inputs.batch_dims == 2:
        rows = subsample_indices(batch.inputs.batch_size[0], fraction, generator=generator).to(device)
        return batch.rows(rows)
    if members is None:
        return batch.index(subsample_indices(batch.advantage.shape[0], fraction, generator=generator).to(device))
    num_states = batch.advantage.shape[1]
    idx = torch.stack([subsample_indices(num_states, fraction, generator=generator) for _ in range(members)]).to(device)
    rows = torch.arange(members, device=device)[:, None]
    return batch.apply(lambda field: field[rows, idx])


class FunctionalBackend:
    """Evaluates the actor of ``loss_module`` through ``torch.func``; see the module doc."""

    def __init__(self, loss_module: TRPOLoss, layout, settings, generator: torch.Generator | None):
        self.loss_module = loss_module
        self.layout = layout
        self.fvp, self.damping, self.fvp_subsample = settings.fvp, settings.damping, settings.fvp_subsample
        self.generator = generator
        # True when fvp was left to its default and the distribution is known only from a batch:
        # one without a closed-form Fisher then takes the KL-Hessian product (set by the front end)
        self.automatic_fvp = False
        # a policy with convolutions takes J v from a traced jvp (linearize): differentiating a
        # convolution's backward again, the default transpose trick, costs more than the tracing
        # (the Nature-CNN on 1 024 states: about 1.0 s per product instead of 1.7 s, for 0.7 s
        # more set-up per step; benchmarks/cg.py --cnn); an MLP keeps the transpose trick
        self.convolutional = any(
            isinstance(m, torch.nn.modules.conv._ConvNd) for m in loss_module.actor_network.modules()
        )

    def evaluate(
        self, batch: PolicyBatch, theta_old: torch.Tensor, buffers: dict[str, torch.Tensor]
    ) -> FunctionalEvaluation:
        return FunctionalEvaluation(self, batch, theta_old, buffers)

    # ---------------------------------------------------------------- per-member functions
    def _named(self, theta: torch.Tensor, buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One policy's named tensors for the functional call: its parameters θ and its own buffers."""
        return {**self.layout.unflatten(theta), **buffers}

    def _terms(self, theta, batch: PolicyBatch, buffers):
        terms = self.loss_module.policy_terms(batch, self._named(theta, buffers))
        return terms.objective, terms.surrogate, terms.kl

    def _dist_params(self, theta, inputs, buffers, steps=None):
        # the policy reads only the inputs (and, for sequences, which of their steps are states):
        # mapping those alone keeps each product lean
        batch = PolicyBatch(inputs, None, None, None, None, None, steps)
        dist = self.loss_module.policy_dist(batch, self._named(theta, buffers))
        num_states = inputs.numel() if steps is None else steps.numel()
        return distribution_parameters(dist, num_states)

    def _kl(self, theta, batch: PolicyBatch, buffers):
        loss = self.loss_module
        dist = loss.policy_dist(batch, self._named(theta, buffers))
        log_ratio = joint_log_prob(dist, batch.action).reshape(-1) - batch.old_log_prob
        return loss.mean_kl(batch, dist, log_ratio)

    def candidate_terms(self, batch: PolicyBatch, candidates: torch.Tensor, buffers=None) -> torch.Tensor:
        """``[3, K, *lead]``: objective, surrogate and KL of the candidates ``[K, *lead, n]``."""
        buffers = buffers or {}
        return torch.stack(torch.vmap(lambda th: self.per_member(self._terms, th, batch, buffers))(candidates))

    @staticmethod
    def per_member(fn: Callable, theta: torch.Tensor, data, buffers):
        """``fn(θ_m, data_m, buffers_m)`` for each member of ``theta [M, n]``, or ``fn`` itself for one
        policy (``theta [n]``)."""
        if theta.dim() == 1:
            return fn(theta, data, buffers)
        # a batch's unset fields (a sequence batch's steps, sequences) are not mapped
        data_dims = PolicyBatch(*(None if f is None else 0 for f in data)) if isinstance(data, PolicyBatch) else 0
        return torch.vmap(fn, in_dims=(0, data_dims, 0))(theta, data, buffers)

    # ---------------------------------------------------------------- the products
    def fisher_vector_product(self, batch: PolicyBatch, theta_old: torch.Tensor, buffers, dist=None):
        """``v [*lead, n] ↦ (F + damping·I) v`` at θ_old over the batch states (or a subsample of
        them; each member its own), by ``self.fvp``. ``dist``: π at θ_old on the batch, when the
        caller has it (the family and the KL divisor are read from it)."""
        loss = self.loss_module
        lead = tuple(theta_old.shape[:-1])
        members = lead[0] if lead else None
        if self.fvp_subsample < 1.0:
            batch = subsample(batch, self.fvp_subsample, self.generator, members)
        n = theta_old.shape[-1]
        flat_theta = theta_old.reshape(-1)  # a population's θ as one long vector [M·n]

        def unstack(flat: torch.Tensor) -> torch.Tensor:
            return flat.view(*lead, n)

        family = None
        if self.fvp == "gauss_newton":
            if dist is None:
                dist = self._reference_dist(batch, theta_old, buffers)
            family = composite_families(dist)
            if family is None and self.automatic_fvp:
                _log.info(
                    "%s has no closed-form Fisher; the step takes fvp='kl_hessian' (double backward through the KL)",
                    type(dist).__name__,
                )
                self.fvp = "kl_hessian"
            elif family is None:
                raise TypeError(
                    f"{type(self).__name__}: fvp='gauss_newton' knows the Fisher of Gaussian, TanhNormal, "
                    f"categorical, Bernoulli and composite policies, not of {type(dist).__name__}; "
                    "use fvp='kl_hessian' (or leave fvp unset)"
                )
        if family is not None:
            copies = members or 1
            num_states = batch.advantage.numel()  # over all members

            def dist_params(theta, inputs, member_buffers):
                return self._dist_params(theta, inputs, member_buffers, batch.steps)

            def dist_fn(flat):
                out = self.per_member(dist_params, unstack(flat), batch.inputs, buffers)
                # [M, N, ...] → [M·N, ...]: the product then averages over all M·N states, i.e. F / M
                return torch.utils._pytree.tree_map(lambda o: o.reshape(num_states, *o.shape[1 + len(lead) :]), out)

            # × M to undo that, and / d when the KL is averaged over d action dimensions
            product = gauss_newton_fisher_vector_product(
                dist_fn,
                flat_theta,
                family,
                damping=self.damping,
                kl_scale=copies / loss.kl_divisor(dist),
                use_linearize=self.convolutional,
            )
        else:
            # the Hessian of Σ_m KL_m(θ_m) is exactly diag(F_1, ..., F_M)
            product = kl_fisher_vector_product(
                lambda flat: self.per_member(self._kl, unstack(flat), batch, buffers).sum(),
                flat_theta,
                damping=self.damping,
            )
        if not lead:
            return product

        def fvp(v: torch.Tensor) -> torch.Tensor:
            if not isinstance(v, torch.Tensor) or v.shape != theta_old.shape:
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(
                    f"{type(self).__name__}: v must be {list(theta_old.shape)} (one vector per member), got {shape}"
                )
            return product(v.reshape(-1)).view(*lead, n)

        return fvp

    def _reference_dist(self, batch: PolicyBatch, theta_old: torch.Tensor, buffers):
        """π at θ_old on the (first member's) states: what the family and the KL divisor are read from."""
        if theta_old.dim() == 2:
            batch = batch.apply(lambda field: field[0])
            theta_old = theta_old[0]
            buffers = {name: value[0] for name, value in buffers.items()}
        with torch.no_grad():
            return self.loss_module.policy_dist(batch, self._named(theta_old, buffers))


class FunctionalEvaluation:
    """:class:`~trpo_torchrl.engine.Evaluation` through ``torch.func``."""

    def __init__(self, backend: FunctionalBackend, batch: PolicyBatch, theta_old: torch.Tensor, buffers):
        self.backend, self.batch, self.theta_old, self.buffers = backend, batch, theta_old, buffers
        # a CNN on the CPU: each line-search candidate is a forward pass worth skipping, and a host
        # read between passes is cheap (the engine's docstring); elsewhere all candidates at once
        self.candidates_per_pass = 1 if backend.convolutional and theta_old.device.type == "cpu" else None
        theta = theta_old.clone().requires_grad_(True)
        if theta.dim() == 1:
            # one policy: keep the distribution, the Gauss-Newton product reads its family from it
            terms = backend.loss_module.policy_terms(batch, backend._named(theta, buffers))
            objective, surrogate, kl, self._dist = terms.objective, terms.surrogate, terms.kl, terms.dist
        else:
            objective, surrogate, kl = backend.per_member(backend._terms, theta, batch, buffers)
            self._dist = None
        # Σ_m objective_m has ∂/∂θ_m = ∇objective_m: one backward pass gives every member's row
        (self.gradient,) = torch.autograd.grad(objective.sum(), theta)
        self.terms = (objective, surrogate, kl)

    def fisher_vector_product(self):
        return self.backend.fisher_vector_product(self.batch, self.theta_old, self.buffers, self._dist)

    def candidate_terms(self, candidates: torch.Tensor) -> torch.Tensor:
        return self.backend.candidate_terms(self.batch, candidates, self.buffers)
