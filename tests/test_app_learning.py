"""The training application learns: CartPole-v1 reaches the return it should, and its advantages
equal Stable-Baselines3's on the same batch."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests._app_runs import app_config
from trpo_torchrl.app.config import build_config
from trpo_torchrl.app.train import Trainer


@pytest.mark.slow
def test_cartpole_learns(tmp_path):
    """The learning test CI runs: the default preset on CartPole-v1, a fixed seed and frame budget,
    evaluated deterministically on 10 episodes."""
    config = build_config(
        dict(
            env="CartPole-v1",
            seed=0,
            total_frames=int(os.environ.get("TRPO_TEST_FRAMES", 60_000)),
            progress=False,
            logdir=str(tmp_path),
            run_name="learn",
            logger="none",
            checkpoint_every=0,
        )
    )
    result = Trainer(config).train()
    assert result.eval_mean is not None and result.eval_mean >= 400, result


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_advantages_equal_stable_baselines3s_on_the_same_batch(tmp_path, env_id):
    # the app's scaled rewards -> λ-returns pipeline against Stable-Baselines3's RolloutBuffer fed the
    # same rewards, values and episode starts, with its own truncation rule: a truncated episode's
    # last reward gains γ·V(final observation) (Pendulum always truncates, CartPole terminates)
    buffers = pytest.importorskip("stable_baselines3.common.buffers")
    import gymnasium as gym

    config = app_config(
        tmp_path, "sb3", 3 * 256, env=env_id, steps_per_env=256, normalize_observations=True, normalize_rewards=True
    )
    trainer = Trainer(config)
    trainer.step(trainer.next_batch())  # a critic that has been fitted once, statistics that have moved
    batch = trainer.next_batch()
    trainer.collector.shutdown()
    done = batch["next", "done"]
    batch["next", "reward"] = trainer.reward_scaler(batch["next", "reward"], done)
    with torch.no_grad():
        trainer.loss.value_estimator(batch)
        value = trainer.critic(batch.select("observation").clone())["state_value"].squeeze(-1).numpy()
        next_value = trainer.critic(batch["next"].select("observation").clone())["state_value"].squeeze(-1).numpy()
    envs, steps = value.shape
    reward = batch["next", "reward"].squeeze(-1).numpy()
    truncated = (batch["next", "truncated"] & ~batch["next", "terminated"]).squeeze(-1).numpy()
    done = done.squeeze(-1).numpy()
    assert done.any()  # episodes end inside the batch: the case that matters
    assert truncated.any() == (env_id == "Pendulum-v1")
    rollout = buffers.RolloutBuffer(
        steps,
        gym.spaces.Box(-1, 1, (1,)),
        gym.spaces.Box(-1, 1, (1,)),
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        n_envs=envs,
    )
    rollout.rewards[:] = np.where(truncated, reward + config.gamma * next_value, reward).T
    rollout.values[:] = value.T
    rollout.episode_starts[1:] = done.T[:-1]
    rollout.compute_returns_and_advantage(last_values=torch.as_tensor(next_value[:, -1]), dones=done[:, -1])
    # float32 on both sides: a return near 0 is A + V with |A|, |V| ~ 3, so a few ulp(3) ~ 1e-6 apart
    # (a wrong truncation rule is off by γ·V, order 1)
    np.testing.assert_allclose(batch["advantage"].squeeze(-1).numpy().T, rollout.advantages, rtol=1e-5, atol=5e-6)
    np.testing.assert_allclose(batch["value_target"].squeeze(-1).numpy().T, rollout.returns, rtol=1e-5, atol=5e-6)
