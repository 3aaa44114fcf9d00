"""Collective helpers for data-parallel TRPO over ``torch.distributed``.

Every rank holds its own shard of the on-policy batch, all shards of the same size. The update then
needs a handful of batch means over the union of the shards: the advantage statistics, the gradient,
each Fisher-vector product, and the line-search statistics. A mean over equal shards is the mean of
the shard means, so one ``all_reduce(SUM) / world_size`` per quantity gives every rank the same
value as a single process that held the whole batch.

The collectives are issued on the tensors' own device and nothing is read back to the host, so the
update stays free of host synchronisation. ``process_group=None`` everywhere means "one process":
the helpers return their input untouched and no ``torch.distributed`` call is made.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean", "all_gather_cat", "global_mean_std", "resolve_process_group"]


def resolve_process_group(process_group):
    """``None`` stays ``None`` (one process). ``"world"`` is the default group of an initialised
    ``torch.distributed``; any other value is used as the group itself."""
    if process_group is None:
        return None
    if isinstance(process_group, str):
        if process_group != "world":
            raise ValueError(f"process_group must be None, 'world' or a ProcessGroup, got {process_group!r}")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("process_group='world' needs torch.distributed.init_process_group() to have been called")
        return dist.group.WORLD
    return process_group


def _backend_device(tensor: torch.Tensor, process_group) -> torch.device:
    # NCCL moves CUDA tensors only; a CPU statistic (e.g. a running-moment buffer) travels through
    # this rank's GPU and comes back
    if tensor.device.type == "cpu" and dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_mean(tensor: torch.Tensor, process_group) -> torch.Tensor:
    """The mean of ``tensor`` over the ranks of ``process_group`` (a new tensor; the input is kept).

    Not differentiable: it is applied to gradients and statistics after autograd is done with them.
    """
    if process_group is None:
        return tensor
    out = tensor.detach().to(_backend_device(tensor, process_group), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=process_group)
    # dividing after the sum (not scaling before it) keeps a world of one bit-identical to no group
    return (out / dist.get_world_size(process_group)).to(tensor.device)


def all_gather_cat(tensor: torch.Tensor, process_group) -> torch.Tensor:
    """Every rank's ``tensor`` (all of the same shape) concatenated along dim 0 in rank order."""
    if process_group is None:
        return tensor
    local = tensor.detach().to(_backend_device(tensor, process_group)).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(parts, local, group=process_group)
    return torch.cat(parts).to(tensor.device)


def global_mean_std(x: torch.Tensor, process_group, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased standard deviation of ``x`` over the union of the ranks' shards: of all of
    ``x`` (``dim=None``), or along ``dim`` (kept, so the statistics broadcast against ``x``; e.g. per
    member of a population's ``[M, N]`` advantages).

    Two passes (mean first, then the squared deviations from it) rather than sum and sum of
    squares: the one-pass formula loses precision in float32 when the mean is large next to the std.
    Shards must all have the same shape.
    """
    keep = {} if dim is None else {"dim": dim, "keepdim": True}
    if process_group is None:
        return x.mean(**keep), x.std(**keep)
    world = dist.get_world_size(process_group)
    count = x.numel() if dim is None else x.shape[dim]
    mean = all_reduce_mean(x.mean(**keep), process_group)
    squares = all_reduce_mean((x - mean).square().sum(**keep), process_group) * world
    return mean, (squares / (count * world - 1)).sqrt()
