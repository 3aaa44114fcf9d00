"""The training loop of ``trpo-torchrl train``: the library used exactly as a user would.

Per iteration: collect one on-policy batch (TorchRL collector), scale rewards (optional),
advantages and λ-returns (FusedGAE), the trust-region actor step, the critic fit, then the
observation statistics; log; checkpoint. Everything a resumed run needs to continue bit for bit —
parameters, optimiser, normaliser statistics, RNG states, the simulators' state and the collector's
carried-over step — is in :meth:`Trainer.state_dict`.
"""

from __future__ import annotations

import csv
import math
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

from .checkpoint import CHECKPOINT_DIR, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, config_from_dict, save_yaml
from .envs import env_state, gym_vector_env, load_env_state, make_env
from .evaluate import evaluate_actor
from .models import build_models
from .normalize import RewardScaler

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

    def __init__(self, config: TrainConfig, run_dir: Path | None = None):
        self.config = config.validate()
        _seed_everything(config.seed)
        self.device = torch.device(config.device)
        self.run_dir = Path(run_dir) if run_dir else Path(config.logdir) / (config.run_name or default_run_name(config))
        self.run_dir.mkdir(parents=True, exist_ok=True)

        make = partial(make_env, config.env, config.num_envs, clip_actions=config.clip_actions)
        self.env = make(config.seed)  # also the source of the spaces for the models
        venv = gym_vector_env(self.env)
        self.actor, self.critic, self.normalizer = build_models(
            config, venv.single_observation_space, venv.single_action_space
        )
        self.loss = TRPOLoss(
            self.actor,
            self.critic,
            entropy_coeff=config.entropy_coeff,
            normalize_advantage=config.normalize_advantage,
        ).make_value_estimator(gamma=config.gamma, lmbda=config.gae_lambda)
        self.generators = {
            "update": torch.Generator(device=self.device).manual_seed(config.seed + 1),
            "critic": torch.Generator().manual_seed(config.seed + 2),
        }
        self.actor_step = TrustRegionUpdate(
            self.loss,
            max_kl=config.max_kl,
            damping=config.damping,
            cg_iters=config.cg_iters,
            backtrack_iters=config.backtrack_iters,
            backtrack_coeff=config.backtrack_coeff,
            fvp=config.fvp,
            fvp_subsample=config.fvp_subsample,
            generator=self.generators["update"],
        )
        self.critic_fit = (
            CriticFit(
                self.loss,
                lr=config.critic_lr,
                epochs=config.critic_epochs,
                minibatch_size=config.critic_minibatch,
                generator=self.generators["critic"],
            )
            if config.critic_epochs > 0
            else None
        )
        self.reward_scaler = RewardScaler(config.num_envs * config.workers, config.gamma) if config.normalize_rewards else None
        self.collector = self._make_collector(make)
        self.iteration = 0
        self.frames = 0
        self.elapsed = 0.0
        self.logger = self._make_logger()

    # -- construction ---------------------------------------------------------------------------

    def _make_collector(self, make):
        from torchrl.collectors import Collector, MultiSyncCollector

        config = self.config
        if config.collector == "multisync":
            # each worker process builds its own environments with its own seed
            return MultiSyncCollector(
                [partial(make, config.seed + 1000 * (w + 1)) for w in range(config.workers)],
                self.actor,
                frames_per_batch=config.frames_per_batch * config.workers,
                total_frames=-1,
                device=self.device,
                cat_results="stack",
            )
        return Collector(
            self.env,
            self.actor,
            frames_per_batch=config.frames_per_batch,
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
        batch = self.config.frames_per_batch * self.config.workers
        return math.ceil(self.config.total_frames / batch)

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "frames": self.frames,
            "elapsed": self.elapsed,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_optimizer": self.critic_fit.optimizer.state_dict() if self.critic_fit else None,
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler else None,
            "rng": _rng_state(self.generators),
            "env_state": None,
            "carrier": None,
        }
        if self.config.collector == "sync":
            state["env_state"] = env_state(self.env)
            state["carrier"] = self.collector._carrier.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = state["iteration"]
        self.frames = state["frames"]
        self.elapsed = state.get("elapsed", 0.0)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        if self.critic_fit and state.get("critic_optimizer"):
            self.critic_fit.optimizer.load_state_dict(state["critic_optimizer"])
        if self.reward_scaler and state.get("reward_scaler"):
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        if self.config.collector == "sync" and state.get("env_state") is not None:
            load_env_state(self.env, state["env_state"])
            # the collector's carried-over step (last observation, running episode return):
            # TorchRL's own load_state_dict starts fresh trajectories instead
            self.collector._carrier.update(state["carrier"])
        _load_rng_state(state["rng"], self.generators)

    def save(self, name: str) -> Path:
        path = self.run_dir / CHECKPOINT_DIR / name
        save_checkpoint(path, self.state_dict())
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
        self.normalizer.update(batch["observation"])  # statistics for the next batch
        self.collector.update_policy_weights_()
        row = {
            "train_return": episode_returns.mean().item() if episode_returns.numel() else float("nan"),
            "train_episodes": int(episode_returns.numel()),
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
        save_yaml(config, self.run_dir / "config.yaml")
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.total_iterations * config.frames_per_batch * config.workers,
            initial=self.frames,
            unit="frames",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        interrupted = False
        eval_mean = eval_std = None
        batches = iter(self.collector)
        try:
            while self.iteration < self.total_iterations:
                start = time.perf_counter()
                batch = next(batches)
                row = self._iteration(batch)
                self.iteration += 1
                self.frames += batch.numel()
                dt = time.perf_counter() - start
                self.elapsed += dt
                row.update(iteration=self.iteration, frames=self.frames, time_s=self.elapsed, fps=batch.numel() / dt)
                if config.eval_every and self.iteration % config.eval_every == 0 and config.eval_episodes:
                    row["eval_return"], row["eval_return_std"] = self.evaluate()
                self._log(row)
                bar.update(batch.numel())
                bar.set_postfix(
                    ret=f"{row['train_return']:.1f}", kl=f"{row['kl']:.4f}", fps=f"{row['fps']:.0f}", refresh=False
                )
                if config.checkpoint_every and self.iteration % config.checkpoint_every == 0:
                    self.save("last.pt")
        except KeyboardInterrupt:
            interrupted = True
            path = self.save("last.pt")
            bar.close()
            print(f"\ninterrupted: checkpoint written to {path} (continue with --resume {path})")
        finally:
            bar.close()
        if interrupted:
            self.collector.shutdown()
            return RunResult(self.run_dir, self.run_dir / CHECKPOINT_DIR / "last.pt", self.frames, self.iteration, None, None, True)
        checkpoint = self.save("final.pt")
        self.save("last.pt")
        self.collector.shutdown()
        if config.eval_episodes:
            eval_mean, eval_std = self.evaluate()
            self._log({"iteration": self.iteration, "frames": self.frames, "time_s": self.elapsed,
                       "eval_return": eval_mean, "eval_return_std": eval_std})
        return RunResult(self.run_dir, checkpoint, self.frames, self.iteration, eval_mean, eval_std)


def resume_trainer(checkpoint_path: str | Path, overrides: dict[str, Any] | None = None) -> Trainer:
    """A Trainer in the state saved at ``checkpoint_path``, in the same run directory.

    ``overrides`` may change what does not alter the run's past (e.g. ``total_frames``,
    ``checkpoint_every``, ``progress``, ``eval_episodes``)."""
    from .config import apply_overrides

    state = load_checkpoint(checkpoint_path)
    config = config_from_dict(state["config"])
    allowed = {"total_frames", "checkpoint_every", "progress", "eval_episodes", "eval_every", "logger"}
    if overrides:
        bad = sorted(set(k.replace("-", "_") for k in overrides) - allowed)
        if bad:
            raise ValueError(
                f"--resume keeps the run's configuration; these cannot change: {', '.join(bad)} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        config = apply_overrides(config, overrides, "the command line").validate()
    run_dir = Path(checkpoint_path).resolve().parent.parent
    trainer = Trainer(config, run_dir=run_dir)
    trainer.load_state_dict(state)
    return trainer
