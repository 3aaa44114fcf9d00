"""Python face of the batched conjugate-gradient solver: argument checks, the masked loop, and
dispatch of its per-iteration vector work to ``trpo_torchrl::cg_step`` (or the reference).

The loop runs exactly ``max_iter`` iterations. Convergence and breakdown are per-system masks
kept on the device, so nothing in the loop reads a tensor back to the host: the solve can be
captured in a CUDA graph and many systems can be solved in one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import NamedTuple

import torch

from . import reference
from ._extension import compiled_op, register_fake

__all__ = ["CGInfo", "conjugate_gradient"]


class CGInfo(NamedTuple):
    """Per-system diagnostics of :func:`conjugate_gradient` (shape ``[B]``, or ``[]`` for 1-D ``b``)."""

    iterations: torch.Tensor
    """int64: CG steps taken before the system converged, broke down, or ran out of iterations."""
    residual_norm: torch.Tensor
    """||b - A x|| as tracked by the recurrence, at the returned x."""
    breakdown: torch.Tensor
    """bool: p^T A p <= 0 or non-finite was met; x is the last iterate before it."""
    converged: torch.Tensor
    """bool: ||r||^2 <= residual_tol was reached."""


# systems one call of the compiled step takes on a device (CUDA: the batch is the grid's y dimension)
MAX_SYSTEMS_PER_CALL = {"cuda": 65_535}


def _in_slices(step, limit: int):
    """``step`` over row slices of at most ``limit`` systems: views of the contiguous per-system
    tensors, so the op's in-place writes land in the whole batch."""

    def sliced(x, r, p, Ap, rdotr, iterations, converged, breakdown, tol):
        for start in range(0, x.shape[0], limit):
            rows = slice(start, start + limit)
            step(
                x[rows],
                r[rows],
                p[rows],
                Ap[rows].contiguous(),
                rdotr[rows],
                iterations[rows],
                converged[rows],
                breakdown[rows],
                tol,
            )

    return sliced


def _matvec(matvec: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, squeeze: bool) -> torch.Tensor:
    """Calls the user's operator and checks what it returns (shape/dtype/device are metadata: no sync)."""
    out = matvec(v[0] if squeeze else v)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"conjugate_gradient: matvec must return a torch.Tensor, got {type(out).__name__}")
    want = v.shape[1:] if squeeze else v.shape
    if out.shape != want:
        raise ValueError(
            f"conjugate_gradient: matvec returned shape {tuple(out.shape)} for an input of shape "
            f"{tuple(want)}; it must return the input's shape"
        )
    if out.dtype != v.dtype or out.device != v.device:
        raise ValueError(
            f"conjugate_gradient: matvec returned {out.dtype} on {out.device} for an input of "
            f"{v.dtype} on {v.device}; it must keep dtype and device"
        )
    out = out.detach().reshape(v.shape).contiguous()
    if out.untyped_storage().data_ptr() == v.untyped_storage().data_ptr():
        # an operator that hands back its input (the identity, a view of it) would make the op's
        # read-only Ap alias the p it overwrites; a copy keeps the two apart
        out = out.clone()
    return out


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    max_iter: int = 10,
    residual_tol: float = 1e-10,
    x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, CGInfo]:
    """Solves ``A x = b`` for symmetric positive-definite ``A`` by conjugate gradient, batched
    and without host synchronisation.

    Args:
        matvec: ``v -> A v``. Called with ``[B, n]`` when ``b`` is ``[B, n]`` (row i belongs to
            system i and must not mix with the other rows) and with ``[n]`` when ``b`` is ``[n]``.
            It must not modify its argument.
        b: right-hand sides, ``[B, n]`` or ``[n]``, float32 or float64.
        max_iter: the number of iterations run (>= 1). Every iteration calls ``matvec`` once on
            the whole batch; systems that have stopped are passed as zero rows.
        residual_tol: a system stops when its squared residual norm ``||r||^2`` is at most this
            (the convention of sb3-contrib and the original TRPO code).
        x0: starting point (default zero, which costs no matvec).

    Returns:
        ``(x, info)``: ``x`` of ``b``'s shape and a :class:`CGInfo`. A system whose curvature
        ``p^T A p`` turns non-positive or non-finite is frozen at its last good iterate and
        flagged in ``info.breakdown``; its ``x`` stays finite.

    The iteration is the same on every backend; its vector work (dots, axpys, masks) runs in the
    compiled ``trpo_torchrl::cg_step`` op when one is loaded for ``b``'s device, otherwise in the
    pure-PyTorch reference. The result is not differentiable (the solve runs under ``no_grad``).

    Example:
        >>> M = torch.randn(4, 6, 6, dtype=torch.float64)
        >>> A = M @ M.mT + torch.eye(6, dtype=torch.float64)
        >>> b = torch.randn(4, 6, dtype=torch.float64)
        >>> x, info = conjugate_gradient(lambda v: (A @ v[..., None])[..., 0], b, max_iter=6)
        >>> torch.allclose(x, torch.linalg.solve(A, b))
        True
    """
    if not callable(matvec):
        raise TypeError(f"conjugate_gradient: matvec must be callable, got {type(matvec).__name__}")
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"conjugate_gradient: b must be a torch.Tensor, got {type(b).__name__}")
    if b.dim() not in (1, 2):
        raise ValueError(f"conjugate_gradient: b must be 1-D [n] or 2-D [B, n], got shape {tuple(b.shape)}")
    if b.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"conjugate_gradient: b must be float32 or float64, got {b.dtype}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"conjugate_gradient: max_iter must be an int >= 1, got {max_iter!r}")
    if isinstance(residual_tol, bool) or not isinstance(residual_tol, Real) or not residual_tol >= 0:
        raise ValueError(f"conjugate_gradient: residual_tol must be a number >= 0, got {residual_tol!r}")
    if x0 is not None:
        if not isinstance(x0, torch.Tensor):
            raise TypeError(f"conjugate_gradient: x0 must be a torch.Tensor or None, got {type(x0).__name__}")
        if x0.shape != b.shape or x0.dtype != b.dtype or x0.device != b.device:
            raise ValueError(
                f"conjugate_gradient: x0 ({tuple(x0.shape)}, {x0.dtype}, {x0.device}) must match b "
                f"({tuple(b.shape)}, {b.dtype}, {b.device})"
            )
    tol = float(residual_tol)
    squeeze = b.dim() == 1

    with torch.no_grad():
        b2 = b.detach().reshape(1, -1) if squeeze else b.detach()
        if x0 is None:
            x = torch.zeros_like(b2, memory_format=torch.contiguous_format)
            r = b2.clone(memory_format=torch.contiguous_format)
        else:
            x = x0.detach().reshape(b2.shape).clone(memory_format=torch.contiguous_format)
            r = (b2 - _matvec(matvec, x, squeeze)).contiguous()
        rdotr = (r * r).sum(-1)
        iterations = torch.zeros(b2.shape[0], dtype=torch.long, device=b.device)
        converged = rdotr <= tol
        breakdown = ~torch.isfinite(rdotr)  # a non-finite b (or A x0) cannot be solved for
        active = ~(converged | breakdown)
        p = torch.where(active[:, None], r, torch.zeros_like(r))

        step = compiled_op("cg_step", b.device, "conjugate_gradient")
        if step is None:
            step = reference.cg_step
        else:
            limit = MAX_SYSTEMS_PER_CALL.get(b.device.type)
            if limit is not None and b2.shape[0] > limit:
                step = _in_slices(step, limit)
        for _ in range(max_iter):
            Ap = _matvec(matvec, p, squeeze)
            step(x, r, p, Ap, rdotr, iterations, converged, breakdown, tol)

        info = CGInfo(iterations, rdotr.sqrt(), breakdown, converged)
        if squeeze:
            x = x[0]
            info = CGInfo(*(t[0] for t in info))
    return x, info


@register_fake("cg_step")
def _cg_step_fake(x, r, p, Ap, rdotr, iterations, converged, breakdown, residual_tol):
    # the op only writes into its (a!)..(g!) arguments: no outputs to describe
    torch._check(x.dim() == 2, lambda: "trpo_torchrl::cg_step: x must be 2-D [B, n]")
    return None
