"""Two small tasks for the training app's MultiDiscrete and MultiBinary actions, registered on import:

    trpo-torchrl train --env examples.sign_envs:SignBits-v0
    trpo-torchrl train --env examples.sign_envs:SignLevels-v0 --env-kwargs '{size: 6}'

(run from the repository's root, so that ``examples`` imports). Each step shows a vector ``x`` drawn
uniformly from [-1, 1]^size; the reward is the fraction of action dimensions that read it right:

* ``SignBits-v0`` (``MultiBinary(size)``): dimension i is right when it is 1 exactly where x_i > 0;
* ``SignLevels-v0`` (``MultiDiscrete([2, 3, 4, 5, ...])``): dimension i, with n_i levels, is right
  when it names the level of x_i, [-1, 1] cut into n_i equal bins.

An episode is ``episode_steps`` steps (truncated), so its return is between 0 and episode_steps;
random play scores episode_steps / 2 on SignBits and episode_steps × mean(1 / n_i) on SignLevels.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class _SignTask(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, size: int, episode_steps: int):
        self.size = int(size)
        self.episode_steps = int(episode_steps)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (self.size,), np.float32)
        self.t = 0
        self.x = np.zeros(self.size, np.float32)

    def _target(self) -> np.ndarray:
        raise NotImplementedError

    def _draw(self) -> np.ndarray:
        self.x = self.np_random.uniform(-1, 1, self.size).astype(np.float32)
        return self.x.copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def step(self, action):
        reward = float(np.mean(np.asarray(action).reshape(-1) == self._target()))
        self.t += 1
        return self._draw(), reward, False, self.t >= self.episode_steps, {}


class SignBits(_SignTask):
    """MultiBinary(size): 1 where the observation is positive."""

    def __init__(self, size: int = 8, episode_steps: int = 32):
        super().__init__(size, episode_steps)
        self.action_space = gym.spaces.MultiBinary(self.size)

    def _target(self) -> np.ndarray:
        return (self.x > 0).astype(np.int64)


class SignLevels(_SignTask):
    """MultiDiscrete([2, 3, 4, 5, 2, 3, ...]): the level of each observation entry."""

    def __init__(self, size: int = 4, episode_steps: int = 32):
        super().__init__(size, episode_steps)
        self.levels = np.array([2 + i % 4 for i in range(self.size)], np.int64)
        self.action_space = gym.spaces.MultiDiscrete(self.levels)

    def _target(self) -> np.ndarray:
        return np.minimum(((self.x + 1) / 2 * self.levels).astype(np.int64), self.levels - 1)

    def random_return(self) -> float:
        """The expected return of uniformly random actions."""
        return self.episode_steps * float(np.mean(1.0 / self.levels))


for _id, _cls in [("SignBits-v0", SignBits), ("SignLevels-v0", SignLevels)]:
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls)
