"""TrustRegionUpdate: TRPO's actor step on one policy — the front end of the trust-region engine
(:mod:`trpo_torchrl.engine`) over the actor's own parameters, evaluated by a policy backend
(:mod:`trpo_torchrl.backends`)."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from .backends import MLPPolicyPlan, PolicyBackends
from .distributed import resolve_process_group
from .distributions import resolve_fvp
from .engine import TrustRegionSettings, step_metrics, trust_region_step
from .loss import PolicyBatch, TRPOLoss, _trainable_parameters
from .validation import check_generator

__all__ = ["TrustRegionUpdate", "step_metrics"]


class TrustRegionUpdate:
    """The TRPO actor step, done in place on a :class:`~trpo_torchrl.TRPOLoss`'s actor.

    One call, in the algorithm's order:

    1. the surrogate ``L`` (plus the entropy bonus, if the loss has one) and the mean KL at θ_old,
       and the gradient ``g = ∇L``;
    2. a Fisher-vector product ``v ↦ (F + damping·I) v`` over the batch states (or a subsample);
    3. ``x ≈ (F + damping·I)⁻¹ g`` by :func:`~trpo_torchrl.ops.conjugate_gradient`;
    4. the full step ``s = x · sqrt(2·max_kl / xᵀ(F + damping·I)x)`` and its expected improvement ``gᵀs``;
    5. the candidates ``θ_old + βᵏ s``, ``k = 0..backtrack_iters-1``, evaluated together (stacked
       parameters through ``torch.func.functional_call`` under ``torch.vmap``, or batched matrix
       products for a plain MLP policy, see ``fast_mlp``); the first with finite
       values, ``KL ≤ max_kl``, ``L`` improved and the improvement at least ``accept_ratio`` times the
       expected one is taken, chosen by a mask. When none is, the parameters are left bit-identical.

    Nothing reads a tensor back to the host: acceptance, the chosen step and a failed search are
    tensors in the returned metrics. (One exception: a policy with convolutions on the CPU takes
    ``J v`` from ``torch.func.linearize`` and evaluates its candidates one at a time, stopping at the
    first acceptable one, which reads a flag back per candidate; the step is the same.) A non-positive or non-finite curvature ``xᵀFx`` gives a zero step,
    which the search rejects (``fisher_curvature`` in the metrics shows it).

    The proposal (:meth:`propose`) is a pure function of the flat parameter vector θ_old, and the
    module is touched only when the result is written back; per-member trust regions for a population
    of actors can map :meth:`propose` over a leading dimension without changing the math.

    Args:
        loss_module (TRPOLoss): provides the batch checks and the policy evaluation.

    Keyword Args:
        max_kl (float): the trust-region radius δ on the mean KL(π_old ‖ π_θ). Defaults to ``0.01``.
        damping (float): added to F's diagonal, keeps CG well-posed. Defaults to ``0.1``.
        cg_iters (int): CG iterations. Defaults to ``10``.
        backtrack_iters (int): line-search candidates. Defaults to ``10``.
        backtrack_coeff (float): the shrink factor β in (0, 1). Defaults to ``0.8``.
        accept_ratio (float): minimal fraction of the expected improvement a candidate must realise.
            Defaults to ``0.0`` (any improvement).
        fvp (str, optional): ``"gauss_newton"`` (``Jᵀ M J`` with the action distribution's closed-form
            Fisher ``M``: Gaussian, ``TanhNormal`` through its base Normal, categorical, Bernoulli, or a
            ``CompositeDistribution`` of them) or ``"kl_hessian"`` (double backward through the mean KL;
            any distribution the loss can take a KL of). Defaults to ``None``: ``"gauss_newton"`` when
            the distribution has a closed-form Fisher, else ``"kl_hessian"`` (said once in a log line).
            ``"gauss_newton"`` asked for a distribution without one is a ValueError here.
        fvp_subsample (float): fraction of the batch states the Fisher is averaged over. Defaults to ``1.0``.
        generator (torch.Generator, optional): drives the Fisher subsample.
        fast_mlp (bool): when the actor is a plain MLP policy (Linear and Tanh/ReLU layers after
            parameter-free preprocessing; a categorical, or a Gaussian whose network ends in a scale head
            :func:`~trpo_torchrl.modules.gaussian_heads` names; see :mod:`trpo_torchrl.backends.mlp`), compute the Gauss-Newton products
            and the line-search candidates with explicit matrix products instead of ``torch.func``
            (the same values up to rounding, and faster: ``benchmarks/update.py`` measures the actor
            step on the HalfCheetah preset). Any other actor, or one with forward hooks, takes the ``torch.func`` path either
            way. Defaults to ``True``.
        process_group (ProcessGroup or "world", optional): data-parallel ranks, each holding an equal
            shard of the batch. The advantage statistics, the gradient, every Fisher-vector product and
            the line-search statistics are averaged over the group (on the device), so every rank
            computes the step a single process would on the union of the shards and writes the same
            parameters. Every rank must call the update once per iteration. Defaults to ``None`` (one
            process; no collective is issued).

    Examples:
        >>> update = TrustRegionUpdate(loss, max_kl=0.01)  # doctest: +SKIP
        >>> metrics = update(batch)  # batch holds advantages, or the loss computes them
        >>> metrics["step_accepted"], metrics["kl"]  # doctest: +SKIP
    """

    def __init__(
        self,
        loss_module: TRPOLoss,
        *,
        max_kl: float = 0.01,
        damping: float = 0.1,
        cg_iters: int = 10,
        backtrack_iters: int = 10,
        backtrack_coeff: float = 0.8,
        accept_ratio: float = 0.0,
        fvp: str | None = None,
        fvp_subsample: float = 1.0,
        generator: torch.Generator | None = None,
        fast_mlp: bool = True,
        process_group=None,
    ):
        if not isinstance(loss_module, TRPOLoss):
            raise TypeError(f"TrustRegionUpdate: loss_module must be a TRPOLoss, got {type(loss_module).__name__}")
        self.loss_module = loss_module
        # the product the actor's distribution takes, decided now (refusals name the fix)
        fvp, automatic_fvp = resolve_fvp("TrustRegionUpdate", loss_module.actor_network, fvp, loss_module.kl_estimate)
        self.settings = TrustRegionSettings.validated(
            "TrustRegionUpdate",
            max_kl=max_kl,
            damping=damping,
            cg_iters=cg_iters,
            backtrack_iters=backtrack_iters,
            backtrack_coeff=backtrack_coeff,
            accept_ratio=accept_ratio,
            fvp=fvp,
            fvp_subsample=fvp_subsample,
        )
        self.generator = check_generator("TrustRegionUpdate", "generator", generator)
        self.process_group = resolve_process_group(process_group)
        self.backends = PolicyBackends(loss_module, self.settings, generator=self.generator, fast_mlp=fast_mlp)
        self.backends.functional.automatic_fvp = automatic_fvp
        self.layout = self.backends.layout

    @property
    def _params(self) -> list[torch.nn.Parameter]:
        named = dict(_trainable_parameters(self.loss_module.actor_network))
        if list(named) != self.layout.names:
            raise RuntimeError(
                "TrustRegionUpdate: the actor's trainable parameters changed since the update was built "
                f"(had {self.layout.names}, now {list(named)}); build a new TrustRegionUpdate"
            )
        return [named[name] for name in self.layout.names]

    # ---------------------------------------------------------------- flat parameter views
    @property
    def num_parameters(self) -> int:
        """n, the length of the flat parameter vector θ."""
        return self.layout.num_parameters

    def flat_parameters(self) -> torch.Tensor:
        """θ as one detached vector ``[n]`` (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., n]`` → name → ``[..., *shape]`` views; leading dimensions are kept for batched θ."""
        return self.layout.unflatten(theta)

    @torch.no_grad()
    def write_parameters(self, theta: torch.Tensor) -> None:
        """Copies ``theta`` into the actor's parameters (in place, so every holder sees it)."""
        for p, chunk in zip(self._params, theta.split(self.layout.numels)):
            p.copy_(chunk.view_as(p))

    @property
    def plan(self) -> MLPPolicyPlan | None:
        """The plain-MLP plan for the actor as it is now (``None``: the ``torch.func`` path)."""
        return self.backends.plan

    # ---------------------------------------------------------------- the step
    def __call__(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Does one actor step on ``tensordict`` in place and returns its metrics."""
        batch = self.loss_module.policy_batch(tensordict, process_group=self.process_group)
        theta_new, metrics = self.propose(batch, self.flat_parameters())
        self.write_parameters(theta_new)
        return metrics

    def evaluate(self, batch: PolicyBatch, theta_old: torch.Tensor):
        """The backend's evaluation of ``batch`` around ``theta_old`` (:class:`~trpo_torchrl.engine.Evaluation`)."""
        return self.backends.evaluate(batch, theta_old)

    def fisher_vector_product(self, batch: PolicyBatch, theta_old: torch.Tensor):
        """``v ↦ (F + damping·I) v`` at θ_old over this process's batch states (or a subsample of them)."""
        return self.evaluate(batch, theta_old).fisher_vector_product()

    def propose(self, batch: PolicyBatch, theta_old: torch.Tensor) -> tuple[torch.Tensor, TensorDictBase]:
        """The new flat parameters (θ_old itself when no candidate is accepted) and the metrics.

        A pure function of ``theta_old``: it reads the actor's structure, never its current values.
        """
        return trust_region_step(
            self.evaluate(batch, theta_old), theta_old, self.settings, process_group=self.process_group
        )
