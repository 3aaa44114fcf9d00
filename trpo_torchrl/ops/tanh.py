"""Python face of ``trpo_torchrl::tanh``: the project's fast float32 CPU tanh (at most 2.25 ulp from
the exact value; ``benchmarks/tanh.py`` times it against ATen's), ``torch.tanh`` everywhere else."""

from __future__ import annotations

import torch

from ._extension import compiled_op, register_fake

__all__ = ["tanh", "tanh_"]


def _kernel(x, op: str):
    """Checks ``x``; the compiled op when it takes ``x`` (float32 on a device it has), else None."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"{op}: the fast tanh has no gradient; call it under torch.no_grad() or use torch.{op}")
    if x.dtype != torch.float32:
        return None  # the kernel is float32 only: other dtypes are torch.tanh's, and no reason to warn
    return compiled_op(op, x.device, op)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)`` as a new (contiguous) tensor, not differentiable (for forward passes under no_grad).

    float32 CPU tensors go to the compiled kernel; other dtypes and devices, and everything when the
    extension is not built, to ``torch.tanh`` (the reference: the two agree within 2.25 ulp).
    """
    op = _kernel(x, "tanh")
    if op is not None:
        return op(x)
    return torch.tanh(x)


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """``tanh`` in place (returns ``x``): for a fresh buffer, e.g. a layer's pre-activation, saving
    the allocation of a second one (a large new buffer costs page faults on every call)."""
    op = _kernel(x, "tanh_")
    if op is not None:
        op(x)
        # the kernel writes through the data pointer: tell autograd x changed, as x.tanh_() would
        torch.autograd.graph.increment_version(x)
        return x
    return x.tanh_()


@register_fake("tanh")
def _tanh_fake(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@register_fake("tanh_")
def _tanh_inplace_fake(x):
    return x
