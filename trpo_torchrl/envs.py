"""Partially observed classic-control tasks for recurrent policies, registered with gymnasium.

``CartPoleNoVel-v1`` and ``PendulumNoVel-v1`` are ``CartPole-v1`` and ``Pendulum-v1`` with the
velocity entries removed from the observation: CartPole keeps the cart position x and the pole
angle θ (``[x, θ]``), Pendulum keeps ``[cos θ, sin θ]``. Without the velocities one observation does
not determine the state, so a memoryless policy cannot balance well and a recurrent one has to
infer the velocities from the observation history. rl-zoo3 registers tasks of the same names for
its recurrent benchmarks (it zeroes the velocity entries, keeping the observation's length); here
they are dropped, so the observation holds only what the policy may read.

Importing :mod:`trpo_torchrl` registers both; the dynamics, rewards, episode ends and time limits
are the full tasks' own, so the kept entries equal the full task's entries step for step under the
same seed and actions. Environments built in worker processes (TorchRL's ``GymEnv(..., num_envs=k)``
steps a gymnasium ``AsyncVectorEnv``) need the registration there too: name the task
``"trpo_torchrl:CartPoleNoVel-v1"``, which makes gymnasium import the package first.
"""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium.envs.registration import load_env_creator

__all__ = ["KeepObservationEntries", "NO_VELOCITY_TASKS", "register_no_velocity_tasks"]

# task id -> (the full task, the observation entries kept)
NO_VELOCITY_TASKS: dict[str, tuple[str, tuple[int, ...]]] = {
    "CartPoleNoVel-v1": ("CartPole-v1", (0, 2)),  # x, θ (drops ẋ, θ̇)
    "PendulumNoVel-v1": ("Pendulum-v1", (0, 1)),  # cos θ, sin θ (drops θ̇)
}


class KeepObservationEntries(gymnasium.ObservationWrapper):
    """Keeps the entries ``keep`` of a flat ``Box`` observation (and of its space's bounds)."""

    def __init__(self, env: gymnasium.Env, keep: tuple[int, ...]):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
            raise TypeError(f"KeepObservationEntries: needs a 1-D Box observation space, got {space}")
        keep = tuple(int(i) for i in keep)
        if not keep or any(not 0 <= i < space.shape[0] for i in keep):
            raise ValueError(f"KeepObservationEntries: keep must index the {space.shape[0]} entries, got {keep}")
        self._keep = np.asarray(keep)
        self.observation_space = gymnasium.spaces.Box(
            low=space.low[self._keep], high=space.high[self._keep], dtype=space.dtype
        )

    def observation(self, observation):
        return observation[self._keep]


def make_without_velocity(full_id: str, keep: tuple[int, ...], **kwargs) -> gymnasium.Env:
    """The full task's bare environment (gymnasium.make adds the time limit and checks once, on
    the outside) with only the entries ``keep`` of its observation."""
    spec = gymnasium.spec(full_id)
    env = load_env_creator(spec.entry_point)(**{**spec.kwargs, **kwargs})
    return KeepObservationEntries(env, keep)


def register_no_velocity_tasks() -> None:
    """Registers the tasks of :data:`NO_VELOCITY_TASKS` with gymnasium (once; a repeat is a no-op)."""
    for task_id, (full_id, keep) in NO_VELOCITY_TASKS.items():
        if task_id in gymnasium.registry:
            continue
        full = gymnasium.spec(full_id)
        gymnasium.register(
            id=task_id,
            entry_point=make_without_velocity,
            kwargs={"full_id": full_id, "keep": keep},
            max_episode_steps=full.max_episode_steps,
            reward_threshold=full.reward_threshold,
        )


register_no_velocity_tasks()
