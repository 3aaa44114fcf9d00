"""What the training app makes of a Gymnasium environment's spaces.

Observations reach the networks as float32 vectors and uint8 images only. :class:`AppObservation`,
a Gymnasium wrapper inside each sub-environment, turns what else an environment reports into those:
a ``Discrete`` entry becomes a one-hot vector, ``MultiDiscrete`` the concatenation of one-hot
vectors, ``MultiBinary`` a 0/1 vector, a Box that is neither flat nor an image a flattened vector,
and from a ``Dict`` the non-numeric entries (a ``Text`` mission, say) are left out, with one printed
line that says so. :func:`observation_parts` then names each part the networks read: its TensorDict
key (``"observation"``, or the Dict's own keys), whether it is a vector or an image, its shape.

An image is a uint8 Box of rank 3, channels-last ``H×W×C`` or channels-first ``C×H×W`` (the first
dimension smaller than the last, as stacked frames are: ``4×84×84``); the CNN scales it to [0, 1]
and moves the channels first itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from .errors import AppError

SUPPORTED_OBSERVATIONS = (
    "Box (a flat vector, a uint8 image H×W×C or C×H×W, any other shape flattened), Discrete, "
    "MultiDiscrete, MultiBinary, or a Dict of those (non-numeric Dict entries such as Text are left out)"
)
SUPPORTED_ACTIONS = "Discrete, MultiDiscrete, MultiBinary or a flat Box"
# entries of a collected batch: a Dict observation key of the same name would be overwritten
RESERVED_KEYS = frozenset(
    {
        "action",
        "action_log_prob",
        "reward",
        "done",
        "terminated",
        "truncated",
        "next",
        "episode_reward",
        "collector",
        "state_value",
        "logits",
        "loc",
        "scale",
        "advantage",
        "value_target",
        "final",
        "_reset",
    }
)
_printed: set[str] = set()


class SpaceError(AppError):
    """A space the training app cannot model."""


def say_once(line: str) -> None:
    """Prints ``line`` the first time this process asks (a ``--seeds M`` group builds M environments)."""
    if line not in _printed:
        _printed.add(line)
        print(line, flush=True)


def forget_printed() -> None:
    """Each command says its lines again (the command line calls this as it starts)."""
    _printed.clear()


def is_image(space: gym.Space) -> bool:
    """A uint8 Box of rank 3."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8


def channels_first(shape: tuple[int, ...]) -> bool:
    """``C×H×W`` when the first dimension is smaller than the last (stacked frames), else ``H×W×C``."""
    return shape[0] < shape[2]


def _is_flat_float(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and np.issubdtype(space.dtype, np.floating)


def _vector(size: int) -> gym.spaces.Box:
    return gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)


def _one_hot(index: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    out = np.zeros(int(sizes.sum()), np.float32)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out[offsets + np.asarray(index, np.int64).reshape(-1)] = 1.0
    return out


def _plan_entry(space: gym.Space):
    """``(new_space, convert)`` for a Box, Discrete, MultiDiscrete or MultiBinary space (``convert``
    None when it stays as it is), ``None`` for any other (non-numeric) one."""
    if isinstance(space, gym.spaces.Box):
        if is_image(space) or _is_flat_float(space) and space.dtype == np.float32:
            return space, None
        if len(space.shape) == 1:  # float64 or integer vectors: float32
            return _vector(space.shape[0]), lambda x: np.asarray(x, np.float32)
        size = int(np.prod(space.shape))
        return _vector(size), lambda x: np.asarray(x, np.float32).reshape(size)
    if isinstance(space, gym.spaces.Discrete):
        n, start = np.array([int(space.n)]), int(space.start)
        return _vector(int(space.n)), lambda x: _one_hot(np.asarray(x) - start, n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec, start = space.nvec.reshape(-1).astype(np.int64), space.start.reshape(-1).astype(np.int64)
        return _vector(int(nvec.sum())), lambda x: _one_hot(np.asarray(x).reshape(-1) - start, nvec)
    if isinstance(space, gym.spaces.MultiBinary):
        size = int(np.prod(space.shape))
        return _vector(size), lambda x: np.asarray(x, np.float32).reshape(size)
    return None  # Text, MiniGrid's MissionSpace, Graph, Sequence, ...: nothing a network reads


class AppObservation(gym.ObservationWrapper):
    """Converts an observation to float32 vectors and uint8 images (see the module docstring)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if isinstance(space, gym.spaces.Dict):
            self._entries: dict[str, object] = {}
            new, dropped = {}, []
            for key, sub in space.spaces.items():
                if isinstance(sub, (gym.spaces.Dict, gym.spaces.Tuple)):
                    raise SpaceError(
                        f"the training app cannot model the nested observation entry {key!r}: {sub}; "
                        f"it supports {SUPPORTED_OBSERVATIONS}"
                    )
                plan = _plan_entry(sub)
                if plan is None:
                    dropped.append(f"{key!r} ({type(sub).__name__})")
                    continue
                if key in RESERVED_KEYS:
                    raise SpaceError(
                        f"the observation entry {key!r} has the name of an entry of the collected batch; "
                        f"rename it (reserved: {', '.join(sorted(RESERVED_KEYS))})"
                    )
                new[key], self._entries[key] = plan
            if not new:
                raise SpaceError(
                    f"the observation space {space} has no numeric entry; it supports {SUPPORTED_OBSERVATIONS}"
                )
            if dropped:
                say_once(f"observation: left out the non-numeric entries {', '.join(dropped)}")
            self.observation_space = gym.spaces.Dict(new)
        else:
            if isinstance(space, gym.spaces.Tuple):
                raise SpaceError(
                    f"the training app cannot model the observation space {space}; it supports {SUPPORTED_OBSERVATIONS}"
                )
            plan = _plan_entry(space)
            if plan is None:
                raise SpaceError(
                    f"the training app cannot model the non-numeric observation space {space}; it supports "
                    f"{SUPPORTED_OBSERVATIONS}"
                )
            self._entries = None
            self.observation_space, self._convert = plan

    def observation(self, observation):
        if self._entries is None:
            return observation if self._convert is None else self._convert(observation)
        return {key: (observation[key] if c is None else c(observation[key])) for key, c in self._entries.items()}


def needs_conversion(space: gym.Space) -> bool:
    """Whether :class:`AppObservation` changes anything (a flat float Box, an image: no)."""
    return not (_is_flat_float(space) or is_image(space))


@dataclass(frozen=True)
class Part:
    """One observation part the networks read."""

    key: str
    """Its TensorDict key: ``"observation"``, or the Dict entry's own key."""
    kind: str
    """``"vector"`` or ``"image"``."""
    shape: tuple[int, ...]
    """As the environment reports it (an image's channels where they are)."""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def observation_parts(space: gym.Space) -> list[Part]:
    """The parts of a converted observation space (:class:`AppObservation`'s, or a flat float Box)."""
    spaces = space.spaces if isinstance(space, gym.spaces.Dict) else {"observation": space}
    parts = []
    for key, sub in spaces.items():
        if is_image(sub):
            parts.append(Part(key, "image", tuple(sub.shape)))
        elif isinstance(sub, gym.spaces.Box) and len(sub.shape) == 1:
            parts.append(Part(key, "vector", tuple(sub.shape)))
        else:
            raise SpaceError(
                f"the training app cannot model the observation space {sub}; it supports {SUPPORTED_OBSERVATIONS}"
            )
    return parts


def check_action_space(space: gym.Space) -> None:
    """Raises SpaceError for an action space the app has no policy for."""
    ok = (
        isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiBinary))
        or (isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1)
        or (isinstance(space, gym.spaces.Box) and len(space.shape) == 1)
    )
    if not ok:
        raise SpaceError(f"the training app cannot model the action space {space}; it supports {SUPPORTED_ACTIONS}")


__all__ = [
    "AppObservation",
    "Part",
    "SpaceError",
    "SUPPORTED_ACTIONS",
    "SUPPORTED_OBSERVATIONS",
    "channels_first",
    "check_action_space",
    "forget_printed",
    "is_image",
    "needs_conversion",
    "observation_parts",
    "say_once",
]
