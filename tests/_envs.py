"""Small Gymnasium tasks for the training app's space tests, registered on import, so the command
line loads them as ``--env tests._envs:Id``: a MultiDiscrete action, a MultiBinary action, a small
image observation, a Dict observation (image, vector, Discrete and Text entries) and stacked frames.

Each episode is ``episode_steps`` steps of an observation drawn from the env's own generator and a
reward for the action that matches it, so a short run has finished episodes to report."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class _Matching(gym.Env):
    """An episode of ``episode_steps`` independent draws; the reward says how well the action matched."""

    metadata = {"render_modes": []}

    def __init__(self, episode_steps: int = 8):
        self.episode_steps = int(episode_steps)
        self.t = 0
        self.target = None

    def _draw(self):
        raise NotImplementedError

    def _reward(self, action) -> float:
        raise NotImplementedError

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        obs, self.target = self._draw()
        return obs, {}

    def step(self, action):
        # what the app passes is in the space, and integer for the discrete ones (their own dtype)
        assert self.action_space.contains(action), action
        if not isinstance(self.action_space, gym.spaces.Box):
            assert np.asarray(action).dtype.kind in "iu", action
        reward = self._reward(action)
        self.t += 1
        obs, self.target = self._draw()
        return obs, reward, False, self.t >= self.episode_steps, {}


class MultiDiscreteMatch(_Matching):
    """Observation: one-hot codes of a target per dimension; action: MultiDiscrete(nvec)."""

    def __init__(self, nvec=(3, 2, 4), episode_steps: int = 8):
        super().__init__(episode_steps)
        self.nvec = np.asarray(nvec, np.int64)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (int(self.nvec.sum()),), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(self.nvec)

    def _draw(self):
        target = np.array([self.np_random.integers(n) for n in self.nvec])
        obs = np.zeros(int(self.nvec.sum()), np.float32)
        obs[np.concatenate([[0], np.cumsum(self.nvec)[:-1]]) + target] = 1.0
        return obs, target

    def _reward(self, action) -> float:
        return float(np.mean(np.asarray(action) == self.target))


class MultiBinaryMatch(_Matching):
    """Observation: a vector in [-1, 1]; action: MultiBinary(size), 1 where the entry is positive."""

    def __init__(self, size: int = 4, episode_steps: int = 8):
        super().__init__(episode_steps)
        self.size = int(size)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (self.size,), np.float32)
        self.action_space = gym.spaces.MultiBinary(self.size)

    def _draw(self):
        obs = self.np_random.uniform(-1, 1, self.size).astype(np.float32)
        return obs, (obs > 0).astype(np.int8)

    def _reward(self, action) -> float:
        return float(np.mean(np.asarray(action) == self.target))


def _halves_image(shape, side: int, rng) -> np.ndarray:
    """A uint8 H×W×C image with noise, brighter on the left (side 0) or right (side 1) half."""
    image = rng.integers(0, 60, shape, dtype=np.uint8)
    w = shape[1] // 2
    region = (slice(None), slice(0, w)) if side == 0 else (slice(None), slice(w, None))
    image[region] += 180
    return image


class SmallImage(_Matching):
    """Observation: a 7×7×3 uint8 image bright on one half; action: Discrete(2), the bright half."""

    def __init__(self, episode_steps: int = 8):
        super().__init__(episode_steps)
        self.observation_space = gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(2)

    def _draw(self):
        side = int(self.np_random.integers(2))
        return _halves_image((7, 7, 3), side, self.np_random), side

    def _reward(self, action) -> float:
        return float(int(action) == self.target)


class DictObservation(_Matching):
    """Observation: a Dict of a 7×7×3 image, a 3-vector, a Discrete(4) direction and a Text mission
    (MiniGrid's layout); action: Discrete(4), the direction."""

    def __init__(self, episode_steps: int = 8):
        super().__init__(episode_steps)
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8),
                "vector": gym.spaces.Box(-1.0, 1.0, (3,), np.float64),
                "direction": gym.spaces.Discrete(4),
                "mission": gym.spaces.Text(32, charset=" abcdefghijklmnopqrstuvwxyz"),
            }
        )
        self.action_space = gym.spaces.Discrete(4)

    def _draw(self):
        direction = int(self.np_random.integers(4))
        obs = {
            "image": _halves_image((7, 7, 3), direction % 2, self.np_random),
            "vector": self.np_random.uniform(-1, 1, 3),
            "direction": direction,
            "mission": "go to the goal",
        }
        return obs, direction

    def _reward(self, action) -> float:
        return float(int(action) == self.target)


class StackedFrames(_Matching):
    """Observation: 4 stacked 36×36 uint8 frames, channels first (an Atari frame stack's layout);
    action: a flat Box(2), rewarded for being near the frames' bright side, coded as ±1."""

    def __init__(self, episode_steps: int = 8):
        super().__init__(episode_steps)
        self.observation_space = gym.spaces.Box(0, 255, (4, 36, 36), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _draw(self):
        side = int(self.np_random.integers(2))
        frames = np.stack([_halves_image((36, 36, 1), side, self.np_random)[..., 0] for _ in range(4)])
        return frames, side

    def _reward(self, action) -> float:
        target = 1.0 if self.target else -1.0
        return float(-np.mean((np.asarray(action) - target) ** 2))


for _id, _cls in [
    ("MultiDiscreteMatch-v0", MultiDiscreteMatch),
    ("MultiBinaryMatch-v0", MultiBinaryMatch),
    ("SmallImage-v0", SmallImage),
    ("DictObservation-v0", DictObservation),
    ("StackedFrames-v0", StackedFrames),
]:
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls)
