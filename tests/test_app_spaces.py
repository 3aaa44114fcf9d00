"""Your own environment in the training app: ``--env module:Id``, ``--env-kwargs``, ``--policy``, and
every space sb3-contrib's TRPO trains (MultiDiscrete and MultiBinary actions, images, Dict
observations), each trained from the command line and evaluated; the action heads and encoders
against plain torch; a resumed run equals the uninterrupted one; each bad input is one line."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from torch import distributions as D

import tests._envs  # noqa: F401 - registers the test tasks
from tests._app_runs import app_config, train_tiny, trainer_parameters
from trpo_torchrl.app.checkpoint import load_checkpoint
from trpo_torchrl.app.cli import main
from trpo_torchrl.app.models import (
    MASKED_LOGIT,
    ImageCNN,
    IndependentBernoulli,
    IndependentCategorical,
    MultiDiscreteLogits,
)
from trpo_torchrl.app.spaces import AppObservation, SpaceError, check_action_space
from trpo_torchrl.app.train import Trainer, resume_trainer
from trpo_torchrl.distributions import analytic_kl, distribution_family

ENVS = "tests._envs:"


@pytest.mark.parametrize(
    "env_id,policy,encoder",
    [
        ("MultiDiscreteMatch-v0", "mlp", None),
        ("MultiBinaryMatch-v0", "mlp", None),
        ("SmallImage-v0", "cnn", "small"),
        ("DictObservation-v0", "cnn", "small"),
        ("StackedFrames-v0", "cnn", "nature"),
    ],
)
def test_each_space_trains_and_evaluates_from_the_command_line(tmp_path, capsys, env_id, policy, encoder):
    code = train_tiny(tmp_path, "--env", ENVS + env_id, "--total-frames", "256", "--eval-episodes", "2")
    out = capsys.readouterr().out
    assert code == 0
    # the spaces DirectCollector does not run go through TorchRL's Collector, said once
    assert out.count("collector: sync (TorchRL's Collector)") == 1
    if env_id == "DictObservation-v0":
        assert out.count("observation: left out the non-numeric entries 'mission' (Text)") == 1
    state = load_checkpoint(tmp_path / "run")
    assert state["config"]["env"] == ENVS + env_id and state["config"]["collector"] == "sync"
    assert state["iteration"] == 2
    cnn_keys = [k for k in state["actor"] if ".convs." in k]
    assert bool(cnn_keys) == (policy == "cnn")
    if encoder:  # the Nature-CNN's 8×8 kernels, or the small CNN's 2×2
        first = state["actor"][sorted(cnn_keys)[0].rsplit(".", 2)[0] + ".0.weight"]
        assert first.shape[-1] == (8 if encoder == "nature" else 2)
    printed = next(line for line in out.splitlines() if line.startswith("evaluation:"))
    # eval rebuilds the same environment and model from the checkpoint: the run's own evaluation
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert f"mean_return={result['mean_return']:.2f}" in printed


def test_env_kwargs_and_policy_are_saved_and_resume_rebuilds_the_same_environment(tmp_path, capsys):
    argv = ["--env", ENVS + "MultiBinaryMatch-v0", "--env-kwargs", "{size: 6, episode_steps: 4}"]
    assert train_tiny(tmp_path, *argv, "--total-frames", "128", "--eval-episodes", "0", "--policy", "mlp") == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["env_kwargs"] == {"size": 6, "episode_steps": 4} and saved["policy"] == "mlp"
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--total-frames", "256", "--progress", "false"]) == 0
    state = load_checkpoint(tmp_path / "run")
    assert state["iteration"] == 2 and state["config"]["env_kwargs"] == {"size": 6, "episode_steps": 4}
    assert state["actor"]["module.0.module.head.4.bias"].shape == (6,)  # six Bernoulli logits: size=6
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(0 <= r <= 4 for r in result["returns"])  # at most 1 per step of a 4-step episode
    # the environment cannot change on resume
    assert main(["train", "--resume", str(tmp_path / "run"), "--env-kwargs", "{size: 3}"]) == 2
    assert "these cannot change: env_kwargs" in capsys.readouterr().err


@pytest.mark.parametrize(
    "env_id,kw",
    [
        ("DictObservation-v0", {"normalize_observations": True, "env_kwargs": {"episode_steps": 5}}),
        ("MultiDiscreteMatch-v0", {"normalize_rewards": True}),
    ],
)
def test_resume_equals_uninterrupted_run(tmp_path, env_id, kw):
    config = lambda name, frames: app_config(tmp_path, name, frames, env=ENVS + env_id, **kw)  # noqa: E731
    full = Trainer(config("full", 3 * 128))
    full.train()
    part = Trainer(config("part", 128))
    part.train()
    resumed = resume_trainer(part.run_dir, {"total_frames": 3 * 128})
    resumed.train()
    a, b = trainer_parameters(full), trainer_parameters(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    if kw.get("normalize_observations"):  # the vector entries' statistics moved; no image statistics
        moments = [k for k in a if k.endswith("moments.mean")]
        assert moments and all(a[k].abs().sum() > 0 for k in moments)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--env", "no_such_module_xyz:Task-v0"], "module 'no_such_module_xyz' does not import (ModuleNotFoundError"),
        (["--env", ENVS + "SmallImag-v0"], "registered no environment 'SmallImag-v0'; did you mean SmallImage-v0"),
        (["--env-kwargs", "[1, 2]"], "env_kwargs='[1, 2]' is not a mapping of keyword names to values"),
        (
            ["--env", ENVS + "MultiBinaryMatch-v0", "--env-kwargs", "{sise: 3}"],
            "environment 'tests._envs:MultiBinaryMatch-v0' rejected the keyword 'sise'",
        ),
        (["--policy", "rnn"], "policy='rnn' must be one of auto, mlp, cnn, lstm, gru"),
        (["--policy", "cnn"], "--policy cnn needs an image in the observation"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    assert train_tiny(tmp_path, "--total-frames", "128", *args) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "error:" in line)
    assert message in line
    assert not any(tmp_path.iterdir())


def test_an_action_space_the_app_cannot_model_is_named():
    with pytest.raises(SpaceError, match=r"action space Tuple\(Discrete\(2\), Discrete\(3\)\); it supports Discrete"):
        check_action_space(gym.spaces.Tuple([gym.spaces.Discrete(2), gym.spaces.Discrete(3)]))


# -- the pieces against plain torch ------------------------------------------------------------------


def test_multidiscrete_head_is_one_categorical_per_dimension():
    nvec = [3, 2, 4]
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(5, sum(nvec), generator=gen)
    logits = MultiDiscreteLogits(nvec)(raw)
    assert logits.shape == (5, 3, 4) and bool((logits[:, 1, 2:] == MASKED_LOGIT).all())
    dist = IndependentCategorical(logits)
    assert distribution_family(dist) == "categorical"
    parts = [D.Categorical(logits=chunk) for chunk in raw.split(nvec, dim=-1)]
    action = torch.stack([p.sample() for p in parts], -1)
    torch.testing.assert_close(dist.log_prob(action), sum(p.log_prob(action[:, i]) for i, p in enumerate(parts)))
    torch.testing.assert_close(dist.entropy(), sum(p.entropy() for p in parts))
    other = IndependentCategorical(MultiDiscreteLogits(nvec)(torch.randn(5, sum(nvec), generator=gen)))
    other_parts = [D.Categorical(logits=other.base_dist.logits[:, i, :n]) for i, n in enumerate(nvec)]
    expected = sum(D.kl_divergence(p, q) for p, q in zip(parts, other_parts))
    torch.testing.assert_close(analytic_kl(dist, other), expected)
    # a class a dimension lacks is never drawn; the deterministic action is each dimension's argmax
    samples = dist.sample((2000,))
    assert int(samples[..., 1].max()) <= 1 and int(samples[..., 0].max()) <= 2
    assert torch.equal(dist.deterministic_sample, torch.stack([p.logits.argmax(-1) for p in parts], -1))


def test_multibinary_head_is_independent_bernoullis():
    gen = torch.Generator().manual_seed(1)
    logits, other = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    dist = IndependentBernoulli(logits)
    assert distribution_family(dist) == "bernoulli"
    action = (torch.rand(6, 4, generator=gen) < 0.5).float()
    torch.testing.assert_close(dist.log_prob(action), D.Bernoulli(logits=logits).log_prob(action).sum(-1))
    expected = D.kl_divergence(D.Bernoulli(logits=logits), D.Bernoulli(logits=other)).sum(-1)
    torch.testing.assert_close(analytic_kl(dist, IndependentBernoulli(other)), expected)
    assert torch.equal(dist.deterministic_sample, (logits > 0).float())


@pytest.mark.parametrize("hw,features", [((84, 84), 512), ((7, 7), 128)])
def test_cnn_reads_channels_last_and_channels_first_alike(hw, features):
    torch.manual_seed(0)
    last = ImageCNN((*hw, 4))
    first = ImageCNN((4, *hw))
    first.load_state_dict(last.state_dict())
    images = torch.randint(0, 256, (2, 3, *hw, 4), dtype=torch.uint8)
    out = last(images)
    assert out.shape == (2, 3, features)
    torch.testing.assert_close(first(images.movedim(-1, -3)), out)
    # scaled to [0, 1] before the convolutions: the same as float input / 255 through plain layers
    x = images.reshape(-1, *hw, 4).float().movedim(-1, -3) / 255
    torch.testing.assert_close(last.linear(last.convs(x)).reshape(2, 3, features), out)


def test_dict_observations_become_vectors_and_images():
    env = AppObservation(gym.make(ENVS + "DictObservation-v0"))
    assert sorted(env.observation_space.spaces) == ["direction", "image", "vector"]
    raw, _ = env.env.reset(seed=3)
    env.reset(seed=3)
    obs = env.observation(raw)
    expected_direction = np.eye(4, dtype=np.float32)[raw["direction"]]
    np.testing.assert_array_equal(obs["direction"], expected_direction)
    assert obs["vector"].dtype == np.float32 and np.allclose(obs["vector"], raw["vector"])
    assert obs["image"] is raw["image"] and "mission" not in obs
    for key, space in env.observation_space.spaces.items():
        assert space.contains(obs[key]), key


def test_a_discrete_observation_is_one_hot_and_keeps_the_direct_collector(tmp_path, capsys):
    argv = ["--env", "FrozenLake-v1", "--env-kwargs", '{"is_slippery": false}', "--total-frames", "128"]
    assert train_tiny(tmp_path, *argv, "--eval-episodes", "0") == 0
    assert "TorchRL's Collector" not in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "run")
    assert state["config"]["collector"] == "direct" and state["config"]["env_kwargs"] == {"is_slippery": False}
    assert state["actor"]["module.0.module.1.0.weight"].shape == (64, 16)  # the 16 states, one-hot
    env = AppObservation(gym.make("FrozenLake-v1"))
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.eye(16, dtype=np.float32)[0])


def test_run_directories_of_namespaced_ids_are_one_folder():
    """``ALE/Pong-v5`` and ``module:Id`` name one folder each (no nesting, no ':'), for a single
    run and for the members of a population."""
    from trpo_torchrl.app.config import build_config
    from trpo_torchrl.app.population import default_group_name, member_config
    from trpo_torchrl.app.rundir import default_run_name

    for env, slug in [("ALE/Pong-v5", "ALE-Pong-v5"), ("tests._envs:SignCopy-v0", "tests._envs-SignCopy-v0")]:
        config = build_config({"env": "CartPole-v1", "seeds": 2})
        config = dataclasses.replace(config, env=env)
        for name in (default_run_name(config), default_group_name(config), member_config(config, 1).run_name):
            assert name.startswith(slug + "__") and "/" not in name and ":" not in name
