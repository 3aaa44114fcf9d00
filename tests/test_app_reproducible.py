"""What the app promises a fresh machine prints: the run's own evaluation and ``eval`` on its final
checkpoint agree by default, and the same command run twice writes bit-identical checkpoints."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests._app_runs import train_tiny
from trpo_torchrl.app.checkpoint import load_checkpoint
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.config import FIELDS


def _final_eval_row(run):
    rows = list(csv.DictReader((run / "progress.csv").open()))
    return float(rows[-1]["eval_return"])


def test_eval_on_the_final_checkpoint_prints_the_runs_own_evaluation(tmp_path, capsys):
    assert train_tiny(tmp_path, "--total-frames", "384", "--eval-episodes", "5", "--seed", "3") == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    printed = next(line for line in out.splitlines() if line.startswith("evaluation:"))
    assert "seed=10003" in printed  # the run says which evaluation seed it used
    assert main(["eval", "--checkpoint", str(run), "--episodes", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["seed"] == 10003
    assert result["mean_return"] == _final_eval_row(run)  # the same episodes, the same number
    assert f"mean_return={result['mean_return']:.2f}" in printed
    # another seed is another set of episodes, and the line says which
    assert main(["eval", "--checkpoint", str(run), "--episodes", "5", "--seed", "7"]) == 0
    assert "seed=7 " in capsys.readouterr().out


def test_threads_default_is_one():
    # one thread: the run's numbers do not depend on how many cores the machine has
    assert FIELDS["threads"].default == 1


@pytest.mark.slow
def test_the_same_command_twice_writes_bit_identical_checkpoints(tmp_path):
    runs = []
    for name in ("a", "b"):
        argv = ["--total-frames", "384", "--eval-episodes", "0", "--normalize-observations", "true"]
        assert main(["train", "--logdir", str(tmp_path), "--run-name", name, *_tiny(), *argv]) == 0
        runs.append(load_checkpoint(tmp_path / name))
    for part in ("actor", "critic"):
        a, b = runs[0][part], runs[1][part]
        assert a.keys() == b.keys() and len(a) > 0
        for key in a:
            assert torch.equal(a[key], b[key]), (part, key)
    # and the run moved: the comparison is of trained tensors, not of the initial ones
    assert runs[0]["iteration"] == 3


def _tiny():
    from tests._app_runs import TINY

    return TINY


@pytest.mark.slow
def test_multisync_resume_continues_from_the_same_parameters_with_fresh_simulator_states(tmp_path, monkeypatch):
    from trpo_torchrl.app.train import Trainer, resume_trainer

    first_observations, original = [], Trainer.step

    def on_policy(self, batch):  # each batch is the learner's current policy's, and its first step is kept
        with torch.no_grad():
            log_prob = self.actor.get_dist(batch.select("observation").copy()).log_prob(batch["action"])
        torch.testing.assert_close(log_prob.reshape(batch.shape), batch["action_log_prob"].reshape(batch.shape))
        first_observations.append(batch["observation"][:, 0].clone())
        return original(self, batch)

    monkeypatch.setattr(Trainer, "step", on_policy)
    small = ["--num-envs", "2", "--steps-per-env", "32", "--critic-epochs", "1", "--critic-minibatch", "64"]
    argv = [*small, "--progress", "false", "--eval-episodes", "0", "--logger", "none"]
    argv += ["--collector", "multisync", "--workers", "2", "--total-frames", "128"]
    assert main(["train", "--logdir", str(tmp_path), "--run-name", "run", *argv]) == 0
    state = load_checkpoint(tmp_path / "run")
    # the workers' simulators are out of reach: nothing of them is saved
    assert state["iteration"] == 2 and state["env_state"] is None and state["carrier"] is None
    resumed = resume_trainer(tmp_path / "run", {"total_frames": 192})
    try:
        # the same parameters: actor (with its normaliser statistics), critic
        for part, module in (("actor", resumed.actor), ("critic", resumed.critic)):
            for key, value in module.state_dict().items():
                assert torch.equal(value, state[part][key]), (part, key)
        resumed.train()  # its batch is checked on-policy: the workers run the restored policy
    finally:
        resumed.shutdown()
    assert len(first_observations) == 3
    # fresh simulator states: the workers start new episodes from the run's environment seeds
    assert torch.equal(first_observations[2], first_observations[0])
    assert not torch.equal(first_observations[1], first_observations[0])
