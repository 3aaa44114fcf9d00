"""What the trust-region step knows about an action distribution: its Fisher family, its natural
parameters, its KL, joint log-probability and entropy, and which Fisher-vector product it takes.

Closed-form Fishers (the Gauss–Newton product ``Jᵀ M J``):

* ``"normal"``: a diagonal Gaussian (``Normal``, ``Independent(Normal)``, torchrl's
  ``IndependentNormal``) and torchrl's ``TanhNormal``, whose KL and Fisher are those of its base
  Normal (tanh and the ``low``/``high`` affine are the same bijection for π_old and π_θ);
* ``"categorical"``: ``Categorical``, ``OneHotCategorical``, ``MaskedCategorical`` (a masked class
  has probability 0 and contributes nothing);
* ``"bernoulli"``: ``Bernoulli`` (MultiBinary through ``Independent``);
* ``"composite"``: tensordict's ``CompositeDistribution`` whose parts all have one: the KL and the
  Fisher are sums over the parts.

Any other distribution with a KL takes the KL-Hessian product (:func:`resolve_fvp`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from tensordict.nn import CompositeDistribution, ProbabilisticTensorDictModule, set_composite_lp_aggregate
from torch import distributions as D
from torchrl.modules import IndependentNormal, TanhNormal

from .validation import check_choice

__all__ = [
    "actor_keys",
    "analytic_kl",
    "composite_families",
    "distribution_family",
    "distribution_parameters",
    "entropy",
    "joint_log_prob",
    "resolve_fvp",
]

_log = logging.getLogger("trpo_torchrl")
_CATEGORICALS = (D.Categorical, D.OneHotCategorical)


def _unwrap(dist: D.Distribution) -> D.Distribution:
    """The distribution under ``Independent`` wrappers."""
    while isinstance(dist, D.Independent):
        dist = dist.base_dist
    return dist


def distribution_family(dist: D.Distribution) -> str | None:
    """``"normal"``, ``"categorical"``, ``"bernoulli"``, ``"composite"`` or ``None``: the families
    whose Fisher is known in closed form (see the module doc)."""
    if isinstance(dist, CompositeDistribution):
        return "composite" if all(distribution_family(part) is not None for part in dist.dists.values()) else None
    if isinstance(dist, TanhNormal):
        return "normal" if isinstance(dist.root_dist, D.Normal) else None
    dist = _unwrap(dist)
    if isinstance(dist, D.Normal):
        return "normal"
    if isinstance(dist, _CATEGORICALS):
        return "categorical"
    if isinstance(dist, D.Bernoulli):
        return "bernoulli"
    return None


def composite_families(dist: D.Distribution) -> str | tuple[str, ...] | None:
    """The family, or for a composite the tuple of its parts' families (the form
    :func:`~trpo_torchrl.fisher.gauss_newton_fisher_vector_product` takes)."""
    family = distribution_family(dist)
    if family == "composite":
        return tuple(distribution_family(part) for part in dist.dists.values())
    return family


def distribution_parameters(dist: D.Distribution, num_states: int):
    """The parameters the Fisher is taken in, per state: ``(loc, scale)`` ``[N, d]`` (a TanhNormal's
    base Normal), logits ``[N, ..., k]`` for a categorical, logits ``[N, d]`` for Bernoullis, and for
    a composite the tuple of its parts' parameters."""
    family = distribution_family(dist)
    if family == "composite":
        return tuple(distribution_parameters(part, num_states) for part in dist.dists.values())
    base = dist.root_dist if isinstance(dist, TanhNormal) else _unwrap(dist)
    if family == "normal":
        return base.loc.reshape(num_states, -1), base.scale.reshape(num_states, -1)
    if family == "categorical":
        # torch keeps Categorical logits normalised; the Fisher is the same for any logit shift.
        # Several categoricals per state keep their own class dimension (the softmax is over it).
        return base.logits.reshape(num_states, -1, base.logits.shape[-1]).squeeze(1)
    if family == "bernoulli":
        return base.logits.reshape(num_states, -1)
    raise TypeError(
        f"TRPOLoss: no closed-form Fisher for {type(dist).__name__}; use TrustRegionUpdate(..., fvp='kl_hessian')"
    )


def _to_batch(value: torch.Tensor, batch_ndim: int) -> torch.Tensor:
    """Sums a per-part value over its dimensions beyond the composite's batch dimensions."""
    return value.flatten(batch_ndim, -1).sum(-1) if value.dim() > batch_ndim else value


def _categorical_kl(old: D.Distribution, new: D.Distribution) -> torch.Tensor:
    """KL between two categoricals from their normalised logits, written without the boolean-mask
    indexing torch's own version uses (which vmap cannot batch and which syncs on CUDA)."""
    old_logp, new_logp = old.logits, new.logits
    terms = old_logp.exp() * (old_logp - new_logp)
    # a zero-probability class contributes nothing, even where the new policy also gives it -inf;
    # a NaN stays NaN (the step is then rejected), never reads as a zero-probability class
    return torch.where(old_logp == -torch.inf, torch.zeros_like(terms), terms).sum(-1)


def _bernoulli_kl(old: D.Bernoulli, new: D.Bernoulli) -> torch.Tensor:
    """KL between Bernoullis from their logits: torch's version assigns through boolean masks,
    which vmap (the line search's candidates) cannot batch."""
    # log p = -softplus(-l), log(1 - p) = -softplus(l)
    p = torch.sigmoid(old.logits)
    softplus = torch.nn.functional.softplus
    return p * (softplus(-new.logits) - softplus(-old.logits)) + (1 - p) * (softplus(new.logits) - softplus(old.logits))


def analytic_kl(old: D.Distribution, new: D.Distribution) -> torch.Tensor:
    """KL(old ‖ new) per batch element, in closed form; NotImplementedError when torch has none."""
    if isinstance(old, CompositeDistribution):
        ndim = len(old.batch_shape)
        return sum(_to_batch(analytic_kl(part, new.dists[name]), ndim) for name, part in old.dists.items())
    if isinstance(old, TanhNormal) and isinstance(new, TanhNormal):
        # the same tanh (and low/high affine) maps both base Normals: KL is invariant under a bijection
        return D.kl_divergence(old.base_dist, new.base_dist)
    reinterpreted = 0
    while isinstance(old, D.Independent) and isinstance(new, D.Independent):
        reinterpreted += old.reinterpreted_batch_ndims
        old, new = old.base_dist, new.base_dist
    if isinstance(old, _CATEGORICALS) and isinstance(new, _CATEGORICALS):
        kl = _categorical_kl(old, new)
    elif isinstance(old, D.Bernoulli) and isinstance(new, D.Bernoulli):
        kl = _bernoulli_kl(old, new)
    else:
        kl = D.kl_divergence(old, new)
    return kl.flatten(-reinterpreted).sum(-1) if reinterpreted else kl


def joint_log_prob(dist: D.Distribution, action) -> torch.Tensor:
    """log π(a|s) of the whole action; for a composite the sum over its parts (``action`` then a
    TensorDict holding each part's sample under its key), whatever the tensordict aggregation flag."""
    if isinstance(dist, CompositeDistribution):
        ndim = len(dist.batch_shape)
        return sum(_to_batch(part.log_prob(action.get(name)), ndim) for name, part in dist.dists.items())
    return dist.log_prob(action)


def entropy(dist: D.Distribution) -> torch.Tensor:
    """The closed-form entropy; NotImplementedError when a distribution (or a composite's part) has none."""
    if isinstance(dist, CompositeDistribution):
        ndim = len(dist.batch_shape)
        return sum(_to_batch(part.entropy(), ndim) for part in dist.dists.values())
    return dist.entropy()


def action_dims(dist: D.Distribution) -> int:
    """The number of independent action dimensions (1 per categorical, however it is encoded); a
    composite's is the sum of its parts'."""
    if isinstance(dist, CompositeDistribution):
        return sum(_part_action_dims(part, len(dist.batch_shape)) for part in dist.dists.values())
    return _part_action_dims(dist, len(dist.batch_shape))


def _part_action_dims(dist: D.Distribution, batch_ndim: int) -> int:
    base = _unwrap(dist)
    if isinstance(base, _CATEGORICALS):
        # a categorical's event (an index or a one-hot vector) is one action dimension
        return max(1, base.batch_shape[batch_ndim:].numel())
    return max(1, dist.batch_shape[batch_ndim:].numel() * dist.event_shape.numel())


# ------------------------------------------------------------------------------------ construction time
_CLOSED_FORM_CLASSES = (D.Normal, TanhNormal, D.Categorical, D.OneHotCategorical, D.Bernoulli)


def _probabilistic_module(actor) -> Any:
    """The ProbabilisticTensorDictModule that builds the actor's distribution, or None."""
    modules = [actor] if isinstance(actor, ProbabilisticTensorDictModule) else []
    modules += [m for m in actor.modules() if isinstance(m, ProbabilisticTensorDictModule)]
    return modules[-1] if modules else None


def actor_keys(actor) -> tuple[list, list]:
    """``(log_prob_keys, dist_sample_keys)`` of ``actor``, read under the log-prob aggregation flag
    its distribution module was built with (tensordict refuses to answer under the other one)."""
    prob = _probabilistic_module(actor)
    at_init = getattr(prob, "_composite_lp_aggreate_at_init", None)
    if at_init is None:
        return list(getattr(actor, "log_prob_keys", [])), list(getattr(actor, "dist_sample_keys", []))
    with set_composite_lp_aggregate(at_init):
        return list(getattr(actor, "log_prob_keys", [])), list(getattr(actor, "dist_sample_keys", []))


def _class_kind(cls, kwargs: dict) -> tuple[str, str]:
    """``(kind, name)``: kind ``"closed"`` (a closed-form Fisher), ``"kl"`` (a KL in torch's registry
    only), ``"no_kl"`` or ``"unknown"`` (a factory function, a generic ``Independent``: decided on
    the first batch)."""
    name = getattr(cls, "__name__", repr(cls))
    if not isinstance(cls, type):
        return "unknown", name
    if issubclass(cls, CompositeDistribution):
        parts = [_class_kind(part, {}) for part in dict(kwargs.get("distribution_map", {})).values()]
        kinds = [kind for kind, _ in parts]
        name = f"{name}({', '.join(part for _, part in parts)})"  # the refusal names the parts
        for kind in ("unknown", "no_kl", "kl"):
            if kind in kinds:
                return kind, name
        return "closed", name
    if issubclass(cls, _CLOSED_FORM_CLASSES):
        return "closed", name
    if issubclass(cls, D.Independent):
        # torchrl's IndependentNormal; any other Independent is known once it is built
        return ("closed", name) if issubclass(cls, IndependentNormal) else ("unknown", name)
    if issubclass(cls, D.Distribution):
        has_kl = D.kl._dispatch_kl(cls, cls) is not NotImplemented
        return ("kl" if has_kl else "no_kl"), name
    return "unknown", name


def resolve_fvp(where: str, actor, fvp: str | None, kl_estimate: str) -> tuple[str, bool]:
    """The Fisher-vector product for ``actor``'s distribution, decided at construction.

    ``fvp=None`` (the default) takes ``"gauss_newton"`` when the distribution has a closed-form
    Fisher and ``"kl_hessian"`` when it only has a KL (saying so once, in a log line); an explicit
    ``"gauss_newton"`` for a distribution without a closed form, or a distribution with no KL
    under ``kl_estimate="analytic"``, is a ValueError naming the distribution and the fix.

    Returns ``(fvp, automatic)``: ``automatic`` is True when the distribution is only known once a
    batch is seen (a factory function) and the default may still turn into ``"kl_hessian"`` then.
    """
    if fvp is not None:
        check_choice(where, "fvp", fvp, ("gauss_newton", "kl_hessian"))
    prob = _probabilistic_module(actor)
    cls = getattr(prob, "distribution_class", None)
    kwargs = dict(getattr(prob, "distribution_kwargs", None) or {})
    kind, name = _class_kind(cls, kwargs) if cls is not None else ("unknown", "?")
    if kind == "no_kl" and kl_estimate != "sampled":
        raise ValueError(
            f"{where}: torch has no KL divergence for the actor's {name}; pass TRPOLoss(..., "
            "kl_estimate='sampled') to use a sampled estimate, or use a distribution with a KL"
        )
    if fvp is None:
        if kind in ("kl", "no_kl"):
            _log.info(
                "%s: %s has no closed-form Fisher; the step takes fvp='kl_hessian' (double backward through the KL)",
                where,
                name,
            )
            return "kl_hessian", False
        return "gauss_newton", kind == "unknown"
    if fvp == "gauss_newton" and kind in ("kl", "no_kl"):
        raise ValueError(
            f"{where}: fvp='gauss_newton' needs a closed-form Fisher (Gaussian, TanhNormal, categorical, "
            f"Bernoulli or a composite of them), not {name}; use fvp='kl_hessian' (or leave fvp unset)"
        )
    return fvp, False
