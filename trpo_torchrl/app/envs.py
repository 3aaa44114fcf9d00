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
import importlib
import logging
import re
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
from .games import game_make_kwargs, register_game_ids
from .spaces import AppObservation, SpaceError, check_action_space, needs_conversion


class EnvError(AppError):
    """An environment that cannot be made."""


class FinalObservationReader(terminal_obs_reader):
    """Reads only what the training loop needs from a same-step-autoreset vector env's info dict:
    the real final observation of the environments whose episode ended at this step.

    TorchRL's default reader turns the whole info dict into a TensorDict at every step (each
    sub-env's diagnostics too, e.g. MuJoCo's ``x_position``, ``reward_ctrl``), which costs about a
    third of a HalfCheetah step through ``GymWrapper`` on a small CPU. This one writes
    ``("final", key)`` for each observation key (``"observation"``, or a Dict observation's own keys)
    from ``info["final_obs"]`` where ``info["_final_obs"]`` is set and zeros elsewhere; the other
    info entries are left out of the batch. (TorchRL's default reader leaves a Dict observation's
    final entries at zero, so without this reader a truncated episode would bootstrap from zeros.)
    """

    observation_keys: tuple[str, ...] = ("observation",)
    dict_observation = False

    def __call__(self, info_dict, tensordict):
        source = self.backend_key[self.backend]  # "final_obs" for Gymnasium
        final = info_dict.get(source)
        ended = np.flatnonzero(info_dict["_" + source]) if final is not None else ()
        for key in self.observation_keys:
            buffer = self.info_spec[self.name, key].zero()
            for i in ended:
                value = final[i][key] if self.dict_observation else final[i]
                buffer[i] = torch.as_tensor(np.asarray(value), dtype=buffer.dtype)
            tensordict.set((self.name, key), buffer)
        return tensordict


def _read_final_observations_only(env: TransformedEnv) -> None:
    """Swaps GymWrapper's info reader for :class:`FinalObservationReader` and drops the other info
    entries from the specs (for an array observation or a Dict of arrays, what the app's
    observation conversion leaves; anything else keeps the default)."""
    base = env.base_env
    readers = getattr(base, "_info_dict_reader", [])
    if len(readers) != 1 or type(readers[0]) is not terminal_obs_reader or readers[0].backend != "gymnasium":
        return
    old = readers[0]
    spec = old.info_spec
    # the reader's observation spec has the info entries merged into it: what remains is the observation
    observation_keys = [key for key in old._obs_spec.keys() if key not in spec.keys()]
    space = base._env.single_observation_space
    dict_observation = isinstance(space, gym.spaces.Dict)
    expected = sorted(space.spaces) if dict_observation else ["observation"]
    if sorted(observation_keys) != expected or old.name not in spec.keys():
        return
    reader = FinalObservationReader(base.observation_spec, backend=old.backend, name=old.name)
    reader.observation_keys = tuple(observation_keys)
    reader.dict_observation = dict_observation
    reader._info_spec = spec.clone()
    reader._final_validated = True
    # keep ("final", <observation key>) only: the top-level info entries and the final infos go
    drop = [key for key in spec.keys() if key != old.name]
    drop += [(old.name, key) for key in spec[old.name].keys() if key not in observation_keys]
    for key in drop:
        del reader._info_spec[key]
        del base.observation_spec[key]
    readers[:] = [reader]
    env.empty_cache()


def resolve_env_id(env: str) -> str:
    """The registered id of ``env``: an id in gymnasium's registry, or ``module:Id`` (gymnasium's own
    syntax: the module is imported first, which registers its environments)."""
    module, sep, env_id = env.rpartition(":")
    if not sep:
        register_game_ids(env_id)  # ALE/ and MiniGrid- ids: their package registers them
    if sep:
        if not module or not env_id:
            raise EnvError(f"--env {env!r}: expected an id or module:Id (e.g. my_package.envs:MyTask-v0)")
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - any failure of the user's module is reported, in one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise EnvError(
                f"--env {env!r}: module {module!r} does not import ({type(err).__name__}: {first})"
            ) from None
    if env_id in gym.registry:
        return env_id
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if sep:
        raise EnvError(f"--env {env!r}: module {module!r} imported but registered no environment {env_id!r}{hint}")
    raise EnvError(f"unknown environment {env_id!r}{hint} (any id in gymnasium's registry works, or module:Id)")


def _rejected_kwargs(env: str, env_kwargs: dict[str, Any], err: Exception) -> EnvError:
    """The one-line error for ``--env-kwargs`` that ``gymnasium.make`` refused, naming the keyword."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    named = re.search(r"keyword argument '([^']+)'", message)
    key = named.group(1) if named else next((k for k in env_kwargs if k in message), None)
    which = f"the keyword {key!r}" if key is not None else f"--env-kwargs {env_kwargs!r}"
    return EnvError(f"--env-kwargs: environment {env!r} rejected {which} ({type(err).__name__}: {message})")


def make_vector_env(
    env: str,
    num_envs: int,
    seed: int,
    *,
    env_kwargs: dict[str, Any] | None = None,
    wrappers=(),
    training: bool = True,
    policy: str = "auto",
) -> gym.vector.SyncVectorEnv:
    """The raw Gymnasium vector env (same-step autoreset), seeded. Atari games and MiniGrid tasks
    get their own wrappers first (app/games.py; ``training=False``: an Atari game as evaluation
    plays it); then each sub-environment's observation is converted to what the networks read
    (:class:`~.spaces.AppObservation`, when needed), then ``wrappers`` are applied; a space the app
    cannot model is an EnvError. ``policy`` is the run's ``--policy`` (MiniGrid's observation
    depends on it: app/minigrid.py)."""
    env_id = resolve_env_id(env)
    env_kwargs = dict(env_kwargs or {})
    make_kwargs = game_make_kwargs(env_id, {**env_kwargs, "wrappers": []}, training=training, policy=policy)
    game_wrappers = make_kwargs.pop("wrappers")

    def convert(sub: gym.Env) -> gym.Env:
        return AppObservation(sub) if needs_conversion(sub.observation_space) else sub

    try:
        venv = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            wrappers=[*game_wrappers, convert, *wrappers],
            **make_kwargs,
        )
    except gym.error.DependencyNotInstalled as err:
        raise EnvError(f"environment {env!r} needs an optional dependency: {err}") from None
    except SpaceError as err:
        raise EnvError(f"environment {env!r}: {err}") from None
    except (TypeError, ValueError, gym.error.Error) as err:
        if not env_kwargs:
            raise
        raise _rejected_kwargs(env, env_kwargs, err) from None
    act = venv.single_action_space
    try:
        check_action_space(act)
        if isinstance(act, gym.spaces.MultiDiscrete) and np.any(act.start != 0):
            raise SpaceError(f"the training app needs MultiDiscrete actions that start at 0, got {act}")
    except SpaceError as err:
        venv.close()
        raise EnvError(f"environment {env!r}: {err}") from None
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


def _binary_actions_as_integers(env: gym.Env) -> gym.Env:
    """Bernoulli samples are floats; a MultiBinary environment gets them in its own dtype (int8)."""
    space = env.action_space
    if isinstance(space, gym.spaces.MultiBinary):
        return gym.wrappers.TransformAction(env, lambda a: np.asarray(a).astype(space.dtype), space)
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
    env_id: str,
    num_envs: int,
    seed: int,
    *,
    env_kwargs: dict[str, Any] | None = None,
    clip_actions: bool = True,
    device: str = "cpu",
    training: bool = True,
    policy: str = "auto",
) -> TransformedEnv:
    """A TorchRL env of batch size ``[num_envs]`` over a synchronous Gymnasium vector env.

    Adds ``episode_reward`` (the running undiscounted return, reported at episode ends). Inside each
    sub-environment, float64 box observations are cast to float32 and, when ``clip_actions``, box
    actions are clipped to the box on their way to the simulator (so the action spec it reports is
    unbounded: the policy's samples go in as they are and the batch keeps them). ``env_id`` may be
    ``module:Id``; ``env_kwargs`` go to ``gymnasium.make``; ``policy`` is the run's ``--policy``.
    """
    wrappers = [_float32_observations, _binary_actions_as_integers] + ([_clip_box_actions] if clip_actions else [])
    venv = make_vector_env(
        env_id, num_envs, seed, env_kwargs=env_kwargs, wrappers=wrappers, training=training, policy=policy
    )
    # MultiDiscrete actions as integer indices (one per dimension); Discrete ones stay one-hot
    integer_actions = isinstance(venv.single_action_space, gym.spaces.MultiDiscrete)
    with warnings.catch_warnings(), _torchrl_info_silenced():
        warnings.simplefilter("ignore")
        env = GymWrapper(venv, device=device, categorical_action_encoding=integer_actions)
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


def sub_env_state(sub: gym.Env) -> dict[str, Any]:
    """A picklable snapshot of one sub-environment: the plain attributes of it and its wrappers
    (positions, step counters, RNGs), the full MuJoCo integration state, an Atari emulator's state."""
    chain = _wrapper_chain(sub)
    return {
        "attributes": [_plain_attributes(obj) for obj in chain],
        "mujoco": _mujoco_state(sub.unwrapped),
        "atari": atari_state(sub),  # the emulator and frame buffers (None unless an Atari game)
    }


def load_sub_env_state(sub: gym.Env, saved: dict[str, Any]) -> None:
    """Restores a :func:`sub_env_state` snapshot into a sub-environment made the same way."""
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


def _in_this_process(venv: gym.vector.SyncVectorEnv):
    def map_envs(fn, args_per_env=None):
        return [fn(sub, *(() if args_per_env is None else args_per_env[i])) for i, sub in enumerate(venv.envs)]

    return map_envs


def env_state(env: TransformedEnv, map_envs=None) -> dict[str, Any]:
    """A picklable snapshot of every simulator in ``env``: the plain attributes of each env and
    wrapper (positions, step counters, RNGs) and, for MuJoCo tasks, the full integration state.
    ``map_envs(fn)`` runs ``fn`` on each sub-environment where it lives
    (:meth:`~trpo_torchrl.collectors.DirectCollector.map_envs`: in worker processes with
    ``env_workers``); by default on ``env``'s own sub-environments in this process."""
    venv = gym_vector_env(env)
    envs = (map_envs or _in_this_process(venv))(sub_env_state)
    return {"vector": _plain_attributes(venv), "envs": envs}


def load_env_state(env: TransformedEnv, state: dict[str, Any], map_envs=None) -> None:
    """Restores a snapshot taken by :func:`env_state` on an env made with the same id and size
    (``map_envs`` as there)."""
    venv = gym_vector_env(env)
    if len(state["envs"]) != len(venv.envs):
        raise EnvError(f"the saved state has {len(state['envs'])} environments, this env has {len(venv.envs)}")
    for name, value in state["vector"].items():
        setattr(venv, name, copy.deepcopy(value))
    (map_envs or _in_this_process(venv))(load_sub_env_state, [(saved,) for saved in state["envs"]])
