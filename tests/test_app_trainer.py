"""The Trainer's jobs as the command line meets them: a run prints only the app's own lines, a
library bug keeps its traceback, and a population's interrupted members point at checkpoints that
exist."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import trpo_torchrl.app.train as train_module
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.config import build_config
from trpo_torchrl.app.population import PopulationTrainer
from trpo_torchrl.app.train import Trainer

TINY = [
    "--env",
    "CartPole-v1",
    "--num-envs",
    "2",
    "--steps-per-env",
    "32",
    "--critic-epochs",
    "1",
    "--total-frames",
    "64",
    "--progress",
    "false",
    "--logger",
    "none",
]


@pytest.mark.slow
def test_a_run_prints_only_its_own_lines(tmp_path):
    # TorchRL says "The info_dict_reader does not have specs..." and "check_env_specs succeeded!"
    # each time a vector env is wrapped (the training env and the evaluation's)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trpo_torchrl",
            "train",
            *TINY,
            "--eval-episodes",
            "1",
            "--logdir",
            str(tmp_path),
            "--run-name",
            "r",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "done: 64 frames" in text
    assert "info_dict_reader" not in text and "check_env_specs" not in text and "[torchrl]" not in text


def test_a_library_error_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    def broken(self, batch):
        raise ValueError("a bug inside the library")

    monkeypatch.setattr(Trainer, "step", broken)
    with pytest.raises(ValueError, match="a bug inside the library"):
        main(["train", *TINY, "--eval-episodes", "0", "--logdir", str(tmp_path), "--run-name", "r"])
    # while what the user asked for is still one line and exit status 2
    assert main(["train", *TINY, "--max-kl", "-1", "--logdir", str(tmp_path), "--run-name", "s"]) == 2
    assert "max_kl=-1.0 must be > 0" in capsys.readouterr().err


def test_an_interrupted_population_points_at_its_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "CHECKPOINT_DIR", "saved")  # one name, used everywhere
    config = build_config(
        {
            "env": "CartPole-v1",
            "logdir": str(tmp_path),
            "run_name": "g",
            "num_envs": 2,
            "steps_per_env": 32,
            "critic_epochs": 1,
            "total_frames": 192,
            "seeds": 2,
            "eval_episodes": 0,
            "progress": False,
            "logger": "none",
            "checkpoint_every": 0,
        }
    )
    trainer = PopulationTrainer(config)
    calls, next_batches = [0], PopulationTrainer.next_batches

    def interrupted(self):
        calls[0] += 1
        if calls[0] == 2:  # the second iteration's batches
            raise KeyboardInterrupt
        return next_batches(self)

    monkeypatch.setattr(PopulationTrainer, "next_batches", interrupted)
    results = trainer.train()
    assert [r.interrupted for r in results] == [True, True]
    assert [r.iterations for r in results] == [1, 1]
    for r in results:
        assert r.checkpoint == r.run_dir / "saved" / "last.pt" and r.checkpoint.is_file()
