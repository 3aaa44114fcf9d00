"""``--policy lstm|gru`` in the training app: trained from the command line and evaluated for each
action space, the collected batch against a plain-torch re-run of the recurrence, a resumed run equal
to the uninterrupted one, the policy choice through config and checkpoint, and each refusal in one
line before anything is written."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch
from torch import nn

import tests._envs  # noqa: F401 - registers the test tasks
from tests._app_runs import app_config, train_tiny, trainer_parameters
from trpo_torchrl import TRPOLoss
from trpo_torchrl.app.checkpoint import load_checkpoint
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.config import ConfigError, TrainConfig, build_config, config_from_dict
from trpo_torchrl.app.envs import make_vector_env
from trpo_torchrl.app.evaluate import record_video
from trpo_torchrl.app.models import build_models, is_recurrent, recurrent_env_transforms
from trpo_torchrl.app.train import Trainer, resume_trainer

ENVS = "tests._envs:"
SAID = "goes through TorchRL's Collector (collector=sync), which carries its hidden state"


@pytest.mark.parametrize(
    "env_id,policy,rnn_key",
    [
        ("CartPoleNoVel-v1", "lstm", "lstm.weight_hh_l0"),  # Discrete: one-hot categorical
        ("CartPoleNoVel-v1", "gru", "gru.weight_hh_l0"),
        ("PendulumNoVel-v1", "gru", "gru.weight_hh_l0"),  # Box: Gaussian
        (ENVS + "MultiDiscreteMatch-v0", "lstm", "lstm.weight_hh_l0"),
        (ENVS + "MultiBinaryMatch-v0", "gru", "gru.weight_hh_l0"),
    ],
)
def test_recurrent_policy_trains_and_evaluates_from_the_command_line(tmp_path, capsys, env_id, policy, rnn_key):
    argv = ["--env", env_id, "--policy", policy, "--rnn-hidden", "8", "--total-frames", "256"]
    assert train_tiny(tmp_path, *argv, "--eval-episodes", "2") == 0
    out = capsys.readouterr().out
    assert out.count(SAID) == 1
    state = load_checkpoint(tmp_path / "run")
    config = state["config"]
    assert (config["policy"], config["rnn_hidden"], config["collector"]) == (policy, 8, "sync")
    assert state["iteration"] == 2
    (key,) = [k for k in state["actor"] if k.endswith(rnn_key)]
    gates = 4 if policy == "lstm" else 3
    assert state["actor"][key].shape == (gates * 8, 8)
    # eval rebuilds the recurrent policy from the checkpoint's config: the run's own final evaluation
    printed = next(line for line in out.splitlines() if line.startswith("evaluation:"))
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert f"mean_return={result['mean_return']:.2f}" in printed


def test_collected_batch_matches_a_plain_torch_rerun_of_the_lstm(tmp_path):
    trainer = Trainer(app_config(tmp_path, "r", 128, env="CartPoleNoVel-v1", policy="lstm", rnn_hidden=8))
    batch = trainer.next_batch()
    trainer.shutdown()
    assert batch.batch_size == (2, 64)  # [envs, time], as the loss re-runs it
    is_init = batch["is_init"].reshape(2, 64)
    assert bool(is_init[:, 0].all()) and int(is_init.sum()) > 2  # episodes restart inside the rows
    network = trainer.actor.module[0]
    encoder, rnn, head = network[0].module, network[1].lstm, network[2].module
    reference = torch.empty(2, 64)
    with torch.no_grad():
        x = encoder(batch["observation"])
        for b in range(2):
            h = torch.zeros(1, 1, 8)
            c = torch.zeros(1, 1, 8)
            for t in range(64):
                if is_init[b, t]:
                    h, c = torch.zeros_like(h), torch.zeros_like(c)
                out, (h, c) = rnn(x[b, t].reshape(1, 1, -1), (h, c))
                logits = head(out.reshape(-1))
                reference[b, t] = torch.log_softmax(logits, -1)[batch["action"][b, t].argmax()]
    torch.testing.assert_close(batch["action_log_prob"], reference)
    # the state stored at each step is the one the previous step left (zero after a reset)
    carried = batch["next", "recurrent_state_h"][:, :-1] * (~is_init[:, 1:]).reshape(2, 63, 1, 1)
    torch.testing.assert_close(batch["recurrent_state_h"][:, 1:], carried)


def test_resume_equals_uninterrupted_recurrent_run(tmp_path):
    kw = dict(env="CartPoleNoVel-v1", policy="lstm", rnn_hidden=8)
    full = Trainer(app_config(tmp_path, "full", 4 * 128, **kw))
    full.train()
    part = Trainer(app_config(tmp_path, "part", 2 * 128, **kw))
    part.train()
    resumed = resume_trainer(part.run_dir, {"total_frames": 4 * 128})
    assert resumed.iteration == 2
    # the carried step holds the hidden state the next batch starts from
    assert resumed.collection.state_dict()["carrier"]["recurrent_state_h"].abs().sum() > 0
    resumed.train()
    a, b = trainer_parameters(full), trainer_parameters(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    fresh = trainer_parameters(Trainer(app_config(tmp_path, "fresh", 128, **kw)))
    assert any(not torch.equal(a[k], fresh[k]) for k in a if k.startswith("a."))


def test_policy_choice_round_trips_through_config_and_checkpoint_dict():
    config = build_config({"env": "CartPoleNoVel-v1", "policy": "gru", "rnn_hidden": 32})
    back = config_from_dict(config.to_dict())
    assert (back.policy, back.rnn_hidden) == ("gru", 32) and back == config
    # the preset mirrors rl-zoo3's recurrent PPO settings for the task
    preset = build_config({"env": "CartPoleNoVel-v1"})
    assert (preset.policy, preset.rnn_hidden, preset.num_envs, preset.steps_per_env) == ("lstm", 64, 8, 32)
    assert TrainConfig().policy == "auto" and TrainConfig().rnn_hidden == 64


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--env", ENVS + "SmallImage-v0", "--policy", "lstm"],
            "--policy lstm: the observation holds an image ('observation', uint8 7x7x3); the CNN+LSTM "
            "combination is not supported",
        ),
        (["--env", "CartPoleNoVel-v1", "--policy", "gru", "--seeds", "2"], "refuses recurrent actors"),
        (
            ["--env", "CartPoleNoVel-v1", "--policy", "lstm", "--collector", "multisync", "--workers", "2"],
            "only the one-process collector (sync, which direct becomes) carries the recurrent state",
        ),
    ],
)
def test_refusals_are_one_line_before_anything_is_written(tmp_path, capsys, args, message):
    assert train_tiny(tmp_path, "--total-frames", "128", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_rnn_hidden_must_be_positive():
    with pytest.raises(ConfigError, match="rnn_hidden=0"):
        build_config({"policy": "lstm", "rnn_hidden": 0})


def test_the_recurrent_actor_is_what_the_loss_replays():
    # a TorchRL LSTMModule inside the actor: TRPOLoss finds it (and refuses nothing)
    venv = make_vector_env("CartPoleNoVel-v1", 1, seed=0)
    config = build_config({"env": "CartPoleNoVel-v1", "rnn_hidden": 8})
    actor, critic, _ = build_models(config, venv.single_observation_space, venv.single_action_space)
    venv.close()
    assert is_recurrent(actor) and not is_recurrent(critic)
    assert [type(t).__name__ for t in recurrent_env_transforms(actor)] == ["InitTracker", "TensorDictPrimer"]
    assert len(TRPOLoss(actor, critic)._recurrent_actor) == 1
    assert isinstance(actor.module[0][2].module, nn.Sequential)


@pytest.mark.parametrize("policy", ["lstm", "gru"])
def test_video_episode_carries_the_state_step_to_step(tmp_path, policy):
    pytest.importorskip("imageio")
    pytest.importorskip("pygame")
    venv = make_vector_env("CartPoleNoVel-v1", 1, seed=0)
    config = build_config({"env": "CartPoleNoVel-v1", "policy": policy, "rnn_hidden": 8})
    torch.manual_seed(3)
    actor, _, _ = build_models(config, venv.single_observation_space, venv.single_action_space)
    venv.close()
    for p in actor.parameters():  # a policy whose actions depend on its memory, not only the logit bias
        p.data.normal_(0, 1)
    # the reference: the same episode with torch's own LSTM/GRU, its state carried by hand
    network = actor.module[0]
    encoder, rnn, head = network[0].module, network[1], network[2].module
    rnn = rnn.lstm if policy == "lstm" else rnn.gru
    env = gym.make("CartPoleNoVel-v1")
    obs, _ = env.reset(seed=7)
    state, expected, done = None, 0.0, False
    with torch.no_grad():
        while not done:
            out, state = rnn(encoder(torch.as_tensor(obs).reshape(1, 1, -1)), state)
            action = int(head(out.reshape(-1)).argmax())
            obs, reward, terminated, truncated, _ = env.step(action)
            expected += reward
            done = terminated or truncated
    assert expected >= 8  # several steps, each action read from the carried state
    assert record_video(actor, "CartPoleNoVel-v1", tmp_path / "e.gif", seed=7) == expected
