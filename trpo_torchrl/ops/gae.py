"""Python face of the GAE scan: argument checks, layout, dispatch, fake kernel.

``generalized_advantage_estimate`` has the signature and results of
``torchrl.objectives.value.functional.generalized_advantage_estimate``; it runs the compiled
``trpo_torchrl::gae`` op when it can and the pure-PyTorch reference otherwise.
"""

from __future__ import annotations

from numbers import Real

import torch

from . import reference
from ._extension import compiled_op, register_fake

__all__ = ["generalized_advantage_estimate"]

_VALUE_ARGS = ("state_value", "next_state_value", "reward")
_FLAG_ARGS = ("done", "terminated")


def _check_and_normalize(gamma, lmbda, state_value, next_state_value, reward, done, terminated, time_dim):
    """Validates the inputs; returns (gamma, lmbda, done, terminated, time_dim) ready for the scan.

    Shapes must match exactly: a silent broadcast would change the result.
    """
    values = dict(zip(_VALUE_ARGS, (state_value, next_state_value, reward)))
    for name, t in values.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"generalized_advantage_estimate: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(
                f"generalized_advantage_estimate: {name} must be a floating-point tensor, got dtype {t.dtype}"
            )
    shape, dtype, device = state_value.shape, state_value.dtype, state_value.device
    for name, t in values.items():
        if t.shape != shape:
            raise ValueError(
                f"generalized_advantage_estimate: {name} has shape {tuple(t.shape)} but state_value has "
                f"shape {tuple(shape)}; all inputs must have the same [*B, T, *F] shape"
            )
        if t.dtype != dtype:
            raise ValueError(
                f"generalized_advantage_estimate: {name} has dtype {t.dtype} but state_value has dtype {dtype}"
            )
        if t.device != device:
            raise ValueError(f"generalized_advantage_estimate: {name} is on {t.device} but state_value is on {device}")
    if terminated is None:
        terminated = done
    flags = {}
    for name, t in zip(_FLAG_ARGS, (done, terminated)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"generalized_advantage_estimate: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != shape:
            raise ValueError(
                f"generalized_advantage_estimate: {name} has shape {tuple(t.shape)} but state_value has "
                f"shape {tuple(shape)}"
            )
        if t.device != device:
            raise ValueError(f"generalized_advantage_estimate: {name} is on {t.device} but state_value is on {device}")
        if t.is_floating_point() or t.is_complex():
            raise ValueError(
                f"generalized_advantage_estimate: {name} must be a bool or integer tensor, got dtype {t.dtype}"
            )
        # integer flags: any nonzero value means set
        flags[name] = t if t.dtype == torch.bool else t != 0
    ndim = state_value.ndim
    if ndim < 1:
        raise ValueError("generalized_advantage_estimate: inputs must have at least one (time) dimension")
    if not isinstance(time_dim, int) or isinstance(time_dim, bool) or not -ndim <= time_dim < ndim:
        raise ValueError(
            f"generalized_advantage_estimate: time_dim={time_dim} is out of range for inputs of shape {tuple(shape)}"
        )
    coeffs = []
    for name, c in (("gamma", gamma), ("lmbda", lmbda)):
        if isinstance(c, torch.Tensor):
            if c.is_complex():
                raise ValueError(f"generalized_advantage_estimate: {name} must be real, got dtype {c.dtype}")
            if c.numel() != 1 and c.device != device:
                raise ValueError(
                    f"generalized_advantage_estimate: {name} is on {c.device} but state_value is on {device}"
                )
            try:
                c = torch.broadcast_to(c.to(device=device, dtype=dtype), shape)
            except RuntimeError:
                raise ValueError(
                    f"generalized_advantage_estimate: {name} of shape {tuple(c.shape)} does not broadcast to the "
                    f"inputs' shape {tuple(shape)}"
                ) from None
        elif isinstance(c, Real) and not isinstance(c, bool):
            if not 0 <= c <= 1:
                raise ValueError(f"generalized_advantage_estimate: {name} must be in [0, 1], got {c!r}")
            c = torch.full((), float(c), dtype=dtype, device=device).expand(shape)
        else:
            raise TypeError(
                f"generalized_advantage_estimate: {name} must be a float or a tensor, got {type(c).__name__}"
            )
        coeffs.append(c)
    return coeffs[0], coeffs[1], flags["done"], flags["terminated"], time_dim % ndim


def _to_rows(t: torch.Tensor, time_dim: int) -> torch.Tensor:
    """[*B, T, *F] -> [rows, T]: a view whenever the strides allow, a copy otherwise."""
    return t.movedim(time_dim, -1).reshape(-1, t.shape[time_dim])


def _from_rows(t: torch.Tensor, shape: torch.Size, time_dim: int) -> torch.Tensor:
    moved = shape[:time_dim] + shape[time_dim + 1 :] + shape[time_dim : time_dim + 1]
    return t.reshape(moved).movedim(-1, time_dim)


def _needs_autograd(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def generalized_advantage_estimate(
    gamma: float | torch.Tensor,
    lmbda: float | torch.Tensor,
    state_value: torch.Tensor,
    next_state_value: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
    terminated: torch.Tensor | None = None,
    *,
    time_dim: int = -2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimate (Schulman et al., 2016, arXiv:1506.02438) by a fused scan.

    Same signature and results as TorchRL's ``generalized_advantage_estimate``:
    delta_t = r_t + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t) and
    A_t = delta_t + gamma lmbda (1 - done_t) A_{t+1}, so a truncated step (done, not
    terminated) bootstraps from V(s_{t+1}) and cuts the trace.

    Args:
        gamma, lmbda: floats, or tensors that broadcast to the inputs' shape (per-step values).
        state_value, next_state_value, reward: floating tensors of one shape ``[*B, T, *F]``.
        done, terminated: bool (or integer, nonzero = set) tensors of that shape;
            ``terminated`` defaults to ``done``.
        time_dim: the time dimension (default -2).

    Returns:
        ``(advantage, value_target)``, each of the inputs' shape and dtype.

    Uses the compiled op when it is loaded and has a kernel for the inputs' device, and the
    pure-PyTorch reference otherwise — also when an input requires grad (the op has no backward).
    """
    gamma_t, lmbda_t, done_b, term_b, tdim = _check_and_normalize(
        gamma, lmbda, state_value, next_state_value, reward, done, terminated, time_dim
    )
    shape = state_value.shape
    args = [_to_rows(t, tdim) for t in (gamma_t, lmbda_t, state_value, next_state_value, reward, done_b, term_b)]
    op = compiled_op("gae", state_value.device, "generalized_advantage_estimate")
    if op is not None and not _needs_autograd(*args[:5]):
        advantage, value_target = op(*args)
    else:
        advantage, value_target = _reference_rows(*args)
    return _from_rows(advantage, shape, tdim), _from_rows(value_target, shape, tdim)


def _reference_rows(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference scan, accumulating half and bfloat16 in float32 as the kernels do."""
    dtype = args[2].dtype
    if dtype in (torch.float16, torch.bfloat16):
        up = [a.float() if a.is_floating_point() else a for a in args]
        adv, vt = reference.gae_scan(*up)
        return adv.to(dtype), vt.to(dtype)
    return reference.gae_scan(*args)


@register_fake("gae")
def _gae_fake(gamma, lmbda, state_value, next_state_value, reward, done, terminated):
    torch._check(state_value.dim() == 2, lambda: "trpo_torchrl::gae: state_value must be 2-D [rows, T]")
    return torch.empty_like(state_value, memory_format=torch.contiguous_format), torch.empty_like(
        state_value, memory_format=torch.contiguous_format
    )
