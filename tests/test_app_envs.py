"""The training application's environments and normalisation: float32 observations, the real final
observation at episode ends, the running moments and the reward scaler."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from trpo_torchrl.app.envs import make_env
from trpo_torchrl.app.normalize import RewardScaler, RunningMoments
from trpo_torchrl.collectors import gym_vector_env


def test_mujoco_observations_reach_the_networks_as_float32():
    """MuJoCo reports float64 observations; the float32 networks must get float32 (a float64 batch
    stopped HalfCheetah-v5 training at its first policy call)."""
    pytest.importorskip("mujoco")
    env = make_env("HalfCheetah-v5", 2, seed=0)
    td = env.rollout(3, break_when_any_done=False)
    assert td["observation"].dtype == torch.float32
    assert td["next", "observation"].dtype == torch.float32
    env.close()


@pytest.mark.parametrize("env_id,steps", [("CartPole-v1", 120), ("Pendulum-v1", 230), ("HalfCheetah-v5", 1010)])
def test_episode_ends_carry_the_real_final_observation(env_id, steps):
    # what the simulator returned, recorded under GymWrapper, against what the batch holds: at a
    # done step ("next", "observation") is the episode's real last observation (truncated episodes
    # bootstrap from it) and the following step starts from the reset observation
    if env_id.startswith("HalfCheetah"):
        pytest.importorskip("mujoco")
    env = make_env(env_id, 2, seed=5)
    assert type(env.base_env._info_dict_reader[0]).__name__ == "FinalObservationReader"
    venv = gym_vector_env(env)
    raw = []
    step = venv.step
    # a copy: TorchRL swaps the final observation into the returned array in place
    venv.step = lambda action: raw.append(copy.deepcopy(out := step(action))) or out
    td = env.reset()
    # when every environment ends at once TorchRL resets the vector env itself: its observation
    # is then where the next episode starts
    resets = {}
    reset = venv.reset
    venv.reset = lambda **kw: resets.__setitem__(len(raw) - 1, copy.deepcopy(out := reset(**kw))) or out
    ends = 0
    for t in range(steps):
        td = env.rand_action(td)
        out, td = env.step_and_maybe_reset(td)
        obs, reward, terminated, truncated, info = raw[t]
        for i in range(2):
            done = bool(terminated[i] or truncated[i])
            expected_next = info["final_obs"][i] if done else obs[i]
            torch.testing.assert_close(
                out["next", "observation"][i], torch.as_tensor(expected_next, dtype=torch.float32)
            )
            start = resets[t][0][i] if t in resets else obs[i]
            torch.testing.assert_close(td["observation"][i], torch.as_tensor(start, dtype=torch.float32))
            assert bool(out["next", "done"][i]) == done
            assert bool(out["next", "truncated"][i]) == bool(truncated[i])
            ends += done
    assert ends > 0
    # the simulator's per-step diagnostics stay out of the batch
    assert set(out["next"].keys()) <= {
        "observation",
        "reward",
        "done",
        "terminated",
        "truncated",
        "episode_reward",
        "final",
    }


def test_running_moments_match_numpy():
    m = RunningMoments((3,), eps=0.0)
    data = torch.randn(1000, 3, dtype=torch.float64) * 3 + 1
    for chunk in data.split(137):
        m.update(chunk)
    np.testing.assert_allclose(m.mean.numpy(), data.mean(0).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.var.numpy(), data.var(0, unbiased=False).numpy(), rtol=1e-10)


def test_reward_scaler_divides_by_the_std_of_the_discounted_return():
    # a plain loop over every environment's discounted return (reset at episode ends), carried
    # across batches, against the scaler; the std is that of every return seen so far
    gamma, n, steps = 0.9, 3, 50
    scaler = RewardScaler(n, gamma)
    gen = torch.Generator().manual_seed(0)
    running, seen = [0.0] * n, []
    for _ in range(2):
        reward = torch.randn(n, steps, 1, generator=gen) * 2
        done = torch.rand(n, steps, 1, generator=gen) < 0.1
        out = scaler(reward, done)
        for i in range(n):
            for t in range(steps):
                running[i] = running[i] * gamma + float(reward[i, t, 0])
                seen.append(running[i])
                if done[i, t, 0]:
                    running[i] = 0.0
        assert scaler.returns.tolist() == running
        # the moments start from mean 0, variance 1 at count 1e-4 (VecNormalize's), merged with the returns
        k, c = len(seen), 1e-4
        var = (c + np.var(seen) * k + np.mean(seen) ** 2 * c * k / (k + c)) / (k + c)
        std = math.sqrt(var + 1e-8)
        torch.testing.assert_close(out, (reward / std).clamp(-10, 10), rtol=1e-6, atol=1e-7)
