"""MiniGrid tasks (the ``minigrid`` package) for the training app.

``import minigrid`` registers the ``MiniGrid-...`` ids. Their observation is a Dict of ``image``
(``uint8 (7, 7, 3)``, the agent's partial view, channels last), ``direction`` (``Discrete(4)``)
and ``mission`` (a text). The app keeps the Dict; each sub-environment drops ``mission`` (a text
has no tensor form, and in the tasks the app trains on it never changes within a task), so the
networks see the image and the direction.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym

KEPT_KEYS = ["direction", "image"]
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


def minigrid_wrappers() -> list[Callable[[gym.Env], gym.Env]]:
    """The wrappers of one sub-environment (the same for training and evaluation)."""
    return [_drop_mission]


def make_minigrid_env(env_id: str, **make_kwargs) -> gym.Env:
    """One MiniGrid task as each sub-environment of the app's vector env is."""
    register_minigrid_ids(env_id)
    env = gym.make(env_id, **make_kwargs)
    for wrap in minigrid_wrappers():
        env = wrap(env)
    return env
