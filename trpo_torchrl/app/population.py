"""``trpo-torchrl train --seeds M``: M independent runs in one process, their collection and actor
steps batched.

Each member is an ordinary :class:`~trpo_torchrl.app.train.Trainer` with its own seed
(``seed + m``), environments, collector, action generator, observation normaliser, reward scaler,
critic and critic optimiser, and its own run directory (``progress.csv``, ``config.yaml``,
checkpoints) — so ``eval`` and ``--resume`` treat a member exactly like a single run, and ``plot`` on
the group folder draws the mean ± std across the members. What the members share is the work: with
the ``direct`` collector one :class:`~trpo_torchrl.collectors.PopulationCollector` steps every
member's environments together and runs their actors as one batched network (each member's batch is
the one its own collector would give); their batches are stacked and one
:class:`~trpo_torchrl.PopulationTrustRegionUpdate` gives every member its own trust region in one
batched update, and :func:`~trpo_torchrl.fit_critics` fits their critics in one call of the fused
critic-fit op (each member's own critic, Adam state and minibatch order). Other collector kinds
collect member by member.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from trpo_torchrl import PopulationTrustRegionUpdate, fit_critics
from trpo_torchrl.collectors import DirectCollector, PopulationCollector

from .checkpoint import CHECKPOINT_DIR, CheckpointError, load_checkpoint, resolve_checkpoint
from .config import ConfigError, TrainConfig, apply_overrides, config_from_dict, load_yaml, save_yaml
from .rundir import env_slug
from .train import ACTOR_METRICS, RESUME_OVERRIDES, RunResult, StopRequest, Trainer, resume_trainer

__all__ = ["PopulationTrainer", "resume_group", "resume_population", "train_population"]


def member_config(config: TrainConfig, m: int) -> TrainConfig:
    """Member ``m``'s own config: seed ``seed + m`` and ``seeds=1``, so its checkpoint resumes and
    evaluates as a single run; its run directory is ``<group>/<env>__seed<seed + m>``."""
    seed = config.seed + m
    return dataclasses.replace(
        config, seed=seed, seeds=1, member_processes=0, run_name=f"{env_slug(config.env)}__seed{seed}"
    )


def default_group_name(config: TrainConfig) -> str:
    last = config.seed + config.seeds - 1
    return f"{env_slug(config.env)}__seeds{config.seed}-{last}__{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class PopulationTrainer:
    """Trains ``config.seeds`` members side by side; see the module docstring.

    The run directories are ``<logdir>/<group>/<env>__seed<k>``; ``<group>`` is ``run_name`` when
    given, else ``<env>__seeds<first>-<last>__<time>``. ``member_range`` trains only those members
    of the group (one slice of :mod:`~trpo_torchrl.app.member_processes`); ``on_iteration(iteration,
    total, rows)`` replaces the printed progress line, and ``at_boundary(signum)``, when set, decides
    at each iteration boundary which signal stops the run there (0: none) from the one this process
    received.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        group_dir: Path | None = None,
        members: list[Trainer] | None = None,
        member_range: range | None = None,
    ):
        self.config = config.validate()
        self.group_dir = Path(group_dir or Path(config.logdir) / (config.run_name or default_group_name(config)))
        if members is None:
            members = []
            for m in member_range or range(config.seeds):
                member = member_config(config, m)
                members.append(Trainer(member, run_dir=self.group_dir / member.run_name))
        self.members: list[Trainer] = members
        self.on_iteration = None
        self.at_boundary = None
        # what the members run: a space the direct collector does not step switches each to "sync"
        # (and to stepping in this process)
        ran = members[0].config
        self.config = dataclasses.replace(self.config, collector=ran.collector, env_workers=ran.env_workers)
        actors = [t.actor for t in self.members]
        # the stack is the update's working copy; each member's actor stays the one its collector runs
        self.params = TensorDict.from_modules(*actors, as_module=True)
        first = self.members[0].actor_step
        self.update = PopulationTrustRegionUpdate(
            self.members[0].loss,
            self.params,
            **config.trust_region_kwargs(),
            generator=first.generator,
        )
        # one collection loop for every member (each member's collector keeps its carried step,
        # so each member's checkpoint holds its own, as a single run's does)
        self.collection = (
            PopulationCollector([t.collector for t in self.members], env_threads=config.env_threads)
            if all(isinstance(t.collector, DirectCollector) for t in self.members)
            else None
        )

    def next_batches(self) -> list[TensorDictBase]:
        """Every member's next on-policy batch, ``[environments, time]`` on its learner's device."""
        if self.collection is None:
            return [trainer.next_batch() for trainer in self.members]
        return [batch.to(t.device) for batch, t in zip(self.collection.collect(), self.members)]

    @torch.no_grad()
    def _gather(self) -> None:
        """Members' current parameters and buffers (normaliser statistics) into the stack."""
        for m, trainer in enumerate(self.members):
            self.params[m].update_(TensorDict.from_module(trainer.actor))

    @torch.no_grad()
    def _scatter(self) -> None:
        """The stack's updated parameters back into each member's own actor (in place)."""
        for m, trainer in enumerate(self.members):
            TensorDict.from_module(trainer.actor).update_(self.params[m])

    def step(self, batches: list[TensorDictBase]) -> list[dict]:
        """One iteration of every member on its own batch, their actor steps batched; returns each
        member's metrics."""
        returns = [trainer.before_actor_step(batch) for trainer, batch in zip(self.members, batches)]
        self._gather()
        actor = self.update(torch.stack(list(batches)))  # 2. every member's trust-region step at once
        self._scatter()
        critics = [None] * len(self.members)
        fits = [trainer.critic_fit for trainer in self.members]
        if all(fit is not None for fit in fits):  # 3. every member's critic fit in one call
            critics = fit_critics(fits, batches)
        return [
            trainer.after_actor_step(batch, episode_returns, {k: actor[k][m] for k in ACTOR_METRICS}, critics[m])
            for m, (trainer, batch, episode_returns) in enumerate(zip(self.members, batches, returns))
        ]

    def train(self) -> list[RunResult]:
        """Trains every member to ``total_frames``; checkpoints and logs as single runs do."""
        config = self.config
        self.group_dir.mkdir(parents=True, exist_ok=True)
        if len(self.members) == config.seeds:  # a slice's process leaves the group's file to its parent
            save_yaml(config, self.group_dir / "config.yaml")
        for trainer in self.members:
            save_yaml(trainer.config, trainer.run_dir / "config.yaml")
        total = self.members[0].total_iterations
        # one set of signal handlers for the group: a signal stops every member at the same boundary,
        # and a member's checkpoint write is not interrupted (each member's save marks it)
        stop = StopRequest()
        for trainer in self.members:
            trainer.stop_request = stop
        try:
            with stop:
                return self._loop(total, stop)
        except KeyboardInterrupt:
            return [trainer.stop_interrupted() for trainer in self.members]
        except BaseException:
            for trainer in self.members:  # no environment worker process outlives a failed run
                trainer.shutdown_after_error()
            raise
        finally:
            if self.collection is not None:
                self.collection.shutdown()

    def _loop(self, total: int, stop: StopRequest) -> list[RunResult]:
        """The iterations; between two of them, a stop that SIGTERM or a first Ctrl-C asked for."""
        config = self.config
        while self.members[0].iteration < total:
            signum = stop.signum if self.at_boundary is None else self.at_boundary(stop.signum)
            if signum:
                return [trainer.stop_at_boundary(signum) for trainer in self.members]
            start = time.perf_counter()
            batches = self.next_batches()
            rows = self.step(batches)
            dt = time.perf_counter() - start
            frames = sum(batch.numel() for batch in batches)
            for trainer, batch, row in zip(self.members, batches, rows):
                # the members share the wall clock: each is charged its share of the iteration
                trainer.record(row, batch.numel(), dt / len(self.members), frames / dt)
            if self.on_iteration is not None:
                self.on_iteration(self.members[0].iteration, total, rows)
            elif config.progress:
                print(progress_line(self.members[0].iteration, total, rows), flush=True)
        return [trainer.finish() for trainer in self.members]


def progress_line(iteration: int, total: int, rows: list[dict]) -> str:
    """The population's line of one iteration: the members' mean train return, steps accepted."""
    mean = sum(r["train_return"] for r in rows) / len(rows)
    accepted = sum(r["step_accepted"] for r in rows)
    return f"iteration {iteration}/{total}: mean train return {mean:.1f}, accepted {accepted:.0f}/{len(rows)}"


def population_group(path: str | Path) -> TrainConfig | None:
    """The config of the ``--seeds M`` group whose folder is ``path`` (its ``config.yaml`` says
    ``seeds`` > 1), or None when ``path`` is something else (a run directory, a checkpoint)."""
    path = Path(path)
    if not (path / "config.yaml").is_file() or (path / CHECKPOINT_DIR).exists():
        return None
    data = load_yaml(path / "config.yaml")
    if not isinstance(data.get("seeds"), int) or data["seeds"] < 2:
        return None
    return config_from_dict(data)


def group_checkpoints(group_dir: str | Path, *, trust: bool = False) -> tuple[TrainConfig, list[Path], dict]:
    """The ``--seeds M`` group saved under ``group_dir``: its config, each member's checkpoint
    (``final.pt``, else ``last.pt``), and the iteration and frames they are all at. The members step
    together, so they continue as one population only from one iteration: anything else is an error."""
    group_dir = Path(group_dir).resolve()
    group = population_group(group_dir)
    if group is None:
        raise ConfigError(f"{str(group_dir)!r} is not a --seeds group folder (its config.yaml does not say seeds > 1)")
    dirs = [group_dir / member_config(group, m).run_name for m in range(group.seeds)]
    checkpoints = [resolve_checkpoint(d) for d in dirs]
    states = {d.name: load_checkpoint(c, trust=trust) for d, c in zip(dirs, checkpoints)}
    iterations = {name: state["iteration"] for name, state in states.items()}
    if len(set(iterations.values())) > 1:
        found = ", ".join(f"{name} at {it}" for name, it in iterations.items())
        raise CheckpointError(
            f"the members of {str(group_dir)!r} have checkpoints at different iterations ({found}); "
            f"resume each member's run directory on its own, or train the group anew"
        )
    first = next(iter(states.values()))
    return group, checkpoints, {"iteration": first["iteration"], "frames": first["frames"]}


def resume_population(
    group_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    trust: bool = False,
    member_range: range | None = None,
    checked: tuple[TrainConfig, list[Path], dict] | None = None,
) -> PopulationTrainer:
    """The population saved under ``group_dir`` (or the members ``member_range`` of it), every member
    in the state of its own checkpoint, training on in its run directory: it continues exactly as the
    uninterrupted population would. ``overrides`` are those a single run's resume takes, and
    ``member_processes``; ``checked`` is what :func:`group_checkpoints` returned, when the caller
    already read the group."""
    group_dir = Path(group_dir).resolve()
    group, checkpoints, _ = checked or group_checkpoints(group_dir, trust=trust)
    overrides = overrides or {}
    member_overrides = {k: v for k, v in overrides.items() if k.replace("-", "_") != "member_processes"}
    picked = member_range or range(group.seeds)
    members = [resume_trainer(checkpoints[m], member_overrides, trust=trust) for m in picked]
    config = dataclasses.replace(
        members[0].config,
        seed=group.seed,
        seeds=group.seeds,
        run_name=group_dir.name,
        logdir=str(group_dir.parent),
        member_processes=resumed_group_config(group, overrides).member_processes,
    )
    return PopulationTrainer(config.validate(), group_dir=group_dir, members=members)


def resumed_group_config(group: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """The group's config with the overrides a resume takes (a single run's, and ``member_processes``);
    the members refuse any other."""
    resumable = RESUME_OVERRIDES | {"member_processes"}
    changes = {k: v for k, v in overrides.items() if k.replace("-", "_") in resumable}
    return apply_overrides(group, changes, "--resume").validate()


def train_population(config: TrainConfig) -> int:
    """The ``train --seeds M`` command: trains (in ``member_processes`` processes), plots the group,
    prints where everything is."""
    from .member_processes import member_slices, resolve_member_processes, train_in_processes

    processes = resolve_member_processes(config)
    where = ""
    if processes > 1:
        slices = ", ".join(_seed_range(config, r) for r in member_slices(config.seeds, processes))
        where = f" in {processes} processes (seeds {slices})"
    note = (
        f"training {config.env} with {config.seeds} seeds ({config.seed}..{config.seed + config.seeds - 1}) "
        f"for {config.frames_note()} each{where}"
    )
    if processes == 1:
        trainer = PopulationTrainer(config)
        print(f"{note} -> {trainer.group_dir}")
        return run_population(trainer)
    group_dir = Path(config.logdir) / (config.run_name or default_group_name(config))
    print(f"{note} -> {group_dir}", flush=True)
    return report_population(train_in_processes(config, group_dir, processes), group_dir)


def resume_group(group_dir: str | Path, overrides: dict[str, Any], *, trust: bool = False) -> int:
    """``train --resume GROUP_DIR``: every member of the group goes on from its checkpoint (in
    ``member_processes`` processes, the group's own or the one given now)."""
    from .member_processes import resolve_member_processes, train_in_processes

    group_dir = Path(group_dir).resolve()
    checked = group_checkpoints(group_dir, trust=trust)  # every checkpoint read once, here
    # what the command's process uses: progress lines, the group's config.yaml, how many processes
    config = resumed_group_config(checked[0], overrides)
    processes = resolve_member_processes(config)
    at = checked[2]
    print(f"resuming {group_dir} at iteration {at['iteration']} ({at['frames']} frames each)", flush=True)
    if processes == 1:
        return run_population(resume_population(group_dir, overrides, trust=trust, checked=checked))
    resume = (dict(overrides), trust, checked)
    return report_population(train_in_processes(config, group_dir, processes, resume=resume), group_dir)


def _seed_range(config: TrainConfig, members: range) -> str:
    first, last = config.seed + members.start, config.seed + members.stop - 1
    return str(first) if first == last else f"{first}-{last}"


def run_population(trainer: PopulationTrainer) -> int:
    """Trains a (new or resumed) population in this process, plots the group, prints where
    everything is."""
    return report_population(trainer.train(), trainer.group_dir)


def report_population(results: list[RunResult], group_dir: Path) -> int:
    """After training: the stop's status, or the group's curves and each member's line."""
    if any(r.interrupted for r in results):
        print(f"\ninterrupted: checkpoints written under {group_dir} (continue with --resume {group_dir})")
        return next(r for r in results if r.interrupted).exit_status  # 130 after Ctrl-C, 143 after SIGTERM
    from .plot import curve_after_training

    curve = curve_after_training([group_dir], group_dir / "curves.png")
    for r in results:
        line = f"{r.run_dir.name}: {r.frames} frames, checkpoint {r.checkpoint}"
        if r.eval_mean is not None:
            line += f", evaluation mean_return={r.eval_mean:.2f} std_return={r.eval_std:.2f}"
        print(line)
    print(f"curves: {curve}")
    return 0
