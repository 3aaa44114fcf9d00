"""Actor and critic networks for the training app, built from the library's public pieces."""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from tensordict.nn import TensorDictModule
from torch import nn

from trpo_torchrl import categorical_actor, gaussian_actor

from .config import TrainConfig
from .normalize import ObservationNormalizer

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(inputs: int, outputs: int, hidden: tuple[int, ...], activation: str, out_gain: float) -> nn.Sequential:
    """An MLP with orthogonal initialisation (hidden gain √2, output gain ``out_gain``, zero biases),
    the initialisation Stable-Baselines3's policies use, so learning curves compare like for like."""
    layers: list[nn.Module] = []
    sizes = (inputs, *hidden)
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], outputs))
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        nn.init.orthogonal_(layer.weight, gain=out_gain if i == len(linears) - 1 else math.sqrt(2))
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def observation_size(space: gym.Space) -> int:
    if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
        raise ValueError(f"the training app needs a flat Box observation space, got {space}")
    return space.shape[0]


def build_models(config: TrainConfig, observation_space: gym.Space, action_space: gym.Space):
    """(actor, critic, normalizer) for the spaces of one environment (not the vector env's).

    The observation normalizer is one module placed first in both networks, so the actor and the
    critic always see the same normalisation.
    """
    obs_dim = observation_size(observation_space)
    normalizer = ObservationNormalizer((obs_dim,), enabled=config.normalize_observations)
    hidden, act = tuple(config.hidden_sizes), config.activation
    if isinstance(action_space, gym.spaces.Discrete):
        net = nn.Sequential(normalizer, mlp(obs_dim, int(action_space.n), hidden, act, out_gain=0.01))
        actor = categorical_actor(net, one_hot=True)
    elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        action_dim = action_space.shape[0]
        net = nn.Sequential(normalizer, mlp(obs_dim, action_dim, hidden, act, out_gain=0.01))
        actor = gaussian_actor(net, action_dim, init_log_std=config.init_log_std)
    else:
        raise ValueError(f"the training app supports Discrete and flat Box action spaces, got {action_space}")
    critic_net = nn.Sequential(normalizer, mlp(obs_dim, 1, hidden, act, out_gain=1.0))
    critic = TensorDictModule(critic_net, in_keys=["observation"], out_keys=["state_value"])
    device = torch.device(config.device)
    return actor.to(device), critic.to(device), normalizer
