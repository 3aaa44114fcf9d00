"""Python face of ``trpo_torchrl::tanh``: the project's fast float32 CPU tanh (about 4–5× ATen's
on these machines, at most 2.25 ulp from the exact value), ``torch.tanh`` everywhere else."""

from __future__ import annotations

import torch

from ._extension import has_kernel

__all__ = ["tanh", "tanh_"]


def _use_kernel(x, op: str) -> bool:
    """Checks ``x``; True when the compiled kernel takes it (float32 on a device it has)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"{op}: the fast tanh has no gradient; call it under torch.no_grad() or use torch.{op}")
    return x.dtype == torch.float32 and has_kernel(op, x.device)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)`` as a new (contiguous) tensor, not differentiable (for forward passes under no_grad).

    float32 CPU tensors go to the compiled kernel; other dtypes and devices, and everything when the
    extension is not built, to ``torch.tanh`` (the reference: the two agree within 2.25 ulp).
    """
    if _use_kernel(x, "tanh"):
        return torch.ops.trpo_torchrl.tanh(x)
    return torch.tanh(x)


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """``tanh`` in place (returns ``x``): for a fresh buffer, e.g. a layer's pre-activation, saving
    the allocation of a second one (a large new buffer costs page faults on every call)."""
    if _use_kernel(x, "tanh_"):
        torch.ops.trpo_torchrl.tanh_(x)
        # the kernel writes through the data pointer: tell autograd x changed, as x.tanh_() would
        torch.autograd.graph.increment_version(x)
        return x
    return x.tanh_()


if has_kernel("tanh", torch.device("cpu")):

    @torch.library.register_fake("trpo_torchrl::tanh")
    def _tanh_fake(x):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("trpo_torchrl::tanh_")
    def _tanh_inplace_fake(x):
        return x
