"""The trust-region step: TRPO's actor update on a flat parameter vector, with a member dimension.

One function, :func:`trust_region_step`, does the step in the algorithm's order for θ_old of shape
``[n]`` (one policy) or ``[M, n]`` (a population of M policies, each with its own trust region):

1. the objective, surrogate and KL at θ_old and the gradient ``g`` (from the policy backend);
2. the damped Fisher-vector product ``v ↦ (F + damping·I) v`` (block diagonal over members);
3. ``x ≈ (F + damping·I)⁻¹ g`` by one batched :func:`~trpo_torchrl.ops.conjugate_gradient` call;
4. the full step ``s = x · sqrt(2δ / xᵀFx)`` and its expected improvement ``gᵀs``;
5. the candidates ``θ_old + βᵏ s`` evaluated together; each member keeps its first acceptable
   candidate, chosen by a mask, or its θ_old bit for bit.

How the policy is evaluated (``torch.func`` on any module, or explicit matrix products for a plain
MLP) is the backend's business (:mod:`trpo_torchrl.backends`); what is averaged over data-parallel
ranks is this module's. Nothing reads a tensor back to the host, with one exception an evaluation
asks for: ``candidates_per_pass = k`` evaluates the candidates k at a time, in order, and stops
after the first pass in which every member has an acceptable candidate (a host read per pass; the
candidates not evaluated are never chosen, so the step is the one all candidates would give). The
``torch.func`` backend asks for it on a CPU policy with convolutions, where each candidate costs a
forward pass of the network and the first is usually accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from tensordict import TensorDict

from .distributed import all_reduce_mean
from .ops import conjugate_gradient
from .validation import check_choice, check_count, check_number

__all__ = ["Evaluation", "TrustRegionSettings", "step_metrics", "trust_region_step"]


@dataclass(frozen=True)
class TrustRegionSettings:
    """The step's hyperparameters, validated by the front ends (see
    :class:`~trpo_torchrl.TrustRegionUpdate` for their meaning)."""

    max_kl: float
    damping: float = 0.1
    cg_iters: int = 10
    backtrack_iters: int = 10
    backtrack_coeff: float = 0.8
    accept_ratio: float = 0.0
    fvp: str = "gauss_newton"
    fvp_subsample: float = 1.0

    @classmethod
    def validated(
        cls,
        where: str,
        *,
        max_kl,
        damping,
        cg_iters,
        backtrack_iters,
        backtrack_coeff,
        accept_ratio,
        fvp,
        fvp_subsample,
    ) -> TrustRegionSettings:
        """The settings, each checked by the one rule (:mod:`trpo_torchrl.validation`); an error names
        ``where``, the argument and the value."""
        return cls(
            max_kl=check_number(where, "max_kl", max_kl, low=0, low_open=True),
            damping=check_number(where, "damping", damping, low=0),
            cg_iters=check_count(where, "cg_iters", cg_iters),
            backtrack_iters=check_count(where, "backtrack_iters", backtrack_iters),
            backtrack_coeff=check_number(
                where, "backtrack_coeff", backtrack_coeff, low=0, high=1, low_open=True, high_open=True
            ),
            accept_ratio=check_number(where, "accept_ratio", accept_ratio, low=0),
            fvp=check_choice(where, "fvp", fvp, ("gauss_newton", "kl_hessian")),
            fvp_subsample=check_number(where, "fvp_subsample", fvp_subsample, low=0, high=1, low_open=True),
        )


class Evaluation(Protocol):
    """A policy backend's view of one batch around θ_old ``[*lead, n]`` (``lead``: ``()`` or ``(M,)``).

    ``terms``: objective, surrogate and KL at θ_old, each ``[*lead]``; ``gradient``: ∇objective,
    ``[*lead, n]``. Both are this process's batch means (the engine averages them over ranks).
    """

    terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    gradient: torch.Tensor

    def fisher_vector_product(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v [*lead, n] ↦ (F + damping·I) v`` over this process's states (or a subsample)."""

    def candidate_terms(self, candidates: torch.Tensor) -> torch.Tensor:
        """``[3, K, *lead]``: objective, surrogate and KL of the candidates ``[K, *lead, n]``."""


def _candidates_per_pass(evaluation: Evaluation, k: int) -> int:
    """How many line-search candidates one pass evaluates: ``evaluation.candidates_per_pass`` when
    it sets one (an int >= 1), else all ``k`` at once."""
    per_pass = getattr(evaluation, "candidates_per_pass", None)
    return k if per_pass is None else max(1, min(int(per_pass), k))


def _along_k(values: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
    """``[K]`` → ``[K, 1, ...]`` broadcasting against ``[K, *lead]``."""
    return values.view(-1, *([1] * len(lead)))


def step_metrics(
    chosen,
    accepted,
    *,
    fraction,
    backtracks,
    kl_old,
    surrogate_old,
    objective_old,
    cand_kl,
    cand_surrogate,
    cand_objective,
    improvement,
    expected_improvement,
    step_norm,
    grad_norm,
    curvature,
    cg_info,
    batch_size,
) -> TensorDict:
    """The metrics of one trust-region step, from the line search's candidate values (leading dim K)
    and ``chosen`` (picks each system's accepted candidate along K); entries are per member for a
    population (``batch_size [M]``)."""
    zero = torch.zeros_like(objective_old)
    return TensorDict(
        {
            "kl": torch.where(accepted, chosen(cand_kl), kl_old),
            "kl_full_step": cand_kl[0],
            "surrogate_before": surrogate_old,
            "surrogate_after": torch.where(accepted, chosen(cand_surrogate), surrogate_old),
            "objective_before": objective_old,
            "objective_after": torch.where(accepted, chosen(cand_objective), objective_old),
            "expected_improvement": expected_improvement.detach(),
            "actual_improvement": torch.where(accepted, chosen(improvement), zero),
            "step_accepted": accepted,
            "backtrack_steps": backtracks,
            "step_fraction": fraction,
            "step_norm": step_norm,
            "grad_norm": grad_norm,
            "fisher_curvature": curvature,
            "cg_residual": cg_info.residual_norm,
            "cg_iterations": cg_info.iterations,
            "cg_breakdown": cg_info.breakdown,
        },
        batch_size=batch_size,
    )


def trust_region_step(
    evaluation: Evaluation,
    theta_old: torch.Tensor,
    settings: TrustRegionSettings,
    *,
    max_kl: float | torch.Tensor | None = None,
    process_group=None,
) -> tuple[torch.Tensor, TensorDict]:
    """New parameters ``[*lead, n]`` (θ_old's own bits where no candidate is accepted) and the metrics.

    Args:
        evaluation: the backend's evaluation of the batch around ``theta_old``.
        theta_old: ``[n]`` or ``[M, n]``.
        settings: the step's hyperparameters.
        max_kl: overrides ``settings.max_kl``, e.g. a ``[M]`` tensor of per-member radii.
        process_group: data-parallel ranks holding equal shards of the batch (``None``: one process).
            The terms, the gradient, every Fisher-vector product and the candidates' terms are means
            over the ranks, so every rank takes the step a single process would on all the shards.
    """
    theta_old = theta_old.detach()
    lead = tuple(theta_old.shape[:-1])
    max_kl = settings.max_kl if max_kl is None else max_kl

    def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_mean(tensor, process_group)

    # 1. the objective's gradient and the terms at θ_old
    g = mean_over_ranks(evaluation.gradient)
    objective_old, surrogate_old, kl_old = mean_over_ranks(torch.stack(evaluation.terms).detach()).unbind()

    # 2. the Fisher-vector product (damped), built once and reused by CG and the step size
    local_fvp = evaluation.fisher_vector_product()
    if process_group is None:
        fvp = local_fvp
    else:
        # F is a mean over states, so the global F·v is the mean of the ranks' products
        # (the damping term is the same on every rank and passes through the mean unchanged)
        def fvp(v):
            return mean_over_ranks(local_fvp(v))

    # 3. natural-gradient direction x ≈ (F + damping·I)⁻¹ g: one CG system per member
    x, cg_info = conjugate_gradient(fvp, g, max_iter=settings.cg_iters)

    # 4. scale x so the quadratic KL model equals max_kl: ½ sᵀFs = δ  ⇒  s = x·sqrt(2δ / xᵀFx)
    with torch.no_grad():
        curvature = (x * fvp(x)).sum(-1)
    curvature_ok = torch.isfinite(curvature) & (curvature > 0)
    safe_curvature = torch.where(curvature_ok, curvature, torch.ones_like(curvature))
    scale = torch.where(curvature_ok, torch.sqrt(2.0 * max_kl / safe_curvature), torch.zeros_like(curvature))
    full_step = x * scale.unsqueeze(-1)
    expected_improvement = (g * full_step).sum(-1)

    # 5. line search: every candidate θ_old + βᵏ s evaluated together, the first acceptable kept
    k = torch.arange(settings.backtrack_iters, device=theta_old.device, dtype=theta_old.dtype)
    fractions = settings.backtrack_coeff**k
    candidates = theta_old + _along_k(fractions, lead).unsqueeze(-1) * full_step  # [K, *lead, n]

    def acceptable_among(terms: torch.Tensor, cands: torch.Tensor, fracs: torch.Tensor) -> torch.Tensor:
        objective, _, kl = terms.unbind()
        gain = objective - objective_old
        return (
            torch.isfinite(cands).all(-1)
            & torch.isfinite(objective)
            & torch.isfinite(kl)
            & (kl <= max_kl)
            & (gain > 0)
            & (gain >= settings.accept_ratio * expected_improvement * _along_k(fracs, lead))
        )  # [K, *lead]

    num_candidates = settings.backtrack_iters
    per_pass = _candidates_per_pass(evaluation, num_candidates)
    with torch.no_grad():
        if per_pass >= num_candidates:
            terms = mean_over_ranks(evaluation.candidate_terms(candidates))
        else:
            # in order, a pass at a time, until every member has an acceptable candidate; the
            # candidates left out are NaN, so never acceptable (the first acceptable is among those run)
            terms = torch.full((3, *candidates.shape[:-1]), float("nan"), dtype=objective_old.dtype, device=g.device)
            for start in range(0, num_candidates, per_pass):
                stop = min(start + per_pass, num_candidates)
                terms[:, start:stop] = mean_over_ranks(evaluation.candidate_terms(candidates[start:stop]))
                if bool(acceptable_among(terms[:, :stop], candidates[:stop], fractions[:stop]).any(0).all()):
                    break
    cand_objective, cand_surrogate, cand_kl = terms.unbind()
    improvement = cand_objective - objective_old
    acceptable = acceptable_among(terms, candidates, fractions)
    accepted = acceptable.any(0)
    first = acceptable.to(torch.int32).argmax(dim=0)  # [*lead]; 0 where none, masked below

    def chosen(values: torch.Tensor) -> torch.Tensor:
        # gather along K with each member's own index: indexing with a tensor would read it on the host
        index = first.reshape(1, *lead, *([1] * (values.dim() - 1 - len(lead)))).expand(1, *values.shape[1:])
        return values.gather(0, index).squeeze(0)

    # where() picks θ_old's own bits when nothing is accepted: a rejected step changes nothing
    theta_new = torch.where(accepted.unsqueeze(-1), chosen(candidates), theta_old)
    backtracks = torch.where(accepted, first, torch.full_like(first, settings.backtrack_iters))
    fraction = torch.where(
        accepted, chosen(_along_k(fractions, lead).expand(-1, *lead)), torch.zeros_like(objective_old)
    )
    metrics = step_metrics(
        chosen,
        accepted,
        fraction=fraction,
        backtracks=backtracks,
        kl_old=kl_old,
        surrogate_old=surrogate_old,
        objective_old=objective_old,
        cand_kl=cand_kl,
        cand_surrogate=cand_surrogate,
        cand_objective=cand_objective,
        improvement=improvement,
        expected_improvement=expected_improvement,
        step_norm=fraction * full_step.norm(dim=-1),
        grad_norm=g.norm(dim=-1),
        curvature=curvature,
        cg_info=cg_info,
        batch_size=list(lead),
    )
    return theta_new, metrics
