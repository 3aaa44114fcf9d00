"""Atari games (``ale-py``) for the training app: the standard preprocessing inside each
sub-environment, and the raw game score a training run reports.

One sub-environment, innermost first (``training`` adds the three marked wrappers):

1. ``AtariEnv`` made with ``frameskip=1`` and the emulator's own sticky actions off, then
   ``gymnasium.wrappers.StickyAction`` with the id's default probability (0.25 for the v5 ids,
   Machado et al. 2018; ``repeat_action_probability`` in the make arguments sets another): at
   each emulator frame the previous action repeats with that probability, as in the ALE, but
   drawn from the game's generator and remembered in Python, so a checkpoint holds them (the
   ALE's saved state does not hold the previous action) and a resumed run is bit for bit the
   uninterrupted one.
2. ``gymnasium.wrappers.AtariPreprocessing``: up to 30 no-op actions after each reset (1–30,
   drawn from the game's generator), frame skip 4 with the max over the last two frames,
   84×84 grayscale. Its ``terminal_on_life_loss`` is left off: its reset restarts the whole
   game, so a run would only ever play first lives.
3. :class:`FireReset`, in games whose second action is FIRE and that wait for it (Breakout, Pong,
   ...; the games Stable-Baselines3's ``AtariWrapper`` gives its ``FireResetEnv``): FIRE then the
   game's third action after each reset, and FIRE after each lost life, so every life starts in
   play (in Breakout a policy that never picks FIRE would otherwise stand still until the game's
   time limit). The steps it takes count in the returned reward and the game's episode.
4. :class:`GameScore` (training): sums the unclipped rewards of a whole game, across lost lives.
5. :class:`EpisodicLife` (training): a lost life terminates the training episode (the value
   target is cut there) but not the game; the next reset continues it with one no-op step.
6. Reward clipping to {-1, 0, 1} (training): ``gymnasium.wrappers.TransformReward(sign)``.
7. ``gymnasium.wrappers.FrameStackObservation(4)``: observations are ``uint8 (4, 84, 84)``,
   channels first; at a reset the stack is filled with the first frame.

Evaluation plays full games (no life-loss termination) with the game's own rewards.

What a training run reports: the batch's ``episode_reward`` is the sum of clipped rewards over
one life, which is what the learner sees but not a score anyone compares. So the app reads the
training return from :class:`GameScore` instead (:func:`drain_game_scores`): the real game score
of every game finished during the batch. The simulators must be in the learner's process for
that (``collector`` ``direct`` or ``sync``); with worker processes the column stays the clipped
per-life sum (:func:`game_score_reader` says so once).

A frame here is one agent step (4 emulator frames), as in Stable-Baselines3's ``total_timesteps``.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

NOOP_MAX = 30
FRAME_SKIP = 4
SCREEN_SIZE = 84
FRAME_STACK = 4
# gym.make keyword arguments of every Atari sub-environment: AtariPreprocessing does the frame
# skip, gymnasium's StickyAction the sticky actions
MAKE_KWARGS = {"frameskip": 1, "repeat_action_probability": 0.0}

_INSTALL = "pip install 'trpo-torchrl[atari]'"


def register_atari_ids(env_id: str) -> None:
    """Registers ale-py's ids (``ALE/Pong-v5``, ...) with Gymnasium; an ``ALE/`` id without ale-py
    installed is an error that says what to install."""
    try:
        import ale_py
    except ImportError:
        from .envs import EnvError

        raise EnvError(f"environment {env_id!r} needs ale-py: {_INSTALL}") from None
    gym.register_envs(ale_py)


def is_atari(env_id: str) -> bool:
    """Whether ``env_id`` is an ale-py game: an ``ALE/`` id, or a registered id whose entry point is ale-py's."""
    if env_id.startswith("ALE/"):
        return True
    spec = gym.registry.get(env_id)
    return spec is not None and str(spec.entry_point).startswith("ale_py")


def _sign(reward: float) -> float:
    return float(np.sign(reward))


def needs_fire(env: gym.Env) -> bool:
    """Whether the game waits for FIRE to start play: its action 1 is FIRE and it has at least 3
    actions (Stable-Baselines3's test for its ``FireResetEnv``)."""
    meanings = env.unwrapped.get_action_meanings()
    return len(meanings) >= 3 and meanings[1] == "FIRE"


class FireReset(gym.Wrapper):
    """FIRE (then action 2) after each reset, and FIRE after each lost life that does not end the
    game, for games that wait for FIRE to start play (:func:`needs_fire`); other games pass through.

    The reset's two steps are taken as Stable-Baselines3's ``FireResetEnv`` takes them (a step that
    ends the game resets it again); their rewards are not returned, as a reset returns none (in the
    games concerned they are 0). The FIRE after a lost life is part of the step that lost it: its
    reward is added to the step's, and an episode end it causes is the step's."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.active = needs_fire(env)
        self.lives = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self.active:
            for action in (1, 2):
                obs, _, terminated, truncated, info = self.env.step(action)
                if terminated or truncated:
                    obs, info = self.env.reset(**{k: v for k, v in kwargs.items() if k != "seed"})
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        if self.active and not (terminated or truncated) and 0 < lives < self.lives:
            obs, fire_reward, terminated, truncated, info = self.env.step(1)
            reward = reward + fire_reward
            lives = self.env.unwrapped.ale.lives()
        self.lives = lives
        return obs, reward, terminated, truncated, info


class GameScore(gym.Wrapper):
    """Sums the unclipped rewards of a whole game across lost lives; a finished game's score is
    appended to :attr:`finished` (the app drains it), the running sum :attr:`score` is saved in
    checkpoints with the other simulator state. Placed below :class:`EpisodicLife`, so the
    episodes it sees are whole games."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.score = 0.0
        self.finished: list[float] = []

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.score += float(reward)
        if terminated or truncated:
            self.finished.append(self.score)
            self.score = 0.0
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        self.score = 0.0  # a game cut short by an explicit reset is not a finished one
        return self.env.reset(**kwargs)


class EpisodicLife(gym.Wrapper):
    """Training only: a lost life ends the episode (``terminated``) while the game goes on.

    The reset after a lost life takes one no-op step instead of restarting the game (a reset
    with a seed, or after the game really ended, restarts it). Gymnasium's
    ``AtariPreprocessing(terminal_on_life_loss=True)`` restarts the game at every lost life.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = bool(terminated or truncated)
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op step ended the game: start a new one
                obs, info = self.env.reset(options=options)
        self.game_over = False
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


def atari_make_kwargs(env_id: str, make_kwargs: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """``gym.make`` arguments for a sub-environment and the sticky-action probability its
    :class:`~gymnasium.wrappers.StickyAction` gets: ``make_kwargs``' ``repeat_action_probability``,
    else the id's registered default (0.25 for v5, 0 for the ``NoFrameskip-v4`` ids)."""
    kwargs = dict(make_kwargs)
    default = gym.spec(env_id).kwargs.get("repeat_action_probability", 0.0)
    sticky = float(kwargs.pop("repeat_action_probability", default))
    return {**MAKE_KWARGS, **kwargs}, sticky


def atari_wrappers(training: bool, sticky: float) -> list[Callable[[gym.Env], gym.Env]]:
    """The wrappers of one sub-environment, innermost first (see the module docstring)."""
    first = [lambda env: gym.wrappers.StickyAction(env, sticky)] if sticky > 0 else []
    preprocess = lambda env: gym.wrappers.AtariPreprocessing(  # noqa: E731
        env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP, screen_size=SCREEN_SIZE, terminal_on_life_loss=False
    )
    stack = lambda env: gym.wrappers.FrameStackObservation(env, FRAME_STACK)  # noqa: E731
    if not training:
        return [*first, preprocess, FireReset, stack]
    clip = lambda env: gym.wrappers.TransformReward(env, _sign)  # noqa: E731
    return [*first, preprocess, FireReset, GameScore, EpisodicLife, clip, stack]


def make_atari_env(env_id: str, training: bool, **make_kwargs) -> gym.Env:
    """One preprocessed game (what each sub-environment of the app's vector env is)."""
    register_atari_ids(env_id)
    kwargs, sticky = atari_make_kwargs(env_id, make_kwargs)
    env = gym.make(env_id, **kwargs)
    for wrap in atari_wrappers(training, sticky):
        env = wrap(env)
    return env


def _find(env: gym.Env, kind: type) -> Any:
    while True:
        if isinstance(env, kind):
            return env
        if not isinstance(env, gym.Wrapper):
            return None
        env = env.env


# -- the game score a training run reports ---------------------------------------------------------


def drain_game_scores(venv: gym.vector.SyncVectorEnv) -> list[float]:
    """The scores of the games finished since the last call, over every sub-environment (emptied)."""
    scores: list[float] = []
    for sub in venv.envs:
        counter = _find(sub, GameScore)
        if counter is not None:
            scores += counter.finished
            counter.finished = []
    return scores


def game_score_reader(env_id: str, collector: str) -> Callable[[gym.vector.SyncVectorEnv], list[float]] | None:
    """For an Atari run: the function the app reads its training return with (None otherwise).

    With worker processes (``multisync``, ``ray``) the games are out of the learner's reach: the
    training return stays the clipped per-life sum, and a warning says so."""
    if not is_atari(env_id):
        return None
    if collector not in ("direct", "sync"):
        warnings.warn(
            f"{env_id} with collector={collector!r}: train_return is the sum of clipped rewards over one "
            "life (the workers' game scores are not read); the evaluation returns are whole games' scores. "
            "collector 'direct' or 'sync' reports game scores",
            stacklevel=2,
        )
        return None
    return drain_game_scores


# -- simulator state (checkpoints) ------------------------------------------------------------------


def atari_state(env: gym.Env) -> dict[str, Any] | None:
    """What a checkpoint needs of one sub-environment beyond its wrappers' plain attributes (the
    sticky action's previous action, the lives, the game score, the generator): the emulator, the
    frames being max-pooled and the frame stack.
    None for a sub-environment that is not an Atari game."""
    unwrapped = env.unwrapped
    if not hasattr(unwrapped, "ale"):
        return None
    state = unwrapped.ale.cloneState(include_rng=True).serialize()
    out: dict[str, Any] = {"ale": np.frombuffer(state, dtype=np.uint8).copy()}
    preprocess = _find(env, gym.wrappers.AtariPreprocessing)
    if preprocess is not None:
        out["max_pool"] = [frame.copy() for frame in preprocess.obs_buffer]
    stack = _find(env, gym.wrappers.FrameStackObservation)
    if stack is not None:
        out["frame_stack"] = [np.array(frame, copy=True) for frame in stack.obs_queue]
    return out


def load_atari_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Restores :func:`atari_state`'s snapshot into a sub-environment made the same way."""
    import ale_py

    env.unwrapped.ale.restoreState(ale_py.ALEState(np.asarray(state["ale"], dtype=np.uint8).tobytes()))
    preprocess = _find(env, gym.wrappers.AtariPreprocessing)
    if preprocess is not None and "max_pool" in state:
        for buffer, frame in zip(preprocess.obs_buffer, state["max_pool"]):
            buffer[...] = frame
    stack = _find(env, gym.wrappers.FrameStackObservation)
    if stack is not None and "frame_stack" in state:
        stack.obs_queue = deque([np.array(f, copy=True) for f in state["frame_stack"]], maxlen=stack.stack_size)
