"""Environments for the training app: Gymnasium tasks as one synchronous vector env in TorchRL.

``gymnasium.make_vec(..., vectorization_mode="sync")`` with same-step autoreset, wrapped by
TorchRL's ``GymWrapper``: several times faster than one TorchRL env per task on a small CPU
(HalfCheetah-v5 on 2 cores: ≈ 1 000 steps/s for one env, ≈ 6 000 at 16 in one vector env),
and a done step still reports the episode's real final observation, so truncated episodes
bootstrap from the right state. Continuous actions are clipped to the box on their way
into the simulator only (a Gymnasium wrapper inside each sub-environment): the batch keeps the
sampled action, whose log-probability TRPO needs.

:func:`env_state` / :func:`load_env_state` capture and restore the simulators' state, which is
what lets a run resumed from a checkpoint continue exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torchrl.envs import DoubleToFloat, GymWrapper, RewardSum, TransformedEnv
from torchrl.envs.libs.gym import terminal_obs_reader

from trpo_torchrl.collectors import gym_vector_env

from .atari import atari_state, load_atari_state
from .errors import AppError
from .games import game_make_kwargs


class EnvError(AppError):
    """An environment that cannot be made."""


class FinalObservationReader(terminal_obs_reader):
    """Reads only what the training loop needs from a same-step-autoreset vector env's info dict:
    the real final observation of the environments whose episode ended at this step.

    TorchRL's default reader turns the whole info dict into a TensorDict at every step (each
    sub-env's diagnostics too, e.g. MuJoCo's ``x_position``, ``reward_ctrl``), which costs about a
    third of a HalfCheetah step through ``GymWrapper`` on a small CPU. This one writes
    ``("final", "observation")`` from ``info["final_obs"]`` where ``info["_final_obs"]`` is set and
    zeros elsewhere, as the default does; the other info entries are left out of the batch.
    """

    def __call__(self, info_dict, tensordict):
        buffer = self.info_spec[self.name, "observation"].zero()
        key = self.backend_key[self.backend]  # "final_obs" for Gymnasium
        final = info_dict.get(key)
        if final is not None:
            for i in np.flatnonzero(info_dict["_" + key]):
                buffer[i] = torch.as_tensor(final[i], dtype=buffer.dtype)
        tensordict.set((self.name, "observation"), buffer)
        return tensordict


def _read_final_observations_only(env: TransformedEnv) -> None:
    """Swaps GymWrapper's info reader for :class:`FinalObservationReader` and drops the other info
    entries from the specs (only for a single array observation; anything else keeps the default)."""
    base = env.base_env
    readers = getattr(base, "_info_dict_reader", [])
    if len(readers) != 1 or type(readers[0]) is not terminal_obs_reader or readers[0].backend != "gymnasium":
        return
    old = readers[0]
    spec = old.info_spec
    # the reader's observation spec has the info entries merged into it: what remains is the observation
    observation_keys = [key for key in old._obs_spec.keys() if key not in spec.keys()]
    if observation_keys != ["observation"] or old.name not in spec.keys():
        return  # dict observations keep the default reader
    reader = FinalObservationReader(base.observation_spec, backend=old.backend, name=old.name)
    reader._info_spec = spec.clone()
    reader._final_validated = True
    # keep ("final", "observation") only: the top-level info entries and the final infos go
    drop = [key for key in spec.keys() if key != old.name]
    drop += [(old.name, key) for key in spec[old.name].keys() if key != "observation"]
    for key in drop:
        del reader._info_spec[key]
        del base.observation_spec[key]
    readers[:] = [reader]
    env.empty_cache()


def _check_env_id(env_id: str) -> None:
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise EnvError(f"unknown environment {env_id!r}{hint} (any id in gymnasium's registry works)")


def make_vector_env(
    env_id: str, num_envs: int, seed: int, *, training: bool = True, **make_kwargs
) -> gym.vector.SyncVectorEnv:
    """The raw Gymnasium vector env (same-step autoreset), seeded. Atari games and MiniGrid tasks get
    their own wrappers (app/games.py); ``training=False``: an Atari game as evaluation plays it."""
    make_kwargs = game_make_kwargs(env_id, make_kwargs, training=training)
    _check_env_id(env_id)
    try:
        venv = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            **make_kwargs,
        )
    except gym.error.DependencyNotInstalled as err:
        raise EnvError(f"environment {env_id!r} needs an optional dependency: {err}") from None
    obs, act = venv.single_observation_space, venv.single_action_space
    flat_box = lambda space: isinstance(space, gym.spaces.Box) and len(space.shape) == 1  # noqa: E731
    if not flat_box(obs) or not (flat_box(act) or isinstance(act, gym.spaces.Discrete)):
        venv.close()
        raise EnvError(
            f"environment {env_id!r} has observation space {obs} and action space {act}; the training app "
            "needs a flat Box observation and a Discrete or flat Box action (e.g. flatten the observation "
            "with a Gymnasium wrapper and register the wrapped task)"
        )
    venv.reset(seed=seed)
    venv.action_space.seed(seed)
    return venv


def _float32_observations(env: gym.Env) -> gym.Env:
    """MuJoCo tasks report float64 observations and the networks are float32: cast them in numpy,
    inside each sub-environment (final observations included), cheaper than a TorchRL transform."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Box) and space.dtype == np.float64:
        return gym.wrappers.DtypeObservation(env, np.float32)
    return env


def _clip_box_actions(env: gym.Env) -> gym.Env:
    """Clips box actions to the box inside each sub-environment; the batch keeps the sampled action."""
    if isinstance(env.action_space, gym.spaces.Box):
        return gym.wrappers.ClipAction(env)
    return env


@contextlib.contextmanager
def _torchrl_info_silenced():
    """TorchRL's INFO lines off while a vector env is wrapped: ``GymWrapper`` registers a provisional
    info reader with a dummy rollout and ``check_env_specs`` and says so ("The info_dict_reader does
    not have specs...", "check_env_specs succeeded!"); :func:`make_env` then swaps that reader for
    its own, so the lines describe nothing the run uses. Warnings and errors still show."""
    logger = logging.getLogger("torchrl")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def make_env(
    env_id: str, num_envs: int, seed: int, *, clip_actions: bool = True, device: str = "cpu", training: bool = True
) -> TransformedEnv:
    """A TorchRL env of batch size ``[num_envs]`` over a synchronous Gymnasium vector env.

    Adds ``episode_reward`` (the running undiscounted return, reported at episode ends). Inside each
    sub-environment, float64 box observations are cast to float32 and, when ``clip_actions``, box
    actions are clipped to the box on their way to the simulator (so the action spec it reports is
    unbounded: the policy's samples go in as they are and the batch keeps them).
    """
    wrappers = [_float32_observations] + ([_clip_box_actions] if clip_actions else [])
    venv = make_vector_env(env_id, num_envs, seed, wrappers=wrappers, training=training)
    with warnings.catch_warnings(), _torchrl_info_silenced():
        warnings.simplefilter("ignore")
        env = GymWrapper(venv, device=device)
    env.set_seed(seed)
    env = env if isinstance(env, TransformedEnv) else TransformedEnv(env)
    _read_final_observations_only(env)
    if any(spec.dtype == torch.float64 for spec in env.observation_spec.values(True, True)):
        # float64 observations the sub-environment cast did not reach (e.g. inside a dict space)
        env.append_transform(DoubleToFloat(in_keys=["observation"], in_keys_inv=[]))
    env.append_transform(RewardSum(in_keys=["reward"], out_keys=["episode_reward"]))
    return env


# -- simulator state ------------------------------------------------------------------------------

_PLAIN = (np.ndarray, np.generic, int, float, bool, str, type(None), tuple, np.random.Generator)


def _plain_attributes(obj: Any) -> dict[str, Any]:
    """Copies of an object's plain attributes: arrays, numbers, flags, RNGs (not spaces, renderers)."""
    out = {}
    for name, value in vars(obj).items():
        if isinstance(value, _PLAIN) and (not isinstance(value, tuple) or all(isinstance(v, _PLAIN) for v in value)):
            out[name] = copy.deepcopy(value)
    return out


def _wrapper_chain(env: gym.Env) -> list[Any]:
    chain = [env]
    while hasattr(chain[-1], "env") and chain[-1] is not chain[-1].unwrapped:
        chain.append(chain[-1].env)
    if chain[-1] is not env.unwrapped:
        chain.append(env.unwrapped)
    return chain


def _mujoco_state(env: Any) -> np.ndarray | None:
    data, model = getattr(env, "data", None), getattr(env, "model", None)
    if data is None or model is None:
        return None
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state, spec)
    return state


def env_state(env: TransformedEnv) -> dict[str, Any]:
    """A picklable snapshot of every simulator in ``env``: the plain attributes of each env and
    wrapper (positions, step counters, RNGs) and, for MuJoCo tasks, the full integration state."""
    venv = gym_vector_env(env)
    envs = []
    for sub in venv.envs:
        chain = _wrapper_chain(sub)
        envs.append(
            {
                "attributes": [_plain_attributes(obj) for obj in chain],
                "mujoco": _mujoco_state(sub.unwrapped),
                "atari": atari_state(sub),  # the emulator and frame buffers (None unless an Atari game)
            }
        )
    return {"vector": _plain_attributes(venv), "envs": envs}


def load_env_state(env: TransformedEnv, state: dict[str, Any]) -> None:
    """Restores a snapshot taken by :func:`env_state` on an env made with the same id and size."""
    venv = gym_vector_env(env)
    if len(state["envs"]) != len(venv.envs):
        raise EnvError(f"the saved state has {len(state['envs'])} environments, this env has {len(venv.envs)}")
    for name, value in state["vector"].items():
        setattr(venv, name, copy.deepcopy(value))
    for sub, saved in zip(venv.envs, state["envs"]):
        chain = _wrapper_chain(sub)
        if len(chain) != len(saved["attributes"]):
            raise EnvError("the saved environment state does not match this environment's wrappers")
        for obj, attrs in zip(chain, saved["attributes"]):
            for name, value in attrs.items():
                setattr(obj, name, copy.deepcopy(value))
        if saved["mujoco"] is not None:
            import mujoco

            u = sub.unwrapped
            mujoco.mj_setState(u.model, u.data, saved["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(u.model, u.data)
        if saved.get("atari") is not None:
            load_atari_state(sub, saved["atari"])
