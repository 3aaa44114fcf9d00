"""The training application's checkpoints: a resumed run equals the uninterrupted one bit for bit,
run-directory rules, atomic writes, corrupt and foreign files, the environments' snapshot."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
import torch

from tests._app_runs import app_config, trainer_parameters
from tests._support import needs_mujoco
from trpo_torchrl.app import checkpoint as ckpt
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.config import ConfigError
from trpo_torchrl.app.envs import env_state, load_env_state, make_env
from trpo_torchrl.app.train import Trainer, resume_trainer
from trpo_torchrl.collectors import gym_vector_env


@pytest.mark.parametrize(
    "env,kw",
    [
        ("CartPole-v1", {}),  # the default one-process collector, collector="direct"
        ("CartPole-v1", {"collector": "sync"}),  # TorchRL's Collector
        ("Pendulum-v1", {"normalize_observations": True, "normalize_rewards": True}),
        # MuJoCo state, the float32 observation wrapper and the action clip inside each sub-env
        pytest.param("HalfCheetah-v5", {"normalize_observations": True, "normalize_rewards": True}, marks=needs_mujoco),
        # the simulators stepped, read and restored in worker processes (env_workers)
        ("CartPole-v1", {"env_workers": 1}),
        pytest.param(
            "HalfCheetah-v5",
            {"normalize_observations": True, "normalize_rewards": True, "env_workers": 2},
            marks=needs_mujoco,
        ),
    ],
)
def test_resume_equals_uninterrupted_run(tmp_path, env, kw):
    full = Trainer(app_config(tmp_path, "full", 4 * 128, env=env, **kw))
    full.train()
    part = Trainer(app_config(tmp_path, "part", 2 * 128, env=env, **kw))
    part.train()
    resumed = resume_trainer(part.run_dir / "checkpoints" / "last.pt", {"total_frames": 4 * 128})
    assert resumed.iteration == 2
    resumed.train()
    a, b = trainer_parameters(full), trainer_parameters(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    # and the run really moved: parameters differ from a fresh initialisation
    fresh = trainer_parameters(Trainer(app_config(tmp_path, "fresh", 128, env=env, **kw)))
    assert any(not torch.equal(a[k], fresh[k]) for k in a if k.startswith("a."))


def test_a_checkpoint_from_before_the_collect_generator_resumes(tmp_path):
    # written before runs drew their actions on their own "collect" generator (and before the
    # env_threads option): it loads, and the run goes on from its saved state
    run = Trainer(app_config(tmp_path, "old", 128))
    run.train()
    path = run.run_dir / "checkpoints" / "last.pt"
    state = ckpt.load_checkpoint(path)
    del state["rng"]["generators"]["collect"]
    del state["config"]["env_threads"]
    ckpt.save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    (run.run_dir / "checkpoints" / "final.pt").unlink()
    resumed = resume_trainer(path, {"total_frames": 256})
    assert resumed.iteration == 1 and resumed.config.env_threads == 1
    saved = trainer_parameters(run)
    for key, value in trainer_parameters(resumed).items():
        assert torch.equal(value, saved[key]), key
    assert resumed.train().iterations == 2


def test_resume_from_the_run_directory_writes_into_it(tmp_path):
    first = Trainer(app_config(tmp_path / "logs", "r", 128))
    first.train()
    resumed = resume_trainer(first.run_dir, {"total_frames": 256})
    assert resumed.run_dir == first.run_dir.resolve() and resumed.iteration == 1
    resumed.train()
    with open(first.run_dir / "progress.csv") as f:
        assert [row["iteration"] for row in csv.DictReader(f)] == ["1", "2"]
    state = ckpt.load_checkpoint(first.run_dir / "checkpoints" / "final.pt")
    assert state["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # nothing written beside the logdir


def test_a_new_run_refuses_a_run_directory_that_holds_a_run(tmp_path):
    first = Trainer(app_config(tmp_path, "same", 128, seed=1))
    first.train()
    before = {p.name: p.read_bytes() for p in (first.run_dir / "progress.csv", first.run_dir / "config.yaml")}
    with pytest.raises(ConfigError, match="already holds a run .*--resume"):
        Trainer(app_config(tmp_path, "same", 128, seed=2))
    assert before == {name: (first.run_dir / name).read_bytes() for name in before}
    # the command line says so in one line, without a traceback
    assert (
        main(
            [
                "train",
                "--env",
                "CartPole-v1",
                "--logdir",
                str(tmp_path),
                "--run-name",
                "same",
                "--total-frames",
                "128",
                "--eval-episodes",
                "0",
            ]
        )
        != 0
    )


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, {"config": {}, "actor": {}, "x": 1})

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, {"config": {}, "actor": {}, "x": 2})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_corrupt_and_foreign_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not a trpo_torchrl checkpoint"):
        ckpt.load_checkpoint(foreign)
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and len(err.strip().splitlines()) == 1
    truncated = tmp_path / "truncated.pt"
    ckpt.save_checkpoint(truncated, {"config": {}, "actor": {"w": torch.ones(1000)}})
    truncated.write_bytes(truncated.read_bytes()[:2000])
    assert main(["eval", "--checkpoint", str(truncated)]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    ckpt.save_checkpoint(tmp_path / "bare.pt", {"actor": {}})
    assert main(["eval", "--checkpoint", str(tmp_path / "bare.pt")]) == 2
    assert "lacks config: it is incomplete or was edited" in capsys.readouterr().err


def test_env_snapshot_restores_the_simulators():
    env = make_env("CartPole-v1", 2, seed=3)
    env.rollout(20, break_when_any_done=False)
    saved = pickle.loads(pickle.dumps(env_state(env)))
    venv = gym_vector_env(env)
    actions = np.array([0, 1])
    first = [venv.step(actions)[0] for _ in range(30)]
    load_env_state(env, saved)
    second = [venv.step(actions)[0] for _ in range(30)]
    np.testing.assert_array_equal(np.stack(first), np.stack(second))
