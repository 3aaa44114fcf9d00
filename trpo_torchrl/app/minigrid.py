"""MiniGrid tasks (the ``minigrid`` package) for the training app.

``import minigrid`` registers the ``MiniGrid-...`` ids. Their observation is a Dict of ``image``
(``uint8 (7, 7, 3)``, the agent's partial view, channels last), ``direction`` (``Discrete(4)``)
and ``mission`` (a text). The ``image`` is not a picture: each cell holds three small integers, the
index of the object there, its colour and its state (MiniGrid's ``OBJECT_TO_IDX``, ``COLOR_TO_IDX``,
``STATE_TO_IDX``). So by default (``--policy auto``, ``mlp``, ``lstm``, ``gru``) each
sub-environment flattens it, as rl-zoo3's MiniGrid settings do (``minigrid.wrappers.FlatObsWrapper``
with ``MlpPolicy`` and observation normalisation): :class:`FlatMiniGrid` gives one float vector of
the 147 cell entries and the one-hot direction, which the app's observation normaliser scales and
its fast ``direct`` collector steps. ``--policy cnn`` keeps the Dict (image and direction) for the
small CNN. Either way ``mission`` is dropped: a text has no tensor form, and in the tasks the app
trains on it never changes within a task.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from .spaces import SpaceError

_INSTALL = "pip install 'trpo-torchrl[minigrid]'"


def register_minigrid_ids(env_id: str) -> None:
    """Registers the ``MiniGrid-...`` ids with Gymnasium; without the package, an error that says what to install."""
    try:
        import minigrid  # noqa: F401  (importing it registers the ids)
    except ImportError:
        from .envs import EnvError

        raise EnvError(f"environment {env_id!r} needs minigrid: {_INSTALL}") from None


def is_minigrid(env_id: str) -> bool:
    """Whether ``env_id`` is a MiniGrid task: a ``MiniGrid-`` id, or a registered id whose entry point is minigrid's."""
    if env_id.startswith("MiniGrid-"):
        return True
    spec = gym.registry.get(env_id)
    return spec is not None and str(spec.entry_point).startswith("minigrid")


def _drop_mission(env: gym.Env) -> gym.Env:
    """The Dict observation without its ``mission`` text."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Dict) and "mission" in space.spaces:
        return gym.wrappers.FilterObservation(env, [k for k in space.spaces if k != "mission"])
    return env


class FlatMiniGrid(gym.ObservationWrapper):
    """MiniGrid's Dict observation as one ``float32`` vector: the ``image`` grid's cell entries
    (object, colour and state indices, flattened in row-major order) then the one-hot
    ``direction``; the ``mission`` text is left out."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if not (
            isinstance(space, gym.spaces.Dict)
            and isinstance(space.spaces.get("image"), gym.spaces.Box)
            and isinstance(space.spaces.get("direction"), gym.spaces.Discrete)
        ):
            raise SpaceError(
                f"FlatMiniGrid needs MiniGrid's Dict of 'image' and 'direction', got {space}; "
                "--policy cnn keeps a Dict observation as it is"
            )
        image = space["image"]
        self.directions = int(space["direction"].n)
        high = np.concatenate([np.asarray(image.high, np.float32).reshape(-1), np.ones(self.directions, np.float32)])
        self.observation_space = gym.spaces.Box(np.zeros_like(high), high, dtype=np.float32)

    def observation(self, observation):
        flat = np.zeros(self.observation_space.shape, np.float32)
        image = np.asarray(observation["image"]).reshape(-1)
        flat[: image.size] = image
        flat[image.size + int(observation["direction"])] = 1.0
        return flat


def minigrid_wrappers(policy: str = "auto") -> list[Callable[[gym.Env], gym.Env]]:
    """The wrappers of one sub-environment (the same for training and evaluation): the flat vector
    of :class:`FlatMiniGrid`, or, for ``--policy cnn``, the Dict of image and direction."""
    return [_drop_mission] if policy == "cnn" else [FlatMiniGrid]


def make_minigrid_env(env_id: str, policy: str = "auto", **make_kwargs) -> gym.Env:
    """One MiniGrid task as each sub-environment of the app's vector env is for ``policy``."""
    register_minigrid_ids(env_id)
    env = gym.make(env_id, **make_kwargs)
    for wrap in minigrid_wrappers(policy):
        env = wrap(env)
    return env
