"""``trpo-torchrl train --seeds M``: per-seed run directories that eval and plot read like single runs."""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing

import pytest
import torch
from tensordict import TensorDict

from trpo_torchrl.app.checkpoint import load_checkpoint
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.config import build_config
from trpo_torchrl.app.population import PopulationTrainer

TINY = [
    "--num-envs",
    "2",
    "--steps-per-env",
    "64",
    "--critic-epochs",
    "1",
    "--critic-minibatch",
    "128",
    "--progress",
    "false",
]


@pytest.mark.slow
def test_cli_two_seeds_end_to_end(tmp_path, capsys):
    argv = [
        "train",
        "--logdir",
        str(tmp_path),
        "--run-name",
        "group",
        "--env",
        "CartPole-v1",
        *TINY,
        "--total-frames",
        "256",
        "--seeds",
        "2",
        "--eval-episodes",
        "2",
        "--normalize-observations",
        "true",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    group = tmp_path / "group"
    runs = [group / "CartPole-v1__seed0", group / "CartPole-v1__seed1"]
    for run in runs:
        for name in ("progress.csv", "config.yaml", "checkpoints/final.pt", "checkpoints/last.pt"):
            assert (run / name).is_file(), (run, name)
        assert str(run / "checkpoints" / "final.pt") in out
        rows = list(csv.DictReader((run / "progress.csv").open()))
        assert [r["iteration"] for r in rows] == ["1", "2", "2"]  # two iterations of 128 frames, then the evaluation
        assert all(float(r["kl"]) > 0 for r in rows[:2] if r["step_accepted"] == "1.0")
    states = [load_checkpoint(run / "checkpoints" / "final.pt") for run in runs]
    # each checkpoint is a single run of its own seed, resumable and evaluable as one
    assert [s["config"]["seed"] for s in states] == [0, 1]
    assert all(s["config"]["seeds"] == 1 for s in states)
    # each member kept its own normaliser statistics: its own 256 frames, not the population's 512
    counts = [v for s in states for k, v in s["actor"].items() if k.endswith("moments.count")]
    assert len(counts) == 2 and all(abs(float(c) - 256) < 1e-3 for c in counts)
    means = [v for s in states for k, v in s["actor"].items() if k.endswith("moments.mean")]
    assert not torch.equal(means[0], means[1])
    assert (group / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["eval", "--checkpoint", str(runs[1]), "--episodes", "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mean_return=")
    # plot on the group folder finds both members' runs (one group, mean ± std)
    assert main(["plot", str(group), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_population_trainer_moves_each_members_own_actor(tmp_path):
    config = build_config(
        {
            "env": "CartPole-v1",
            "logdir": str(tmp_path),
            "run_name": "g",
            "num_envs": 2,
            "steps_per_env": 64,
            "critic_epochs": 1,
            "total_frames": 128,
            "seeds": 2,
            "eval_episodes": 0,
            "progress": False,
            "logger": "none",
        }
    )
    trainer = PopulationTrainer(config)
    before = [TensorDict.from_module(t.actor).clone() for t in trainer.members]
    trainer.train()
    for m, member in enumerate(trainer.members):
        after = TensorDict.from_module(member.actor)
        # the batched step reached the actor the member's collector runs, and it is the stack's row m
        assert not (after == before[m]).all()
        assert (after == trainer.params[m]).all()
    assert not (
        TensorDict.from_module(trainer.members[0].actor) == TensorDict.from_module(trainer.members[1].actor)
    ).all()


def _group_argv(tmp_path, name, frames, *extra):
    return [
        "train",
        "--logdir",
        str(tmp_path),
        "--run-name",
        name,
        "--env",
        "CartPole-v1",
        *TINY,
        "--total-frames",
        str(frames),
        "--seeds",
        "2",
        "--eval-episodes",
        "0",
        "--normalize-observations",
        "true",
        "--normalize-rewards",
        "true",
        "--env-threads",  # the population's sub-environments stepped on two threads: the same runs
        "2",
        *extra,
    ]


def _member_states(group):
    return [load_checkpoint(group / f"CartPole-v1__seed{s}" / "checkpoints" / "final.pt") for s in (0, 1)]


@pytest.mark.slow
def test_an_interrupted_population_resumes_exactly(tmp_path, monkeypatch, capsys):
    assert main(_group_argv(tmp_path, "full", 4 * 128)) == 0
    next_batches = PopulationTrainer.next_batches

    def interrupted(self):  # Ctrl-C while the third iteration collects
        if self.members[0].iteration == 2:
            raise KeyboardInterrupt
        return next_batches(self)

    monkeypatch.setattr(PopulationTrainer, "next_batches", interrupted)
    assert main(_group_argv(tmp_path, "part", 4 * 128)) == 130
    monkeypatch.setattr(PopulationTrainer, "next_batches", next_batches)
    capsys.readouterr()
    # the group folder resumes the whole population, each member from its own checkpoint
    assert main(["train", "--resume", str(tmp_path / "part")]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "iteration 2" in out
    full, resumed = _member_states(tmp_path / "full"), _member_states(tmp_path / "part")
    for a, b in zip(full, resumed):
        assert b["iteration"] == 4
        for part in ("actor", "critic"):
            for key in a[part]:
                assert torch.equal(a[part][key], b[part][key]), (part, key)
        for k, v in a["critic_optimizer"]["state"].items():
            assert torch.equal(v["exp_avg"], b["critic_optimizer"]["state"][k]["exp_avg"])
    rows = list(csv.DictReader((tmp_path / "part" / "CartPole-v1__seed1" / "progress.csv").open()))
    assert [r["iteration"] for r in rows] == ["1", "2", "3", "4"]


def test_resuming_a_population_refuses_members_at_different_iterations(tmp_path, capsys):
    assert main(_group_argv(tmp_path, "g", 2 * 128)) == 0
    # a member whose checkpoint is from another point: the population cannot continue as one
    stale = tmp_path / "g" / "CartPole-v1__seed1" / "checkpoints"
    (stale / "final.pt").unlink()
    state = load_checkpoint(stale / "last.pt")
    state["iteration"] = 1
    from trpo_torchrl.app.checkpoint import save_checkpoint

    save_checkpoint(stale / "last.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "g"), "--total-frames", "512"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different iterations" in err and "CartPole-v1__seed1" in err


def _float64(trainer):
    """A test-only cast of a member's actor and critic (the normaliser they share included) to
    float64, in place, before its first iteration: the same for a single run and a member."""
    trainer.actor.double()
    trainer.critic.double()
    return trainer


def _float64_batch(batch):
    """The batch's float32 entries (observations, rewards: what the environments gave) in float64,
    exactly, so the update and the critic fit run in float64 too."""
    return batch.apply(lambda x: x.double() if x.dtype == torch.float32 else x)


@pytest.mark.parametrize("env_workers", [0, 2])
@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
def test_each_member_takes_the_first_iteration_of_its_own_single_run(tmp_path, env, env_workers):
    """Member m of `--seeds 3` collects the batch, and takes the actor step and critic fit, of a
    single run with seed + m (float64, to 1e-10): its own environments, action draws, normaliser
    and reward scaler, through the batched collection and the batched update (with
    ``env_workers``: the members' environments stepped in worker processes, the single runs' here)."""
    from trpo_torchrl.app.population import member_config
    from trpo_torchrl.app.train import Trainer
    from trpo_torchrl.collectors import PopulationCollector

    from ._app_runs import app_config, trainer_parameters

    # a well-conditioned CG of few iterations: run into its rounding regime (the CartPole preset's
    # damping 1e-3, 15 iterations) CG magnifies the last-bit differences between the population's
    # batched products and a single run's to ~1e-7, which says nothing about what is checked here
    config = app_config(
        tmp_path,
        "group",
        128,
        env=env,
        seed=5,
        seeds=3,
        normalize_observations=True,
        normalize_rewards=True,
        damping=0.1,
        cg_iters=5,
        env_workers=env_workers,
    )
    group = tmp_path / "group"
    members = []
    for m in range(config.seeds):
        member = member_config(config, m)
        members.append(_float64(Trainer(member, run_dir=group / member.run_name)))
    population = PopulationTrainer(config, group_dir=group, members=members)
    assert isinstance(population.collection, PopulationCollector)
    batches = [_float64_batch(b) for b in population.next_batches()]
    population.step(batches)
    for m, member in enumerate(population.members):
        single_config = dataclasses.replace(member_config(config, m), run_name=f"single{m}", env_workers=0)
        single = _float64(Trainer(single_config))
        batch = _float64_batch(single.next_batch())
        single.step(batch)
        # the whole batch after the iteration: observations, actions, log-probabilities, rewards
        # (scaled), advantages and value targets
        assert set(batch.keys(True, True)) == set(batches[m].keys(True, True))
        assert bool(batch["next", "done"].any()) or env == "Pendulum-v1"
        for key in batch.keys(True, True):
            torch.testing.assert_close(batches[m][key], batch[key], rtol=0, atol=1e-10, msg=f"member {m}: {key}")
        assert batch["loc" if env == "Pendulum-v1" else "logits"].dtype == torch.float64
        # the actor after the step, the critic after the fit, the normaliser statistics after both
        want, got = trainer_parameters(single), trainer_parameters(member)
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-10, msg=f"member {m}: {key}")
        single.shutdown()
    # the members differ: each is its own run
    assert not torch.equal(batches[0]["observation"], batches[1]["observation"])
    population.collection.shutdown()
    for member in population.members:
        member.shutdown()
    assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_seeds_with_a_space_the_direct_collector_does_not_step(tmp_path, capsys):
    """A Dict observation switches every member to TorchRL's Collector: the population collects
    member by member, and the group's config.yaml records the collector the members ran."""
    import yaml

    import tests._envs  # noqa: F401 - registers DictObservation-v0

    argv = ["train", "--env", "DictObservation-v0", "--logdir", str(tmp_path), "--run-name", "g", *TINY]
    assert main([*argv, "--total-frames", "256", "--seeds", "2", "--eval-episodes", "1"]) == 0
    assert "collector: sync (TorchRL's Collector)" in capsys.readouterr().out
    group = tmp_path / "g"
    for config in [group / "config.yaml", *(group / f"DictObservation-v0__seed{s}" / "config.yaml" for s in (0, 1))]:
        assert yaml.safe_load(config.read_text())["collector"] == "sync", config
    for s in (0, 1):
        state = load_checkpoint(group / f"DictObservation-v0__seed{s}" / "checkpoints" / "final.pt")
        assert state["iteration"] == 2 and state["config"]["seed"] == s
