"""Hyperparameter presets that mirror rl-zoo3's TRPO presets (``hyperparams/trpo.yml`` of
DLR-RM/rl-baselines3-zoo), so a run here and a Stable-Baselines3-contrib run with the zoo's
settings are like for like.

Names map one to one: ``n_envs`` → num_envs, ``n_steps`` → steps_per_env, ``batch_size`` →
critic_minibatch, ``n_critic_updates`` → critic_epochs, ``learning_rate`` → critic_lr,
``cg_max_steps`` → cg_iters, ``cg_damping`` → damping, ``target_kl`` → max_kl, ``normalize`` →
normalize_observations + normalize_rewards, ``n_timesteps`` → total_frames. The zoo's MuJoCo
entries are for the v4 tasks; they are applied to v5 here. Pendulum-v1's zoo entry uses gSDE,
which this library does not implement: its preset keeps the zoo's other settings.

rl-zoo3 has no TRPO settings for Atari or MiniGrid; their presets mirror its PPO ones
(``hyperparams/ppo.yml``: ``atari`` and ``MiniGrid-DoorKey-5x5-v0``), with ``n_epochs`` → critic_epochs
and the PPO-only settings (clip range, entropy and value-loss coefficients, the learning-rate
schedule: here the rate is constant) left out. Every ale-py game (``ALE/...``) gets the ``atari``
preset.
"""

from __future__ import annotations

import difflib
from typing import Any

from .config import ConfigError

_MUJOCO = {
    "normalize_observations": True,
    "normalize_rewards": True,
    "num_envs": 2,
    "total_frames": 1_000_000,
    "critic_minibatch": 128,
    "steps_per_env": 1024,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "fvp_subsample": 1.0,
    "cg_iters": 25,
    "damping": 0.1,
    "critic_epochs": 20,
    "critic_lr": 1e-3,
}

# rl-zoo3 ppo.yml, "atari" (n_envs 8, n_steps 128, batch_size 256, n_epochs 4, learning_rate
# lin_2.5e-4, n_timesteps 1e7; gamma and gae_lambda at their defaults, 0.99 and 0.95)
_ATARI = {
    "num_envs": 8,
    "steps_per_env": 128,
    "total_frames": 10_000_000,
    "critic_minibatch": 256,
    "critic_epochs": 4,
    "critic_lr": 2.5e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
}

# rl-zoo3 ppo.yml, "MiniGrid-DoorKey-5x5-v0" (FlatObsWrapper, normalize, n_envs 8, n_steps 128,
# batch_size 64, n_epochs 10, learning_rate 2.5e-4, gamma 0.99, gae_lambda 0.95): the observation is
# the flat vector of app/minigrid.py, normalised as the zoo's VecNormalize does. total_frames is the
# learning check's budget (the zoo's is 1e5 for DoorKey).
_MINIGRID = {
    "normalize_observations": True,
    "normalize_rewards": True,
    "num_envs": 8,
    "steps_per_env": 128,
    "critic_minibatch": 64,
    "critic_epochs": 10,
    "critic_lr": 2.5e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
}

# Recurrent tasks: rl-zoo3 has no TRPO entry for them; these mirror its recurrent PPO entries
# (hyperparams/ppo_lstm.yml of DLR-RM/rl-baselines3-zoo, as the sb3 organisation's published
# ppo_lstm-CartPoleNoVel-v1 / ppo_lstm-PendulumNoVel-v1 model cards reprint them: n_envs, n_steps,
# gamma, gae_lambda, normalize with norm_obs only, learning_rate, CartPole's batch_size 256;
# policy_kwargs lstm_hidden_size=64, activation_fn=nn.ReLU, net_arch pi=[64] vf=[64]) in what applies
# to TRPO. learning_rate and batch_size go to the critic fit; n_epochs and clip_range have no TRPO
# counterpart (the trust region is sb3-contrib's default max_kl); Pendulum's gSDE is not implemented
# here; the zoo's LSTM critic (enable_critic_lstm) is an MLP critic here (app/models.py says why).
_RECURRENT = {"policy": "lstm", "rnn_hidden": 64, "hidden_sizes": (64,), "activation": "relu"}

PRESETS: dict[str, dict[str, Any]] = {
    # the default when an environment has no preset: Stable-Baselines3-contrib's TRPO defaults
    "sb3-default": {},
    "CartPole-v1": {
        "num_envs": 2,
        "total_frames": 100_000,
        "steps_per_env": 512,
        "critic_minibatch": 512,
        "damping": 1e-3,
        "gae_lambda": 0.98,
        "gamma": 0.99,
        "critic_lr": 1e-3,
        "critic_epochs": 20,
    },
    "Pendulum-v1": {
        "num_envs": 2,
        "total_frames": 100_000,
        "steps_per_env": 1024,
        "gamma": 0.9,
        "critic_epochs": 15,
    },
    "LunarLander-v3": {
        "num_envs": 2,
        "total_frames": 200_000,
        "steps_per_env": 512,
        "damping": 0.01,
        "gae_lambda": 0.98,
        "gamma": 0.99,
        "critic_lr": 1e-3,
        "critic_epochs": 15,
    },
    "Acrobot-v1": {
        "normalize_observations": True,
        "normalize_rewards": True,
        "num_envs": 2,
        "total_frames": 100_000,
        "steps_per_env": 1024,
    },
    "MountainCar-v0": {
        "normalize_observations": True,
        "normalize_rewards": True,
        "num_envs": 2,
        "total_frames": 100_000,
        "steps_per_env": 1024,
        "critic_epochs": 20,
    },
    "CartPoleNoVel-v1": {
        **_RECURRENT,
        "normalize_observations": True,
        "num_envs": 8,
        "steps_per_env": 32,
        "total_frames": 100_000,
        "gamma": 0.98,
        "gae_lambda": 0.8,
        "critic_lr": 1e-3,
        "critic_minibatch": 256,
    },
    "PendulumNoVel-v1": {
        **_RECURRENT,
        "normalize_observations": True,
        "num_envs": 4,
        "steps_per_env": 1024,
        "total_frames": 100_000,
        "gamma": 0.9,
        "gae_lambda": 0.95,
        "critic_lr": 1e-3,
        "critic_epochs": 10,
    },
    "Ant-v5": dict(_MUJOCO),
    "HalfCheetah-v5": {**_MUJOCO, "max_kl": 0.04},
    "Hopper-v5": dict(_MUJOCO),
    "Walker2d-v5": dict(_MUJOCO),
    "Humanoid-v5": {**_MUJOCO, "total_frames": 2_000_000},
    "Swimmer-v5": {**_MUJOCO, "gamma": 0.9999},
    "atari": dict(_ATARI),
    "MiniGrid-Empty-5x5-v0": {**_MINIGRID, "total_frames": 60_000},
    "MiniGrid-DoorKey-5x5-v0": {**_MINIGRID, "total_frames": 500_000},
}


def preset_name(preset: str | None, env: str) -> str:
    """The name of the preset a run of ``env`` takes: ``preset`` when given, else ``env``'s own
    (``atari`` for every ale-py game), else ``sb3-default``."""
    if preset is not None:
        return preset
    if env in PRESETS:
        return env
    return "atari" if env.startswith("ALE/") else "sb3-default"


def preset_overrides(preset: str | None, env: str) -> dict[str, Any]:
    """The overrides of ``preset``, or of ``env``'s preset when ``preset`` is None (none if it has none)."""
    if preset is None:
        return dict(PRESETS[preset_name(None, env)])
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, PRESETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"config: unknown preset {preset!r}{hint} (known: {', '.join(sorted(PRESETS))})")
    return dict(PRESETS[preset])
