"""The training loop of ``trpo-torchrl train``: the library used exactly as a user would.

Per iteration (:meth:`Trainer.step`): collect one on-policy batch (a TorchRL collector behind the
adapter of :mod:`.collectors`), scale rewards (optional), advantages and λ-returns (FusedGAE), the
trust-region actor step, the critic fit, then the observation statistics; log (:mod:`.rundir`);
checkpoint. Everything a resumed run needs to continue bit for bit — parameters, optimiser,
normaliser statistics, RNG states (:mod:`.checkpoint`), the simulators' state and the collector's
carried-over step (the adapter's) — is in :meth:`Trainer.state_dict`.

Under ``torchrun`` each process is one learner rank: it collects ``frames_per_batch / world_size``
frames with its own environment seeds, and the update averages over the ranks (the library's
``process_group`` option), so every rank holds the same parameters after every iteration. Only
rank 0 writes logs and checkpoints; a checkpoint holds every rank's own state (simulators, RNGs,
reward-scaler streams), and a resumed run gives each rank its own back.

SIGTERM (what schedulers send on preemption) and Ctrl-C stop the loop at the next iteration
boundary (:class:`StopRequest`): ``last.pt`` is written and the process exits with 128 + the
signal's number, 143 or 130. Under torchrun the stop flag is all-reduced (MAX) once per iteration,
outside the update, so every rank stops after the same iteration and rank 0's checkpoint resumes
exactly. A run directory that cannot be written is refused before anything is built; a checkpoint
or log write that fails mid-run (a full disk) stops the run with one line, the previous checkpoint
and the rows of progress.csv intact.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDictBase

from trpo_torchrl import CriticFit, TRPOLoss, TrustRegionUpdate
from trpo_torchrl.collectors import EnvWorkersError, gym_vector_env
from trpo_torchrl.distributed import all_gather_cat, all_reduce_mean

from .atari import game_score_reader
from .checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    CheckpointWriteError,
    load_checkpoint,
    load_rng_state,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
)
from .collectors import make_collector
from .config import ConfigError, TrainConfig, config_from_dict, save_yaml
from .envs import EnvError, make_env
from .evaluate import evaluate_actor, evaluation_seed
from .models import build_models, is_plain, observation_normalizers, recurrent_env_transforms
from .normalize import RewardScaler
from .rundir import ProgressLog, RunDirError, default_run_name, earlier_run, make_logger, unwritable
from .scale import init_learner_ranks
from .spaces import SpaceError, say_once

# an image encoder is shared by the actor and the critic (Stable-Baselines3's default, app/models.py):
# CriticFit leaving it to the trust-region step is the design, not something to warn the user about
warnings.filterwarnings("ignore", message="CriticFit: the critic shares", module=__name__)

# the actor step's metrics that a progress row reports
ACTOR_METRICS = ("kl", "surrogate_before", "surrogate_after", "step_accepted", "backtrack_steps", "cg_residual")


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path
    frames: int
    iterations: int
    eval_mean: float | None
    eval_std: float | None
    interrupted: bool = False
    stop_signal: int = 0  # the signal that stopped an interrupted run (0: Ctrl-C as KeyboardInterrupt)

    @property
    def exit_status(self) -> int:
        """0 for a finished run; for a stopped one 128 + the signal's number, as a shell reports a
        process that a signal ended: 130 after Ctrl-C (SIGINT), 143 after SIGTERM."""
        if not self.interrupted:
            return 0
        return 128 + (self.stop_signal or int(signal.SIGINT))


class StopRequest:
    """The signal handlers of a training run (installed while it trains, the previous ones restored
    after): the first SIGINT or SIGTERM asks the loop to stop at the next iteration boundary, where
    it writes ``last.pt``. A second Ctrl-C stops at once (KeyboardInterrupt); a second SIGTERM
    changes nothing. While a checkpoint is being written no signal interrupts it; one that arrives
    then counts once the write is done. A signal the process ignores (SIGINT of a background job)
    stays ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self.saving = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers live on the main thread
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is signal.SIG_IGN:
                    continue
                self._previous[sig] = previous
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        first = not self.signum
        self.signum = self.signum or signum
        if self.saving:
            return  # the checkpoint write finishes first
        if first:
            name = signal.Signals(signum).name
            more = " (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""
            # os.write, not print: a handler may run in the middle of another print
            os.write(2, f"\n{name}: stopping after this iteration to write a checkpoint{more}\n".encode())
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt


def _space_name(space) -> str:
    """A space in a few words for a log line: its class, and the shape of a Box."""
    if isinstance(space, gym.spaces.Box):
        return f"Box{tuple(space.shape)} {space.dtype}"
    return type(space).__name__


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
        seed_everything(config.seed)  # the same on every rank: the models start identical
        self.device = torch.device(device)
        run_dir = Path(run_dir) if run_dir else Path(config.logdir) / (config.run_name or default_run_name(config))
        clash = None if resume else earlier_run(run_dir)
        # only rank 0 writes; a directory it cannot write is refused before anything is built
        blocked = unwritable(run_dir) if self.ranks.is_main else None
        if group is not None:  # rank 0 names the run (the default name holds a clock time)
            box = [run_dir, clash, blocked]
            torch.distributed.broadcast_object_list(box, src=0)
            run_dir, clash, blocked = box
        if clash:  # on every rank alike: a new run never writes into another run's files
            raise ConfigError(clash)
        if blocked:
            raise RunDirError(blocked)
        self.run_dir = run_dir

        # each rank's share of the batch: steps_per_env / (world size × workers) steps per environment
        self.steps_per_shard = config.steps_per_env // (self.ranks.world_size * config.workers)
        self.rank_seed = config.seed + 100_003 * self.ranks.rank
        make = partial(
            make_env,
            config.env,
            config.num_envs,
            env_kwargs=config.env_kwargs,
            clip_actions=config.clip_actions,
            policy=config.policy,
        )
        self.env = make(self.rank_seed)  # also the source of the spaces for the models
        venv = gym_vector_env(self.env)
        try:
            self.actor, self.critic, self.normalizer = build_models(
                config, venv.single_observation_space, venv.single_action_space
            )
        except SpaceError as err:
            self.env.close()
            raise EnvError(f"environment {config.env!r}: {err}") from None
        transforms = recurrent_env_transforms(self.actor)
        for transform in transforms:  # is_init and the stored hidden state, for the collector and the loss
            self.env.append_transform(transform)
        if transforms and config.collector == "direct":
            # the hidden state rides in the env's TensorDicts, which only TorchRL's Collector carries
            self.config = config = dataclasses.replace(config, collector="sync", env_workers=0)
            if self.ranks.is_main:
                say_once(
                    f"collector: the recurrent policy (--policy {config.policy}) goes through TorchRL's "
                    "Collector (collector=sync), which carries its hidden state from step to step"
                )
        elif config.collector == "direct" and not is_plain(
            venv.single_observation_space, venv.single_action_space, config.policy
        ):
            # DirectCollector runs a flat observation and a one-hot or Gaussian actor only
            self.config = config = dataclasses.replace(config, collector="sync", env_workers=0)
            if self.ranks.is_main:
                say_once(
                    f"collector: sync (TorchRL's Collector), as the direct collector steps a flat Box "
                    f"observation with an MLP and a Box or Discrete action only; {config.env} has "
                    f"{_space_name(venv.single_observation_space)} observations and "
                    f"{_space_name(venv.single_action_space)} actions with --policy {config.policy}"
                )
        # ranks sample their own actions from here on (the models were built above, identically)
        seed_everything(self.rank_seed)
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
            # the direct collector's action draws: a run's batches do not depend on other draws in
            # the process, so member m of `--seeds M` draws what a single run with seed + m draws
            "collect": torch.Generator(device=self.device).manual_seed(self.rank_seed + 3),
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
        self.collection = make_collector(
            config,
            make,
            self.env,
            self.actor,
            steps_per_shard=self.steps_per_shard,
            rank_seed=self.rank_seed,
            device=self.device,
            generator=self.generators["collect"],
        )
        # an Atari run reports whole games' unclipped scores, not the batch's clipped per-life sums
        self.game_scores = game_score_reader(config.env, config.collector)
        if self.game_scores is not None and config.env_workers:
            self.collection.shutdown()
            raise ConfigError(
                f"{config.env}: the game scores are read from the environments in this process; use env_workers=0"
            )
        self.iteration = 0
        self.frames = 0
        self.elapsed = 0.0
        self.progress = None  # rank 0's progress.csv and logger
        self.stop_request = StopRequest()  # its handlers are installed while train() runs
        if self.ranks.is_main:  # only once everything above was built: a bad task leaves no empty run
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.progress = ProgressLog(self.run_dir, make_logger(config, self.run_dir))

    @property
    def collector(self):
        """The TorchRL collector this rank collects with."""
        return self.collection.collector

    @property
    def total_iterations(self) -> int:
        return math.ceil(self.config.total_frames / self.config.frames_per_batch)

    def next_batch(self) -> TensorDictBase:
        """This rank's share of the next on-policy batch as ``[environments, time]``."""
        return self.collection.next_batch()

    def shutdown(self) -> None:
        """Stops the collector's workers (and the Ray runtime this run started)."""
        self.collection.shutdown()

    def shutdown_after_error(self) -> None:
        """:meth:`shutdown` while an error propagates: a second failure there does not hide the first."""
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001
            pass

    # -- state ----------------------------------------------------------------------------------

    def _rank_state(self) -> dict[str, Any]:
        """What differs between learner ranks: their simulators, RNGs and reward-return streams."""
        return {
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler else None,
            "rng": rng_state(self.generators),
            **self.collection.state_dict(),  # env_state, carrier
        }

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
            raise CheckpointError(
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
        load_rng_state(own["rng"], self.generators)
        self.collection.load_state_dict(own)  # simulators and carried step, or the workers' policy

    def save(self, name: str) -> Path:
        """Writes a checkpoint (rank 0; every rank must call this, it gathers their states)."""
        path = self.run_dir / CHECKPOINT_DIR / name
        state = self.state_dict()
        failed = None
        if self.ranks.is_main:
            self.stop_request.saving = True  # a signal now waits for the write to finish
            try:
                save_checkpoint(path, state)
            except OSError as err:  # a full disk...: the file there before is unchanged (atomic write)
                failed = f"cannot write checkpoint {str(path)!r}: {err.strerror or err}"
            finally:
                self.stop_request.saving = False
        if self.ranks.group is not None:  # every rank stops alike when rank 0 could not write
            box = [failed]
            torch.distributed.broadcast_object_list(box, src=0)
            failed = box[0]
        if failed:
            earlier = [p.name for p in (path.parent / n for n in ("last.pt", "final.pt")) if p.is_file()]
            then = (
                f"then continue from {', '.join(earlier)} with --resume {self.run_dir}"
                if earlier
                else "then start the run again"
            )
            raise CheckpointWriteError(
                f"{failed}; the run stopped after iteration {self.iteration} with every row of progress.csv "
                f"written; free space there (or fix the directory), {then}"
            )
        return path

    # -- one iteration --------------------------------------------------------------------------

    def step(self, batch: TensorDictBase) -> dict[str, float]:
        """One iteration on this rank's ``batch``: advantages, the trust-region actor step, the
        critic fit, the observation statistics, the policy sent to the collector; returns the
        iteration's metrics (a progress row without its counters)."""
        episode_returns = self.before_actor_step(batch)
        actor = self.actor_step(batch)  # 2. the trust-region step
        return self.after_actor_step(batch, episode_returns, actor)

    def before_actor_step(self, batch: TensorDictBase) -> torch.Tensor:
        """Scales the rewards (optional) and writes advantages and λ-returns into ``batch``;
        returns the batch's finished episodes' returns."""
        done = batch["next", "done"]
        episode_returns = batch["next", "episode_reward"][done]
        if self.game_scores is not None:  # the games this batch finished (app/atari.py)
            scores = self.game_scores(gym_vector_env(self.env))
            episode_returns = torch.tensor(scores, dtype=torch.float64, device=episode_returns.device)
        if self.reward_scaler is not None:
            batch["next", "reward"] = self.reward_scaler(batch["next", "reward"], done)
        with torch.no_grad():
            self.loss.value_estimator(batch)  # 1. advantages and λ-returns
        return episode_returns

    def after_actor_step(
        self, batch: TensorDictBase, episode_returns: torch.Tensor, actor: dict, critic: TensorDictBase | None = None
    ) -> dict[str, float]:
        """The critic fit (unless ``critic`` holds the metrics of one already done, as a population
        fits its members' critics together), the statistics and the policy sync after the actor
        step whose metrics are ``actor``; returns the iteration's metrics."""
        if critic is None and self.critic_fit:
            critic = self.critic_fit(batch)  # 3. the critic
        # statistics for the next batch, from every rank's observations so all ranks keep one normaliser
        for key, normalizer in observation_normalizers(self.normalizer):
            observations = batch[key].reshape(-1, batch[key].shape[-1])
            normalizer.update(all_gather_cat(observations, self.ranks.group))
        self.collection.sync_policy()  # the next batch is collected with the new policy
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
        returns = evaluate_actor(
            self.actor,
            self.config.env,
            n,
            seed=evaluation_seed(self.config),
            device=self.device,
            env_kwargs=self.config.env_kwargs,
            policy=self.config.policy,
        )
        return float(np.mean(returns)), float(np.std(returns))

    # -- the loop -------------------------------------------------------------------------------

    def record(self, row: dict[str, Any], frames: int, seconds: float, fps: float) -> dict[str, Any]:
        """Counts an iteration of ``frames`` frames that took ``seconds``; evaluates, logs and
        checkpoints when due; returns the completed progress row."""
        config = self.config
        self.iteration += 1
        self.frames += frames
        self.elapsed += seconds
        row.update(iteration=self.iteration, frames=self.frames, time_s=self.elapsed, fps=fps)
        main = self.ranks.is_main
        if main and config.eval_every and self.iteration % config.eval_every == 0 and config.eval_episodes:
            row["eval_return"], row["eval_return_std"] = self.evaluate()
        if main:
            self.progress.write(row)
        if config.checkpoint_every and self.iteration % config.checkpoint_every == 0:
            self.save("last.pt")
        return row

    def finish(self) -> RunResult:
        """The end of a run: final and last checkpoints, the collector stopped, the final evaluation."""
        checkpoint = self.save("final.pt")
        self.save("last.pt")
        self.shutdown()
        eval_mean = eval_std = None
        if self.ranks.is_main and self.config.eval_episodes:
            eval_mean, eval_std = self.evaluate()
            self.progress.write(
                {
                    "iteration": self.iteration,
                    "frames": self.frames,
                    "time_s": self.elapsed,
                    "eval_return": eval_mean,
                    "eval_return_std": eval_std,
                }
            )
        return RunResult(self.run_dir, checkpoint, self.frames, self.iteration, eval_mean, eval_std)

    def stop_requested(self) -> int:
        """The signal that asked this run to stop (0: none); under torchrun the largest over the ranks
        (one small all-reduce), so every rank stops at the same iteration boundary."""
        signum = self.stop_request.signum
        if self.ranks.group is None:
            return signum
        flag = torch.tensor([signum], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.ranks.group)
        return int(flag.item())

    def stop_at_boundary(self, signum: int) -> RunResult:
        """After SIGTERM or a first Ctrl-C, between iterations: ``last.pt`` (a collective under
        torchrun: every rank reached this same boundary) and the collector stopped."""
        path = self.save("last.pt")
        self.shutdown()
        if self.ranks.is_main:
            print(
                f"\n{signal.Signals(signum).name}: stopped after iteration {self.iteration} ({self.frames} frames); "
                f"checkpoint written to {path} (continue with --resume {path})"
            )
        return RunResult(self.run_dir, path, self.frames, self.iteration, None, None, True, signum)

    def stop_interrupted(self) -> RunResult:
        """After a KeyboardInterrupt (a second Ctrl-C, or one raised outside the signal handler):
        the last checkpoint (only without learner ranks: they may have stopped at different points,
        so no collective is safe) and the collector stopped."""
        if self.ranks.group is None:
            try:
                self.save("last.pt")
            except EnvWorkersError as err:  # stopped mid-step: the simulators' state went with the workers
                print(f"\nno checkpoint of this iteration: {err}; the last periodic one is kept", file=sys.stderr)
        self.shutdown()
        return RunResult(
            self.run_dir, self.run_dir / CHECKPOINT_DIR / "last.pt", self.frames, self.iteration, None, None, True
        )

    def train(self) -> RunResult:
        """Trains until ``total_frames``; checkpoints periodically, at the end, and on SIGTERM or
        Ctrl-C (at the next iteration boundary; a second Ctrl-C stops at once)."""
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
        try:
            with self.stop_request:
                return self._loop(bar)
        except KeyboardInterrupt:
            bar.close()
            result = self.stop_interrupted()
            if self.ranks.group is None:
                print(
                    f"\ninterrupted: checkpoint written to {result.checkpoint} (continue with --resume {result.checkpoint})"
                )
            elif main:
                print(f"\ninterrupted: continue from the last periodic checkpoint in {self.run_dir / CHECKPOINT_DIR}")
            return result
        except (CheckpointWriteError, RunDirError):
            bar.close()
            self.shutdown()  # the run stops; what was logged and checkpointed before stays
            raise
        except BaseException:
            self.shutdown_after_error()  # no environment worker process outlives a failed run
            raise
        finally:
            bar.close()

    def _loop(self, bar) -> RunResult:
        """The iterations; between two of them, a stop that a signal asked for."""
        while self.iteration < self.total_iterations:
            signum = self.stop_requested()  # once per iteration, outside the update
            if signum:
                bar.close()
                return self.stop_at_boundary(signum)
            start = time.perf_counter()
            batch = self.next_batch()
            row = self.step(batch)
            frames = batch.numel() * self.ranks.world_size  # all ranks' shards together
            dt = time.perf_counter() - start
            self.record(row, frames, dt, frames / dt)
            bar.update(frames)
            bar.set_postfix(
                ret=f"{row['train_return']:.1f}", kl=f"{row['kl']:.4f}", fps=f"{row['fps']:.0f}", refresh=False
            )
        bar.close()
        return self.finish()


# what --resume may change: nothing of the run's past
RESUME_OVERRIDES = frozenset(
    {
        "total_frames",
        "checkpoint_every",
        "progress",
        "eval_episodes",
        "eval_every",
        "logger",
        "threads",
        "env_threads",
        "env_workers",
    }
)


def resume_trainer(
    checkpoint_path: str | Path, overrides: dict[str, Any] | None = None, trust: bool = False
) -> Trainer:
    """A Trainer in the state saved at ``checkpoint_path`` (a checkpoint file or its run directory),
    writing on into that run directory.

    ``overrides`` may change what does not alter the run's past (e.g. ``total_frames``,
    ``checkpoint_every``, ``progress``, ``eval_episodes``). ``trust`` also reads a version-1
    checkpoint, running any code it holds (see :func:`~.checkpoint.load_checkpoint`)."""
    from .config import apply_overrides

    checkpoint_path = resolve_checkpoint(checkpoint_path).resolve()  # a run directory names its checkpoint
    if checkpoint_path.parent.name != CHECKPOINT_DIR:
        # the run goes on in the checkpoint's run directory, which a stray file does not have
        raise ConfigError(
            f"--resume needs a run directory or a checkpoint inside one (RUN_DIR/{CHECKPOINT_DIR}/last.pt); "
            f"{str(checkpoint_path)!r} is not in a {CHECKPOINT_DIR}/ folder"
        )
    state = load_checkpoint(checkpoint_path, trust=trust)
    config = config_from_dict(state["config"])
    allowed = RESUME_OVERRIDES
    if overrides:
        bad = sorted(set(k.replace("-", "_") for k in overrides) - allowed)
        if bad:
            raise ConfigError(
                f"--resume keeps the run's configuration; these cannot change: {', '.join(bad)} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        config = apply_overrides(config, overrides, "the command line").validate()
    run_dir = checkpoint_path.parent.parent
    trainer = Trainer(config, run_dir=run_dir, resume=True)
    trainer.load_state_dict(state)
    return trainer
