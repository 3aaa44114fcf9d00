"""One adapter per collector kind (``direct``, ``sync``, ``multisync``, ``ray``): the training loop
asks each for this rank's next batch, the policy-weight sync after an update, the state a checkpoint
needs and the shutdown, and never asks which kind it has.

A one-process collector's state is the simulators' and the step carried from one batch to the next
(so a resumed run continues bit for bit). The workers of a multi-process or Ray collector keep theirs
out of reach, so a resumed run continues from the same parameters, with fresh simulator states: the
learner's state (actor, normaliser statistics, critic, optimiser, RNGs) is restored, and the restarted
workers run the restored policy on new episodes from the run's environment seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.collectors import BaseCollector, Collector, MultiSyncCollector
from torchrl.envs import EnvBase

from trpo_torchrl.collectors import DirectCollector
from trpo_torchrl.policies import collection_policy

from .config import TrainConfig
from .envs import env_state, load_env_state
from .scale import start_ray

__all__ = ["CollectorAdapter", "make_collector"]


class CollectorAdapter:
    """A TorchRL collector as the training loop uses it. The base serves collectors that yield this
    rank's batch as ``[environments, time]`` and need nothing saved."""

    def __init__(self, collector: BaseCollector, device: torch.device):
        self.collector = collector
        self.device = device
        self._batches: Iterator[TensorDictBase] | None = None

    def next_batch(self) -> TensorDictBase:
        """This rank's next on-policy batch, ``[environments, time]`` on the learner's device."""
        if self._batches is None:
            self._batches = iter(self.collector)
        return next(self._batches).to(self.device)

    def sync_policy(self) -> None:
        """After an update: the next batch is collected with the new policy."""
        self.collector.update_policy_weights_()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to collect on exactly where this one stopped."""
        return {"env_state": None, "carrier": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sync_policy()  # the workers run the restored policy (on new episodes: see the module docstring)

    def shutdown(self) -> None:
        self.collector.shutdown()


class _OneProcess(CollectorAdapter):
    """A collector stepping ``env`` in this process: the simulators and the carried step are saved."""

    def __init__(self, collector: BaseCollector, device: torch.device, env: EnvBase):
        super().__init__(collector, device)
        self.env = env

    def state_dict(self) -> dict[str, Any]:
        return {"env_state": env_state(self.env), "carrier": self._carried_step()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("env_state") is None:
            return
        load_env_state(self.env, state["env_state"])
        # the collector's carried-over step (last observation, running episode return):
        # TorchRL's own load_state_dict starts fresh trajectories instead
        self._load_carried_step(state["carrier"])

    def _carried_step(self):
        raise NotImplementedError

    def _load_carried_step(self, carrier) -> None:
        raise NotImplementedError


class DirectAdapter(_OneProcess):
    """``collector='direct'``: :class:`~trpo_torchrl.collectors.DirectCollector`, which runs the actor
    itself (nothing to sync). The simulators' state is read and restored where they step (in this
    process, or in the collector's worker processes: ``env_workers``)."""

    def state_dict(self) -> dict[str, Any]:
        return {"env_state": env_state(self.env, self.collector.map_envs), "carrier": self._carried_step()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("env_state") is None:
            return
        load_env_state(self.env, state["env_state"], self.collector.map_envs)
        self._load_carried_step(state["carrier"])

    def _carried_step(self):
        return self.collector.state_dict()

    def _load_carried_step(self, carrier) -> None:
        self.collector.load_state_dict(carrier)


class SyncAdapter(_OneProcess):
    """``collector='sync'``: TorchRL's ``Collector`` over the env in this process."""

    def _carried_step(self):
        return self.collector._carrier.clone()

    def _load_carried_step(self, carrier) -> None:
        self.collector._carrier.update(carrier)


class _Workers(CollectorAdapter):
    """Worker processes' batches, stacked ``[workers, num_envs, time]``, become rows of environments."""

    def next_batch(self) -> TensorDictBase:
        batch = super().next_batch()
        return batch.reshape(-1, batch.shape[-1])


class MultiSyncAdapter(_Workers):
    """``collector='multisync'``: TorchRL's ``MultiSyncCollector``, one worker process per shard."""


class RayAdapter(_Workers):
    """``collector='ray'``: TorchRL's ``RayCollector``; stops the Ray runtime when this run started it."""

    def __init__(self, collector: BaseCollector, device: torch.device, owns_ray: bool):
        super().__init__(collector, device)
        self.owns_ray = owns_ray

    def shutdown(self) -> None:
        super().shutdown()
        if self.owns_ray:
            import ray

            ray.shutdown()
            self.owns_ray = False


def make_collector(
    config: TrainConfig,
    make_env: Callable[[int], EnvBase],
    env: EnvBase,
    actor,
    *,
    steps_per_shard: int,
    rank_seed: int,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> CollectorAdapter:
    """The adapter for ``config.collector``: ``env`` is this process's env (one-process kinds),
    ``make_env(seed)`` builds each worker's own; a worker collects ``steps_per_shard`` steps of each
    of its ``config.num_envs`` environments per batch. ``generator`` draws the ``direct`` collector's
    actions (TorchRL's collectors draw on torch's global generator)."""
    shard_frames = config.num_envs * steps_per_shard  # per worker
    # each worker builds its own environments with its own seed
    worker_envs = [partial(make_env, rank_seed + 1000 * (w + 1)) for w in range(config.workers)]
    if config.collector == "direct":
        collector = DirectCollector(
            env,
            actor,
            frames_per_batch=shard_frames,
            device=device,
            generator=generator,
            env_threads=config.env_threads,
            env_workers=config.env_workers,
        )
        return DirectAdapter(collector, device, env)
    if config.collector == "sync":
        collector = Collector(
            env,
            # a Gaussian actor samples through its lean, parameter-sharing form: same draws, same entries
            collection_policy(actor),
            frames_per_batch=shard_frames,
            total_frames=-1,
            device=device,
            auto_register_policy_transforms=False,  # the policy is memoryless
        )
        return SyncAdapter(collector, device, env)
    if config.collector == "multisync":
        collector = MultiSyncCollector(
            worker_envs,
            actor,
            frames_per_batch=shard_frames * config.workers,
            total_frames=-1,
            device=device,
            cat_results="stack",
            # TorchRL otherwise sets this process to (cores - workers) threads
            num_threads=config.threads or None,
        )
        return MultiSyncAdapter(collector, device)
    if config.collector == "ray":
        from torchrl.collectors.distributed import RayCollector

        owns_ray = start_ray(config.ray_address, config.workers)
        collector = RayCollector(
            worker_envs,
            actor,
            frames_per_batch=shard_frames * config.workers,
            # RayCollector reads -1 literally (it stops at once); the loop decides when to stop
            total_frames=2**62,
            device=device,
            sync=True,  # one batch from every worker per iteration, stacked: on-policy
            collector_class=Collector,
            collector_kwargs={"auto_register_policy_transforms": False},
        )
        collector.update_policy_weights_()  # connects the workers and sends them the initial policy
        return RayAdapter(collector, device, owns_ray)
    raise ValueError(f"unknown collector kind {config.collector!r}")  # validate() refuses it first
