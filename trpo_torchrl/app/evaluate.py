"""Deterministic evaluation: the policy's mode on fresh environments, normaliser statistics frozen;
a recurrent policy starts each episode from a zero hidden state and carries it from step to step."""

from __future__ import annotations

import numpy as np
import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from .envs import gym_vector_env, make_env
from .models import recurrent_env_transforms

MAX_PARALLEL = 16
EVAL_SEED_OFFSET = 10_000


def evaluation_seed(config) -> int:
    """The seed of a run's evaluation environments: the run's seed + 10,000 (apart from its training
    environments'). ``trpo-torchrl eval`` defaults to it, so eval on a run's final checkpoint runs
    the same episodes as the run's own final evaluation and prints the same mean return."""
    return config.seed + EVAL_SEED_OFFSET


@torch.no_grad()
def evaluate_actor(
    actor,
    env_id: str,
    episodes: int,
    *,
    seed: int,
    device="cpu",
    max_steps: int = 100_000,
    env_kwargs=None,
    policy: str = "auto",
) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes, run up to MAX_PARALLEL at a time.

    Each environment contributes its first episode only, so the set of episodes (and the result)
    does not depend on which environment finishes first.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    returns: list[float] = []
    round_seed = seed
    while len(returns) < episodes:
        n = min(MAX_PARALLEL, episodes - len(returns))
        # training=False: an Atari game plays whole games with its own rewards (app/atari.py)
        env = make_env(
            env_id, n, seed=round_seed, device=str(device), env_kwargs=env_kwargs, training=False, policy=policy
        )
        for transform in recurrent_env_transforms(actor):  # a recurrent actor's state starts at zero per episode
            env.append_transform(transform)
        returns += _first_episodes(actor, env, max_steps)
        env.close()
        round_seed += n
    return returns


def _first_episodes(actor, env, max_steps: int) -> list[float]:
    n = env.batch_size[0]
    total = torch.zeros(n, dtype=torch.float64)
    finished = torch.zeros(n, dtype=torch.bool)
    td = env.reset()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(max_steps):
            td = actor(td)
            td, td_next = env.step_and_maybe_reset(td)
            reward = td["next", "reward"].reshape(n).to(torch.float64)
            done = td["next", "done"].reshape(n)
            total += torch.where(finished, torch.zeros_like(reward), reward)
            finished |= done
            if bool(finished.all()):
                break
            td = td_next
    return total.tolist()


@torch.no_grad()
def record_video(
    actor,
    env_id: str,
    path,
    *,
    seed: int,
    device="cpu",
    max_steps: int = 10_000,
    fps: int = 30,
    env_kwargs=None,
    policy: str = "auto",
) -> float:
    """Renders one deterministic episode to ``path`` (a GIF); returns its return."""
    import gymnasium as gym
    import imageio.v2 as imageio
    from tensordict import TensorDict

    from .envs import resolve_env_id
    from .games import game_make_kwargs
    from .spaces import AppObservation, needs_conversion

    try:
        env_id = resolve_env_id(env_id)
        kwargs = game_make_kwargs(
            env_id, {**(env_kwargs or {}), "render_mode": "rgb_array"}, training=False, policy=policy
        )
        wrappers = kwargs.pop("wrappers", [])  # an Atari game's or MiniGrid task's own, as evaluation has them
        env = gym.make(env_id, **kwargs)
        for wrap in wrappers:
            env = wrap(env)
        if needs_conversion(env.observation_space):
            env = AppObservation(env)
        obs, _ = env.reset(seed=seed)
        first = env.render()
    except (gym.error.DependencyNotInstalled, ImportError) as err:
        from .envs import EnvError

        raise EnvError(f"rendering {env_id} needs more packages: pip install 'trpo-torchrl[video]' ({err})") from None
    frames, total = [first], 0.0
    memory = _zero_states(actor, device)  # a recurrent actor's hidden state, zero at the episode start
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for step in range(max_steps):
            parts = obs if isinstance(obs, dict) else {"observation": obs}
            td = TensorDict({k: _as_tensor(v, device) for k, v in parts.items()}, [])
            if memory is None:
                td = actor(td)
            else:  # one step of a batch of one, fed the state the last step left
                td = td.unsqueeze(0).update(memory)
                td["is_init"] = torch.tensor([[step == 0]], device=device)
                td = actor(td)
                memory = {key: td["next", key] for key in memory}
                td = td[0]
            action = td["action"].cpu().numpy()
            space = env.action_space
            if isinstance(space, gym.spaces.Discrete):
                action = int(np.argmax(action))
            elif isinstance(space, (gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
                action = action.astype(space.dtype)
            else:
                action = np.clip(action, space.low, space.high)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            frames.append(env.render())
            if terminated or truncated:
                break
    env.close()
    imageio.mimsave(str(path), frames, duration=1000 / fps)
    return total


def _zero_states(actor, device) -> dict[str, torch.Tensor] | None:
    """``{state key: zeros [1, layers, hidden]}`` for each LSTMModule/GRUModule of ``actor`` (None
    for a memoryless actor)."""
    from trpo_torchrl.recurrent import RECURRENT_MODULES

    states = {}
    for m in actor.modules():
        if isinstance(m, RECURRENT_MODULES):
            rnn = m.lstm if hasattr(m, "lstm") else m.gru
            for key in m.in_keys[1:-1]:  # the stored state(s) between the input and is_init
                states[key] = torch.zeros(1, rnn.num_layers, rnn.hidden_size, device=device)
    return states or None


def _as_tensor(value, device) -> torch.Tensor:
    """An observation part as the networks read it: uint8 images kept, anything else float32."""
    array = np.asarray(value)
    return torch.as_tensor(array, dtype=torch.uint8 if array.dtype == np.uint8 else torch.float32, device=device)


__all__ = ["evaluate_actor", "evaluation_seed", "record_video", "gym_vector_env"]
