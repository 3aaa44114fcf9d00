"""Tasks behind optional packages, Atari (``ale-py``) and MiniGrid: the one hook the app's
environment code calls. It registers the package's ids and adds each sub-environment's
wrappers and ``gym.make`` arguments (:mod:`.atari`, :mod:`.minigrid`); any other id passes
through unchanged."""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

from .atari import atari_make_kwargs, atari_wrappers, is_atari, register_atari_ids
from .minigrid import is_minigrid, minigrid_wrappers, register_minigrid_ids


def register_game_ids(env_id: str) -> None:
    """Imports the package an ``ALE/`` or ``MiniGrid-`` id needs (an error naming the extra when it
    is missing); for another id not registered yet, registers whichever of the two is installed,
    so e.g. ``PongNoFrameskip-v4`` resolves and unknown ids get suggestions from them too."""
    if env_id.startswith("ALE/"):
        register_atari_ids(env_id)
    elif env_id.startswith("MiniGrid-"):
        register_minigrid_ids(env_id)
    elif env_id not in gym.registry:
        for package in ("ale_py", "minigrid"):
            try:
                module = importlib.import_module(package)  # importing minigrid registers its ids
            except ImportError:  # not installed: nothing to register
                continue
            if package == "ale_py":
                gym.register_envs(module)


def game_make_kwargs(
    env_id: str, make_kwargs: dict[str, Any], *, training: bool, policy: str = "auto"
) -> dict[str, Any]:
    """``gym.make_vec`` keyword arguments for ``env_id``: ``make_kwargs`` plus an Atari game's or
    MiniGrid task's own arguments, its wrappers placed first (innermost). ``training`` selects the
    Atari training wrappers (life-loss episodes, clipped rewards); evaluation plays whole games.
    ``policy`` (the run's ``--policy``) selects MiniGrid's observation: a flat vector, or the Dict
    with its image for ``cnn``."""
    register_game_ids(env_id)
    outer = list(make_kwargs.get("wrappers") or [])
    if is_atari(env_id):
        kwargs, sticky = atari_make_kwargs(env_id, make_kwargs)
        return {**kwargs, "wrappers": atari_wrappers(training, sticky) + outer}
    if is_minigrid(env_id):
        return {**make_kwargs, "wrappers": minigrid_wrappers(policy) + outer}
    return make_kwargs
