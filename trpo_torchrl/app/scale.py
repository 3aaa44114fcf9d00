"""Scale-out plumbing for the training app: the learner's process group under ``torchrun`` and the
Ray runtime behind ``--collector ray``.

Both sit on engines that exist (``torch.distributed`` initialised from torchrun's environment
variables; TorchRL's :class:`~torchrl.collectors.distributed.RayCollector`); this module only sets
them up, with errors that say what to do instead of hanging.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlparse

import torch
import torch.distributed as dist

from .config import ConfigError

#: how long a connection attempt to a named Ray cluster may take before the run gives up
RAY_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Ranks:
    """Where this process sits among the learner ranks; one process is rank 0 of 1, with no group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_learner_ranks(device: str) -> tuple[Ranks, str]:
    """Joins the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``), gloo for a CPU learner and NCCL for a CUDA one.

    Returns the ranks and the device this rank uses: under torchrun a ``cuda`` learner takes the GPU
    ``cuda:LOCAL_RANK``. Without torchrun's variables (or with a world of one) nothing is initialised.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.split(":")[0] == "cuda"
    if cuda:
        if ":" not in device:
            device = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            timeout=timedelta(seconds=int(os.environ.get("TRPO_DIST_TIMEOUT_S", "600"))),
            **({"device_id": torch.device(device)} if cuda else {}),
        )
    return Ranks(rank, dist.get_world_size(), local_rank, dist.group.WORLD), device


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a Ray address (``host:port`` or ``ray://host:port``); None for ``auto``/``local``."""
    if address in ("auto", "local"):
        return None
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise ConfigError(f"config: ray address {address!r} is not host:port, ray://host:port or 'auto'")
    return parsed.hostname, parsed.port


def start_ray(address: str | None, num_workers: int) -> bool:
    """Initialises Ray for a RayCollector: joins the cluster at ``address`` (or ``$RAY_ADDRESS``), or
    starts a local instance when neither names one. Returns whether this call started the runtime
    (then the caller shuts it down).

    A named cluster that does not answer within :data:`RAY_CONNECT_TIMEOUT_S` is an error, checked
    with a plain TCP connection first: ``ray.init`` itself can wait for minutes on a dead address.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    # the address is checked before Ray is even imported: a wrong one is the thing to report first
    host_port = _host_port(address) if address else None
    if host_port is not None:
        try:
            socket.create_connection(host_port, timeout=RAY_CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise ConfigError(
                f"config: cannot reach the Ray cluster at {address!r} ({err}); start it with `ray start --head` "
                "or unset RAY_ADDRESS / --ray-address to run a local Ray instance"
            ) from None
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "config: collector='ray' needs Ray; install it with `pip install 'ray[default]'`, or with the "
            "package's ray extra (in a checkout: `EXTRAS=mujoco,test,plot,ray bash scripts/setup.sh`)"
        ) from None
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(num_cpus=max(num_workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
        return True
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError) as err:
        raise ConfigError(f"config: cannot join the Ray cluster at {address!r}: {err}") from None
    return True
