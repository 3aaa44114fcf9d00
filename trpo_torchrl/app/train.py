"""The training loop of ``trpo-torchrl train``: the library used exactly as a user would.

Per iteration: collect one on-policy batch (TorchRL collector), scale rewards (optional),
advantages and λ-returns (FusedGAE), the trust-region actor step, the critic fit, then the
observation statistics; log; checkpoint. Everything a resumed run needs to continue bit for bit —
parameters, optimiser, normaliser statistics, RNG states, the simulators' state and the collector's
carried-over step — is in :meth:`Trainer.state_dict`.

Under ``torchrun`` each process is one learner rank: it collects ``frames_per_batch / world_size``
frames with its own environment seeds, and the update averages over the ranks (the library's
``process_group`` option), so every rank holds the same parameters after every iteration. Only
rank 0 writes logs and checkpoints; a checkpoint holds every rank's own state (simulators, RNGs,
reward-scaler streams), and a resumed run gives each rank its own back.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from trpo_torchrl import CriticFit, TRPOLoss, TrustRegionUpdate
from trpo_torchrl.policies import collection_policy
from trpo_torchrl.distributed import all_gather_cat, all_reduce_mean

from .checkpoint import CHECKPOINT_DIR, load_checkpoint, resolve_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, config_from_dict, save_yaml
from .envs import env_state, gym_vector_env, load_env_state, make_env
from .evaluate import evaluate_actor
from .models import build_models
from .normalize import RewardScaler
from .scale import Ranks, init_learner_ranks, start_ray

PROGRESS_FIELDS = [
    "iteration",
    "frames",
    "time_s",
    "fps",
    "train_return",
    "train_episodes",
    "eval_return",
    "eval_return_std",
    "kl",
    "surrogate_improvement",
    "step_accepted",
    "backtrack_steps",
    "cg_residual",
    "critic_loss",
    "explained_variance",
]


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path
    frames: int
    iterations: int
    eval_mean: float | None
    eval_std: float | None
    interrupted: bool = False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {k: g.get_state() for k, g in generators.items()},
    }


def _load_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def default_run_name(config: TrainConfig) -> str:
    return f"{config.env}__seed{config.seed}__{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class Trainer:
    """Builds a run from a :class:`TrainConfig` and trains it; see the module docstring."""

    def __init__(self, config: TrainConfig, run_dir: Path | None = None, *, resume: bool = False):
        self.config = config.validate()
        if config.threads:
            torch.set_num_threads(config.threads)  # process-wide, like any torch setting
        # before joining the group: a batch that does not split is an error on every rank alike
        config.check_split(int(os.environ.get("WORLD_SIZE", "1")))
        if config.device.startswith("cuda"):
            index = int(config.device.split(":")[1]) if ":" in config.device else 0
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                raise ConfigError(
                    f"config: device={config.device!r}, but torch sees {torch.cuda.device_count()} CUDA device(s) "
                    f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu"
                )
        self.ranks, device = init_learner_ranks(config.device)
        group = self.ranks.group
        _seed_everything(config.seed)  # the same on every rank: the models start identical
        self.device = torch.device(device)
        run_dir = Path(run_dir) if run_dir else Path(config.logdir) / (config.run_name or default_run_name(config))
        clash = None if resume else _earlier_run(run_dir)
        if group is not None:  # rank 0 names the run (the default name holds a clock time)
            box = [run_dir, clash]
            torch.distributed.broadcast_object_list(box, src=0)
            run_dir, clash = box
        if clash:  # on every rank alike: a new run never writes into another run's files
            raise ConfigError(clash)
        self.run_dir = run_dir

        # each rank's share of the batch: steps_per_env / (world size × workers) steps per environment
        self.steps_per_shard = config.steps_per_env // (self.ranks.world_size * config.workers)
        self.rank_seed = config.seed + 100_003 * self.ranks.rank
        make = partial(make_env, config.env, config.num_envs, clip_actions=config.clip_actions)
        self.env = make(self.rank_seed)  # also the source of the spaces for the models
        venv = gym_vector_env(self.env)
        self.actor, self.critic, self.normalizer = build_models(
            config, venv.single_observation_space, venv.single_action_space
        )
        # ranks sample their own actions from here on (the models were built above, identically)
        _seed_everything(self.rank_seed)
        self.loss = TRPOLoss(
            self.actor,
            self.critic,
            entropy_coeff=config.entropy_coeff,
            normalize_advantage=config.normalize_advantage,
            kl_reduction=config.kl_reduction,
        ).make_value_estimator(gamma=config.gamma, lmbda=config.gae_lambda)
        self.generators = {
            "update": torch.Generator(device=self.device).manual_seed(self.rank_seed + 1),
            "critic": torch.Generator().manual_seed(self.rank_seed + 2),
        }
        self.actor_step = TrustRegionUpdate(
            self.loss,
            **config.trust_region_kwargs(),
            generator=self.generators["update"],
            process_group=group,
        )
        self.critic_fit = (
            CriticFit(
                self.loss,
                lr=config.critic_lr,
                eps=config.critic_eps,
                epochs=config.critic_epochs,
                # critic_minibatch states per Adam step over all ranks together
                minibatch_size=max(1, config.critic_minibatch // self.ranks.world_size),
                generator=self.generators["critic"],
                process_group=group,
            )
            if config.critic_epochs > 0
            else None
        )
        self.reward_scaler = (
            RewardScaler(config.num_envs * config.workers, config.gamma, process_group=group)
            if config.normalize_rewards
            else None
        )
        self._owns_ray = False
        self.collector = self._make_collector(make)
        self.iteration = 0
        self.frames = 0
        self.elapsed = 0.0
        if self.ranks.is_main:  # only once everything above was built: a bad task leaves no empty run
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = self._make_logger() if self.ranks.is_main else None

    # -- construction ---------------------------------------------------------------------------

    def _make_collector(self, make):
        from torchrl.collectors import Collector, MultiSyncCollector

        config = self.config
        shard_frames = config.num_envs * self.steps_per_shard  # per worker
        # each worker builds its own environments with its own seed
        worker_envs = [partial(make, self.rank_seed + 1000 * (w + 1)) for w in range(config.workers)]
        if config.collector == "multisync":
            return MultiSyncCollector(
                worker_envs,
                self.actor,
                frames_per_batch=shard_frames * config.workers,
                total_frames=-1,
                device=self.device,
                cat_results="stack",
                # TorchRL otherwise sets this process to (cores - workers) threads
                num_threads=config.threads or None,
            )
        if config.collector == "direct":
            from .collect import DirectCollector

            return DirectCollector(self.env, self.actor, self.steps_per_shard, device=self.device)
        if config.collector == "ray":
            from torchrl.collectors.distributed import RayCollector

            self._owns_ray = start_ray(config.ray_address, config.workers)
            collector = RayCollector(
                worker_envs,
                self.actor,
                frames_per_batch=shard_frames * config.workers,
                # RayCollector reads -1 literally (it stops at once); the loop decides when to stop
                total_frames=2**62,
                device=self.device,
                sync=True,  # one batch from every worker per iteration, stacked: on-policy
                collector_class=Collector,
                collector_kwargs={"auto_register_policy_transforms": False},
            )
            collector.update_policy_weights_()  # connects the workers and sends them the initial policy
            return collector
        return Collector(
            self.env,
            # a Gaussian actor samples through its lean, parameter-sharing form: same draws, same entries
            collection_policy(self.actor),
            frames_per_batch=shard_frames,
            total_frames=-1,
            device=self.device,
            auto_register_policy_transforms=False,  # the policy is memoryless
        )

    def _make_logger(self):
        if self.config.logger == "none":
            return None
        from torchrl.record.loggers import get_logger

        kwargs = {}
        if self.config.logger == "wandb":
            kwargs = {"project": "trpo_torchrl", "config": self.config.to_dict()}
        try:
            return get_logger(self.config.logger, logger_name=str(self.run_dir), experiment_name="logs", **kwargs)
        except ImportError as err:
            raise ConfigError(
                f"config: logger={self.config.logger!r} needs its package: pip install 'trpo-torchrl[{self.config.logger}]' ({err})"
            ) from None

    @property
    def total_iterations(self) -> int:
        return math.ceil(self.config.total_frames / self.config.frames_per_batch)

    def next_batch(self, batches) -> TensorDictBase:
        """This rank's share of the next on-policy batch as ``[environments, time]``: the workers'
        stacked ``[workers, num_envs, time]`` results become rows of environments."""
        batch = next(batches)
        if self.config.collector in ("multisync", "ray"):
            batch = batch.reshape(-1, batch.shape[-1])
        return batch.to(self.device)

    def shutdown(self) -> None:
        """Stops the collector's workers (and the Ray runtime this run started)."""
        self.collector.shutdown()
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    # -- state ----------------------------------------------------------------------------------

    def _rank_state(self) -> dict[str, Any]:
        """What differs between learner ranks: their simulators, RNGs and reward-return streams."""
        state = {
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler else None,
            "rng": _rng_state(self.generators),
            "env_state": None,
            "carrier": None,
        }
        if self.config.collector in ("direct", "sync"):
            state["env_state"] = env_state(self.env)
            state["carrier"] = self._carried_step()
        return state

    def _carried_step(self):
        """What the one-process collector carries from one batch to the next."""
        if self.config.collector == "direct":
            return self.collector.state_dict()
        return self.collector._carrier.clone()

    def state_dict(self) -> dict[str, Any]:
        """The run's state; under torchrun a collective (every rank calls it) whose full result,
        with each rank's own part in ``"ranks"``, is on rank 0."""
        state = {
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "frames": self.frames,
            "elapsed": self.elapsed,
            # the same on every rank: the update leaves all ranks with identical values
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_optimizer": self.critic_fit.optimizer.state_dict() if self.critic_fit else None,
            **self._rank_state(),
        }
        if self.ranks.group is not None:
            parts = [None] * self.ranks.world_size if self.ranks.is_main else None
            torch.distributed.gather_object(self._rank_state(), parts, dst=0)
            state["ranks"] = parts
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_world = len(state["ranks"]) if state.get("ranks") else 1
        if saved_world != self.ranks.world_size:
            raise ValueError(
                f"the checkpoint was written by {saved_world} learner rank(s); resume it with the same number "
                f"(this run has {self.ranks.world_size})"
            )
        own = state["ranks"][self.ranks.rank] if state.get("ranks") else state
        self.iteration = state["iteration"]
        self.frames = state["frames"]
        self.elapsed = state.get("elapsed", 0.0)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        if self.critic_fit and state.get("critic_optimizer"):
            self.critic_fit.optimizer.load_state_dict(state["critic_optimizer"])
        if self.reward_scaler and own.get("reward_scaler"):
            self.reward_scaler.load_state_dict(own["reward_scaler"])
        if self.config.collector in ("direct", "sync") and own.get("env_state") is not None:
            load_env_state(self.env, own["env_state"])
            # the collector's carried-over step (last observation, running episode return):
            # TorchRL's own load_state_dict starts fresh trajectories instead
            if self.config.collector == "direct":
                self.collector.load_state_dict(own["carrier"])
            else:
                self.collector._carrier.update(own["carrier"])
        _load_rng_state(own["rng"], self.generators)
        if self.config.collector in ("multisync", "ray"):
            self.collector.update_policy_weights_()  # the workers run the restored policy

    def save(self, name: str) -> Path:
        """Writes a checkpoint (rank 0; every rank must call this, it gathers their states)."""
        path = self.run_dir / CHECKPOINT_DIR / name
        state = self.state_dict()
        if self.ranks.is_main:
            save_checkpoint(path, state)
        return path

    # -- the loop -------------------------------------------------------------------------------

    def _iteration(self, batch: TensorDictBase) -> dict[str, float]:
        done = batch["next", "done"]
        episode_returns = batch["next", "episode_reward"][done]
        if self.reward_scaler is not None:
            batch["next", "reward"] = self.reward_scaler(batch["next", "reward"], done)
        with torch.no_grad():
            self.loss.value_estimator(batch)  # 1. advantages and λ-returns
        actor = self.actor_step(batch)  # 2. the trust-region step
        critic = self.critic_fit(batch) if self.critic_fit else None  # 3. the critic
        # statistics for the next batch, from every rank's observations so all ranks keep one normaliser
        observations = batch["observation"].reshape(-1, batch["observation"].shape[-1])
        self.normalizer.update(all_gather_cat(observations, self.ranks.group))
        self.collector.update_policy_weights_()  # the workers collect the next batch with the new policy
        return_sum = episode_returns.sum(dtype=torch.float64).reshape(1)
        episodes = torch.tensor([episode_returns.numel()], dtype=torch.float64, device=return_sum.device)
        return_sum, episodes = (
            all_reduce_mean(torch.cat([return_sum, episodes]), self.ranks.group) * self.ranks.world_size
        ).tolist()
        row = {
            "train_return": return_sum / episodes if episodes else float("nan"),
            "train_episodes": int(episodes),
            "kl": actor["kl"].item(),
            "surrogate_improvement": (actor["surrogate_after"] - actor["surrogate_before"]).item(),
            "step_accepted": float(actor["step_accepted"].float().mean()),
            "backtrack_steps": float(actor["backtrack_steps"].float().mean()),
            "cg_residual": float(actor["cg_residual"].float().mean()),
        }
        if critic is not None:
            row["critic_loss"] = critic["loss_critic"].item()
            row["explained_variance"] = critic["explained_variance"].item()
        return row

    def evaluate(self, episodes: int | None = None) -> tuple[float, float]:
        n = self.config.eval_episodes if episodes is None else episodes
        returns = evaluate_actor(self.actor, self.config.env, n, seed=self.config.seed + 10_000, device=self.device)
        return float(np.mean(returns)), float(np.std(returns))

    def _log(self, row: dict[str, Any]) -> None:
        path = self.run_dir / "progress.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=PROGRESS_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in PROGRESS_FIELDS})
        if self.logger is not None:
            for key, value in row.items():
                if key not in ("iteration", "frames") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.logger.log_scalar(key, value, step=row["frames"])

    def train(self) -> RunResult:
        """Trains until ``total_frames``; checkpoints periodically, at the end and on Ctrl-C."""
        config = self.config
        main = self.ranks.is_main
        if main:
            save_yaml(config, self.run_dir / "config.yaml")
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.total_iterations * config.frames_per_batch,
            initial=self.frames,
            unit="frames",
            disable=not (config.progress and main),
            dynamic_ncols=True,
        )
        interrupted = False
        eval_mean = eval_std = None
        batches = iter(self.collector)
        try:
            while self.iteration < self.total_iterations:
                start = time.perf_counter()
                batch = self.next_batch(batches)
                row = self._iteration(batch)
                frames = batch.numel() * self.ranks.world_size  # all ranks' shards together
                self.iteration += 1
                self.frames += frames
                dt = time.perf_counter() - start
                self.elapsed += dt
                row.update(iteration=self.iteration, frames=self.frames, time_s=self.elapsed, fps=frames / dt)
                if main and config.eval_every and self.iteration % config.eval_every == 0 and config.eval_episodes:
                    row["eval_return"], row["eval_return_std"] = self.evaluate()
                if main:
                    self._log(row)
                bar.update(frames)
                bar.set_postfix(
                    ret=f"{row['train_return']:.1f}", kl=f"{row['kl']:.4f}", fps=f"{row['fps']:.0f}", refresh=False
                )
                if config.checkpoint_every and self.iteration % config.checkpoint_every == 0:
                    self.save("last.pt")
        except KeyboardInterrupt:
            interrupted = True
            bar.close()
            if self.ranks.group is None:
                path = self.save("last.pt")
                print(f"\ninterrupted: checkpoint written to {path} (continue with --resume {path})")
            elif main:
                # the ranks may have been stopped at different points: no collective is safe now
                print(f"\ninterrupted: continue from the last periodic checkpoint in {self.run_dir / CHECKPOINT_DIR}")
        finally:
            bar.close()
        if interrupted:
            self.shutdown()
            return RunResult(self.run_dir, self.run_dir / CHECKPOINT_DIR / "last.pt", self.frames, self.iteration, None, None, True)
        checkpoint = self.save("final.pt")
        self.save("last.pt")
        self.shutdown()
        if main and config.eval_episodes:
            eval_mean, eval_std = self.evaluate()
            self._log({"iteration": self.iteration, "frames": self.frames, "time_s": self.elapsed,
                       "eval_return": eval_mean, "eval_return_std": eval_std})
        return RunResult(self.run_dir, checkpoint, self.frames, self.iteration, eval_mean, eval_std)


def _earlier_run(run_dir: Path) -> str | None:
    """Why a new run may not use ``run_dir`` (another run's log or checkpoints are there), or None."""
    found = [name for name in ("progress.csv", CHECKPOINT_DIR) if (run_dir / name).exists()]
    if not found:
        return None
    return (
        f"run directory {str(run_dir)!r} already holds a run ({', '.join(found)}): choose another "
        f"--run-name or --logdir, or continue that run with --resume {run_dir}"
    )


def resume_trainer(checkpoint_path: str | Path, overrides: dict[str, Any] | None = None) -> Trainer:
    """A Trainer in the state saved at ``checkpoint_path`` (a checkpoint file or its run directory),
    writing on into that run directory.

    ``overrides`` may change what does not alter the run's past (e.g. ``total_frames``,
    ``checkpoint_every``, ``progress``, ``eval_episodes``)."""
    from .config import apply_overrides

    checkpoint_path = resolve_checkpoint(checkpoint_path).resolve()  # a run directory names its checkpoint
    if checkpoint_path.parent.name != CHECKPOINT_DIR:
        # the run goes on in the checkpoint's run directory, which a stray file does not have
        raise ConfigError(
            f"--resume needs a run directory or a checkpoint inside one (RUN_DIR/{CHECKPOINT_DIR}/last.pt); "
            f"{str(checkpoint_path)!r} is not in a {CHECKPOINT_DIR}/ folder"
        )
    state = load_checkpoint(checkpoint_path)
    config = config_from_dict(state["config"])
    allowed = {"total_frames", "checkpoint_every", "progress", "eval_episodes", "eval_every", "logger", "threads"}
    if overrides:
        bad = sorted(set(k.replace("-", "_") for k in overrides) - allowed)
        if bad:
            raise ValueError(
                f"--resume keeps the run's configuration; these cannot change: {', '.join(bad)} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        config = apply_overrides(config, overrides, "the command line").validate()
    run_dir = checkpoint_path.parent.parent
    trainer = Trainer(config, run_dir=run_dir, resume=True)
    trainer.load_state_dict(state)
    return trainer
