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
from tensordict import TensorDict

from trpo_torchrl import PopulationTrustRegionUpdate

from .config import TrainConfig, save_yaml
from .train import RunResult, Trainer

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

    def _iteration(self, batches) -> list[dict]:
        rows = []
        for trainer, batch in zip(self.members, batches):
            done = batch["next", "done"]
            returns = batch["next", "episode_reward"][done]
            if trainer.reward_scaler is not None:
                batch["next", "reward"] = trainer.reward_scaler(batch["next", "reward"], done)
            with torch.no_grad():
                trainer.loss.value_estimator(batch)  # 1. each member's advantages, from its own critic
            rows.append({
                "train_return": returns.mean().item() if returns.numel() else float("nan"),
                "train_episodes": int(returns.numel()),
            })
        self._gather()
        actor = self.update(torch.stack(list(batches)))  # 2. every member's trust-region step at once
        self._scatter()
        for m, (trainer, batch, row) in enumerate(zip(self.members, batches, rows)):
            critic = trainer.critic_fit(batch) if trainer.critic_fit else None  # 3. each critic
            trainer.normalizer.update(batch["observation"])
            trainer.collector.update_policy_weights_()
            row.update(
                kl=actor["kl"][m].item(),
                surrogate_improvement=(actor["surrogate_after"][m] - actor["surrogate_before"][m]).item(),
                step_accepted=float(actor["step_accepted"][m]),
                backtrack_steps=float(actor["backtrack_steps"][m]),
                cg_residual=float(actor["cg_residual"][m]),
            )
            if critic is not None:
                row["critic_loss"] = critic["loss_critic"].item()
                row["explained_variance"] = critic["explained_variance"].item()
        return rows

    def train(self) -> list[RunResult]:
        """Trains every member to ``total_frames``; checkpoints and logs as single runs do."""
        config = self.config
        self.group_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config, self.group_dir / "config.yaml")
        for trainer in self.members:
            save_yaml(trainer.config, trainer.run_dir / "config.yaml")
        iterators = [iter(t.collector) for t in self.members]
        total = self.members[0].total_iterations
        try:
            while self.members[0].iteration < total:
                start = time.perf_counter()
                batches = [next(it) for it in iterators]
                rows = self._iteration(batches)
                dt = time.perf_counter() - start
                for trainer, batch, row in zip(self.members, batches, rows):
                    trainer.iteration += 1
                    trainer.frames += batch.numel()
                    # the members share the wall clock: each is charged its share of the iteration
                    trainer.elapsed += dt / len(self.members)
                    row.update(iteration=trainer.iteration, frames=trainer.frames, time_s=trainer.elapsed,
                               fps=batch.numel() * len(self.members) / dt)
                    if config.eval_every and trainer.iteration % config.eval_every == 0 and config.eval_episodes:
                        row["eval_return"], row["eval_return_std"] = trainer.evaluate()
                    trainer._log(row)
                    if config.checkpoint_every and trainer.iteration % config.checkpoint_every == 0:
                        trainer.save("last.pt")
                if config.progress:
                    mean = sum(r["train_return"] for r in rows) / len(rows)
                    print(f"iteration {self.members[0].iteration}/{total}: mean train return {mean:.1f}, "
                          f"accepted {sum(r['step_accepted'] for r in rows):.0f}/{len(rows)}", flush=True)
        except KeyboardInterrupt:
            for trainer in self.members:
                trainer.save("last.pt")
                trainer.collector.shutdown()
            return [RunResult(t.run_dir, t.run_dir / "checkpoints" / "last.pt", t.frames, t.iteration, None, None, True)
                    for t in self.members]
        results = []
        for trainer in self.members:
            checkpoint = trainer.save("final.pt")
            trainer.save("last.pt")
            trainer.collector.shutdown()
            eval_mean = eval_std = None
            if config.eval_episodes:
                eval_mean, eval_std = trainer.evaluate()
                trainer._log({"iteration": trainer.iteration, "frames": trainer.frames, "time_s": trainer.elapsed,
                              "eval_return": eval_mean, "eval_return_std": eval_std})
            results.append(RunResult(trainer.run_dir, checkpoint, trainer.frames, trainer.iteration, eval_mean, eval_std))
        return results


def train_population(config: TrainConfig) -> int:
    """The ``train --seeds M`` command: trains, plots the group, prints where everything is."""
    trainer = PopulationTrainer(config)
    print(f"training {config.env} with {config.seeds} seeds ({config.seed}..{config.seed + config.seeds - 1}) "
          f"for {config.frames_note()} each -> {trainer.group_dir}")
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
