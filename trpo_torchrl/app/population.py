"""``trpo-torchrl train --seeds M``: M independent runs in one process, their actor steps batched.

Each member is an ordinary :class:`~trpo_torchrl.app.train.Trainer` with its own seed
(``seed + m``), environments, collector, observation normaliser, reward scaler, critic and critic
optimiser, and its own run directory (``progress.csv``, ``config.yaml``, checkpoints) — so ``eval``
and ``--resume`` treat a member exactly like a single run, and ``plot`` on the group folder draws the
mean ± std across the members. What the members share is the TRPO actor step: their batches are
stacked and one :class:`~trpo_torchrl.PopulationTrustRegionUpdate` gives every member its own trust
region in one batched update. The critics are fitted one after another with their own CriticFit.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase

from trpo_torchrl import PopulationTrustRegionUpdate

from .config import TrainConfig, save_yaml
from .train import ACTOR_METRICS, RunResult, Trainer

__all__ = ["PopulationTrainer", "train_population"]


def default_group_name(config: TrainConfig) -> str:
    last = config.seed + config.seeds - 1
    return f"{config.env}__seeds{config.seed}-{last}__{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class PopulationTrainer:
    """Trains ``config.seeds`` members side by side; see the module docstring.

    The run directories are ``<logdir>/<group>/<env>__seed<k>``; ``<group>`` is ``run_name`` when
    given, else ``<env>__seeds<first>-<last>__<time>``.
    """

    def __init__(self, config: TrainConfig):
        self.config = config.validate()
        self.group_dir = Path(config.logdir) / (config.run_name or default_group_name(config))
        self.members: list[Trainer] = []
        for m in range(config.seeds):
            seed = config.seed + m
            # each member's own config says seeds=1: its checkpoint resumes and evaluates as a single run
            member = dataclasses.replace(config, seed=seed, seeds=1, run_name=f"{config.env}__seed{seed}")
            self.members.append(Trainer(member, run_dir=self.group_dir / member.run_name))
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
        return [
            trainer.after_actor_step(batch, episode_returns, {k: actor[k][m] for k in ACTOR_METRICS})
            for m, (trainer, batch, episode_returns) in enumerate(zip(self.members, batches, returns))
        ]

    def train(self) -> list[RunResult]:
        """Trains every member to ``total_frames``; checkpoints and logs as single runs do."""
        config = self.config
        self.group_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config, self.group_dir / "config.yaml")
        for trainer in self.members:
            save_yaml(trainer.config, trainer.run_dir / "config.yaml")
        total = self.members[0].total_iterations
        try:
            while self.members[0].iteration < total:
                start = time.perf_counter()
                batches = [trainer.next_batch() for trainer in self.members]
                rows = self.step(batches)
                dt = time.perf_counter() - start
                frames = sum(batch.numel() for batch in batches)
                for trainer, batch, row in zip(self.members, batches, rows):
                    # the members share the wall clock: each is charged its share of the iteration
                    trainer.record(row, batch.numel(), dt / len(self.members), frames / dt)
                if config.progress:
                    mean = sum(r["train_return"] for r in rows) / len(rows)
                    print(
                        f"iteration {self.members[0].iteration}/{total}: mean train return {mean:.1f}, "
                        f"accepted {sum(r['step_accepted'] for r in rows):.0f}/{len(rows)}",
                        flush=True,
                    )
        except KeyboardInterrupt:
            return [trainer.stop_interrupted() for trainer in self.members]
        return [trainer.finish() for trainer in self.members]


def train_population(config: TrainConfig) -> int:
    """The ``train --seeds M`` command: trains, plots the group, prints where everything is."""
    trainer = PopulationTrainer(config)
    print(
        f"training {config.env} with {config.seeds} seeds ({config.seed}..{config.seed + config.seeds - 1}) "
        f"for {config.frames_note()} each -> {trainer.group_dir}"
    )
    results = trainer.train()
    if any(r.interrupted for r in results):
        print(f"\ninterrupted: checkpoints written under {trainer.group_dir}")
        return 130
    from .plot import curve_after_training

    curve = curve_after_training([trainer.group_dir], trainer.group_dir / "curves.png")
    for r in results:
        line = f"{r.run_dir.name}: {r.frames} frames, checkpoint {r.checkpoint}"
        if r.eval_mean is not None:
            line += f", evaluation mean_return={r.eval_mean:.2f} std_return={r.eval_std:.2f}"
        print(line)
    print(f"curves: {curve}")
    return 0
