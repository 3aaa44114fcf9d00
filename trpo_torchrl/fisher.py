"""Fisher-vector products of a policy, on flat parameter vectors, for TRPO's conjugate gradient.

Two ways to get ``(F + damping I) v`` where F is the Hessian of the mean KL(pi_old || pi_theta)
at theta = theta_old (the Fisher information of the policy):

* :func:`kl_fisher_vector_product` differentiates the KL twice (forward-over-reverse). It needs
  only a scalar KL function, so it works for any distribution.
* :func:`gauss_newton_fisher_vector_product` uses F = J^T M J / N, J the Jacobian of the
  distribution parameters w.r.t. theta and M the analytic Fisher of the distribution in those
  parameters: one jvp and one vjp through the policy, no second derivative of the network. It
  equals the KL Hessian at theta_old, where the KL's first derivative w.r.t. the distribution
  parameters vanishes.

Both return a function that accepts ``v`` of shape ``[n]`` or ``[B, n]`` (B vectors in one
vmapped call, the shape :func:`trpo_torchrl.ops.conjugate_gradient` passes) and never reads a
tensor back to the host. Subsampling the states (:func:`subsample_indices`) is left to the
caller, who builds ``kl_fn`` / ``dist_fn`` on the chosen states.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from numbers import Real

import torch
from torch.func import grad, jvp, linearize, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["gauss_newton_fisher_vector_product", "kl_fisher_vector_product", "subsample_indices"]

FAMILIES = ("normal", "categorical", "bernoulli")


def _check_theta(theta: torch.Tensor, where: str) -> torch.Tensor:
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"{where}: theta must be a torch.Tensor, got {type(theta).__name__}")
    if theta.dim() != 1 or not theta.is_floating_point():
        raise ValueError(
            f"{where}: theta must be a 1-D floating-point parameter vector, got shape "
            f"{tuple(theta.shape)} and dtype {theta.dtype}"
        )
    return theta.detach()


def _check_damping(damping, where: str) -> float:
    if isinstance(damping, bool) or not isinstance(damping, Real) or not damping >= 0:
        raise ValueError(f"{where}: damping must be a number >= 0, got {damping!r}")
    return float(damping)


def check_product_vector(v, theta: torch.Tensor, where: str) -> None:
    """What every Fisher-vector product accepts: ``v`` of shape ``[n]`` or ``[B, n]``, θ's dtype and device."""
    n = theta.numel()
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{where}: v must be a torch.Tensor, got {type(v).__name__}")
    if v.dim() not in (1, 2) or v.shape[-1] != n:
        raise ValueError(f"{where}: v must have shape [{n}] or [B, {n}], got {tuple(v.shape)}")
    if v.dtype != theta.dtype or v.device != theta.device:
        raise ValueError(f"{where}: v is {v.dtype} on {v.device} but theta is {theta.dtype} on {theta.device}")


def _make_fvp(single: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, damping: float, where: str):
    """Wraps a one-vector product into the public [n] / [B, n] function with damping."""
    batched = vmap(single)

    def fvp(v: torch.Tensor) -> torch.Tensor:
        check_product_vector(v, theta, where)
        # no graph is needed around the products (the transforms inside do their own
        # differentiation); this also keeps parameters the closures capture out of it
        with torch.no_grad():
            out = single(v) if v.dim() == 1 else batched(v)
            if damping:
                out = out + damping * v
        return out

    return fvp


def kl_fisher_vector_product(
    kl_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, *, damping: float = 0.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (F + damping I) v`` with F the Hessian of ``kl_fn`` at ``theta``, by double
    differentiation (forward-mode jvp of the reverse-mode gradient).

    Args:
        kl_fn: ``theta -> scalar`` mean KL(pi_old || pi_theta) over the states, with pi_old held
            fixed (computed from detached tensors), so its gradient is zero at ``theta``. Must
            be written with ``torch.func``-compatible ops (e.g. ``torch.func.functional_call``).
        theta: the flat parameter vector ``[n]`` at which F is taken (theta_old).
        damping: added multiple of the identity (>= 0).

    Returns:
        ``fvp(v)`` for ``v`` of shape ``[n]`` or ``[B, n]`` (vmapped), same shape out.
    """
    where = "kl_fisher_vector_product"
    theta = _check_theta(theta, where)
    damping = _check_damping(damping, where)
    if not callable(kl_fn):
        raise TypeError(f"{where}: kl_fn must be callable")
    grad_kl = grad(kl_fn)

    def single(v: torch.Tensor) -> torch.Tensor:
        # forward-over-reverse: one pass that carries tangents through the gradient computation,
        # cheaper than differentiating the gradient a second time in reverse mode
        return jvp(grad_kl, (theta,), (v,))[1]

    return _make_fvp(single, theta, damping, where)


def _normal_metric(out, where: str, weight: float):
    if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(t, torch.Tensor) for t in out):
        raise ValueError(f"{where}: for family 'normal', dist_fn must return a tuple (loc, scale) of tensors")
    loc, scale = out
    if loc.dim() != 2 or scale.shape != loc.shape:
        raise ValueError(f"{where}: loc and scale must both be [N, d], got {tuple(loc.shape)} and {tuple(scale.shape)}")
    n_states = loc.shape[0]
    # Fisher of N(loc, scale^2) per action dimension: 1/scale^2 for loc, 2/scale^2 for scale;
    # divided by N because F is the Hessian of the *mean* KL over states
    w_loc = weight / (scale.detach() ** 2 * n_states)
    w_scale = 2.0 * w_loc

    def metric(tangent):
        d_loc, d_scale = tangent
        return (d_loc * w_loc, d_scale * w_scale)

    return metric


def _categorical_metric(out, where: str, weight: float):
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{where}: for family 'categorical', dist_fn must return logits [N, k] (or [N, m, k] for m categoricals), got {shape}"
        )
    n_states = out.shape[0]
    # a masked class (logit -inf) has p = 0: its row and column of the metric vanish
    probs = torch.softmax(out.detach(), dim=-1)

    def metric(d_logits):
        # (diag(p) - p p^T) u without forming the k x k matrix
        pu = probs * d_logits
        return (pu - probs * pu.sum(-1, keepdim=True)) * (weight / n_states)

    return metric


def _bernoulli_metric(out, where: str, weight: float):
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{where}: for family 'bernoulli', dist_fn must return logits [N, d], got {shape}")
    p = torch.sigmoid(out.detach())
    # Fisher of a Bernoulli in its logit: p (1 - p), per independent dimension
    w = p * (1 - p) * (weight / out.shape[0])

    def metric(d_logits):
        return d_logits * w

    return metric


_METRICS = {"normal": _normal_metric, "categorical": _categorical_metric, "bernoulli": _bernoulli_metric}


def _metric(family, out, where: str, weight: float):
    """The metric M of one family, or for a tuple of families (a composite) the block-diagonal
    metric over the tuple of their outputs."""
    if isinstance(family, str):
        return _METRICS[family](out, where, weight)
    if not isinstance(out, (tuple, list)) or len(out) != len(family):
        raise ValueError(f"{where}: for families {family}, dist_fn must return a tuple of {len(family)} parts")
    metrics = [_METRICS[f](o, where, weight) for f, o in zip(family, out)]
    return lambda tangent: tuple(m(t) for m, t in zip(metrics, tangent))


def _transpose_of_pullback(pullback, out):
    """``v -> J v`` as the vjp of the (linear) pullback ``u -> J^T u``.

    ``torch.func.jvp`` would run the network's forward pass again, with tangents, for every
    product. The pullback is linear in its cotangent, so its own vjp, recorded once here, is
    exactly ``J`` (the "double-vjp" / transpose trick): each product then runs one pass through
    the saved backward graph and reuses the activations of the one forward pass, with no tracing
    up front (``benchmarks/cg.py`` times the product forms). Same J v up to float rounding.
    """
    leaves, spec = tree_flatten(out)
    zeros = tuple(torch.zeros_like(leaf) for leaf in leaves)

    def pullback_of(*cotangent):
        return pullback(tree_unflatten(list(cotangent), spec))[0]

    _, transpose = vjp(pullback_of, *zeros)

    def push(v: torch.Tensor):
        return tree_unflatten(list(transpose(v)), spec)

    return push


def gauss_newton_fisher_vector_product(
    dist_fn: Callable[[torch.Tensor], object],
    theta: torch.Tensor,
    family: str,
    *,
    damping: float = 0.0,
    kl_scale: float = 1.0,
    use_linearize: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (kl_scale · J^T M J / N + damping I) v``: the Fisher of the policy at ``theta`` through
    two passes over the network's recorded graph, ``J v`` and ``J^T (M J v)`` (Gauss-Newton form;
    exact at theta_old).

    Args:
        dist_fn: ``theta -> distribution parameters`` over N states: ``(loc, scale)``, each
            ``[N, d]``, for ``family="normal"`` (diagonal Gaussian, scale = standard
            deviation); ``logits [N, ..., k]`` for ``family="categorical"`` (several categoricals
            per state keep their own class dimension); ``logits [N, d]`` for ``family="bernoulli"``
            (independent Bernoullis); for a tuple of families (a composite action), the tuple of
            each part's parameters, whose Fishers add up.
        theta: the flat parameter vector ``[n]`` (theta_old).
        family: ``"normal"``, ``"categorical"``, ``"bernoulli"`` or a tuple of them.
        damping: added multiple of the identity (>= 0).
        kl_scale: the factor the KL (hence its Fisher) is taken with, e.g. ``1/d`` for a KL averaged
            over ``d`` action dimensions (> 0). Default ``1``.
        use_linearize: record the jvp with ``torch.func.linearize`` (traced) instead of the
            transpose of the recorded pullback (the default, see ``_transpose_of_pullback``).
            Its products are about as cheap, but the tracing costs tens of products' worth of
            time up front (``benchmarks/cg.py``). Default ``False``.

    Returns:
        ``fvp(v)`` for ``v`` of shape ``[n]`` or ``[B, n]`` (vmapped), same shape out.

    The forward pass and its reverse-mode graph are recorded once, here; each product then costs
    one pass through the recorded graph for ``J v`` (the transpose of the pullback) and one
    backward pass for ``J^T (M J v)`` (the pullback), with no forward pass repeated.
    """
    where = "gauss_newton_fisher_vector_product"
    theta = _check_theta(theta, where)
    damping = _check_damping(damping, where)
    families = (family,) if isinstance(family, str) else tuple(family) if isinstance(family, (tuple, list)) else None
    if not families or any(f not in FAMILIES for f in families):
        raise ValueError(f"{where}: family must be one of {FAMILIES} or a tuple of them, got {family!r}")
    if not callable(dist_fn):
        raise TypeError(f"{where}: dist_fn must be callable")
    with torch.no_grad():
        out, pullback = vjp(dist_fn, theta)
    if not kl_scale > 0:
        raise ValueError(f"{where}: kl_scale must be > 0, got {kl_scale!r}")
    metric = _metric(family if isinstance(family, str) else families, out, where, float(kl_scale))
    if use_linearize:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's constant folding inside linearize warns about its own graph bookkeeping on
            # every call; it says nothing the user can act on
            warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node", category=UserWarning)
            # and its tracing touches torch.jit.script, whose deprecation notice is torch's own business
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
            _, push = linearize(dist_fn, theta)
    else:
        push = _transpose_of_pullback(pullback, out)

    out_spec = tree_flatten(out)[1]

    def single(v: torch.Tensor) -> torch.Tensor:
        # J v in the structure dist_fn returns (tuples, not the lists linearize may give)
        jv = tree_unflatten(tree_flatten(push(v))[0], out_spec)
        return pullback(metric(jv))[0]

    return _make_fvp(single, theta, damping, where)


def subsample_indices(num_states: int, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A sorted random subset of ``ceil(fraction * num_states)`` state indices (at least one),
    for Fisher-vector products on part of the batch. The indices are on the generator's device
    (CPU without one); sorting keeps the gathered states in memory order.
    """
    if isinstance(num_states, bool) or not isinstance(num_states, int) or num_states < 1:
        raise ValueError(f"subsample_indices: num_states must be an int >= 1, got {num_states!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
        raise ValueError(f"subsample_indices: fraction must be in (0, 1], got {fraction!r}")
    k = max(1, min(num_states, math.ceil(fraction * num_states)))
    device = generator.device if generator is not None else None
    perm = torch.randperm(num_states, generator=generator, device=device)
    return perm[:k].sort().values
