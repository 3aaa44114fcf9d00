"""Actor and critic networks for the training app, built from the library's public pieces.

A flat observation goes through an MLP (``--policy mlp``). An observation with images
(``--policy cnn``, what ``auto`` picks for them) goes through an encoder: a CNN per image entry (the
Nature-CNN of Mnih et al. 2015 for images of 36 px and more, a small 2×2 CNN for smaller ones such
as MiniGrid's 7×7 view), the vector entries concatenated beside the CNN features, as
Stable-Baselines3's ``CnnPolicy`` and ``MultiInputPolicy`` do. As in Stable-Baselines3(-contrib)'s
TRPO, whose policies share the features extractor by default (``share_features_extractor=True``),
the actor and the critic share the encoder and have their own heads; the critic fit leaves the
shared encoder to the trust-region step (CriticFit does, as sb3-contrib's critic update drops the
actor's gradients), so the policy stays inside its trust region.

Action heads: ``Discrete`` a one-hot categorical, a flat ``Box`` a diagonal Gaussian with a
state-independent scale, ``MultiDiscrete`` independent categoricals (one per dimension, logits
``[..., d, max n]``, the classes a dimension lacks at probability 0) and ``MultiBinary`` independent
Bernoullis — the last two ``Independent`` forms of distributions whose Fisher the trust-region step
takes in closed form (:mod:`trpo_torchrl.distributions`).

``--policy lstm|gru``: the (normalised) vector observation through a one-layer TorchRL
``LSTMModule``/``GRUModule``, then the MLP head and the action head above, as sb3-contrib's
``MlpLstmPolicy`` (rl-zoo3's recurrent settings: 64 units, ``net_arch`` pi=[64]). The critic is an MLP
on the same observation: the collector never runs the critic, so a recurrent critic would have no
stored state at a row's first step and would restart from zero there mid-episode, and it would add
another step-by-step pass over every row to each critic epoch. The environment stores the actor's
hidden state at every step (:func:`recurrent_env_transforms`); TRPOLoss re-runs the recurrence over
the ``[envs, T]`` rows (:mod:`trpo_torchrl.recurrent`).
"""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from tensordict.nn import InteractionType, TensorDictModule, TensorDictSequential
from torch import distributions as D
from torch import nn
from torchrl.envs import InitTracker, Transform
from torchrl.modules import GRUModule, IndependentNormal, LSTMModule, OneHotCategorical, ProbabilisticActor

from trpo_torchrl import categorical_actor, gaussian_actor
from trpo_torchrl.policies import StateIndependentScale
from trpo_torchrl.recurrent import RECURRENT_MODULES

from .config import RECURRENT_POLICIES, TrainConfig
from .normalize import ObservationNormalizer
from .spaces import Part, SpaceError, channels_first, observation_parts

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
NATURE_MIN_PIXELS = 36  # the Nature-CNN's 8/4/3 kernels need 36×36 to leave one pixel
SMALL_MIN_PIXELS = 4  # three 2×2 convolutions need 4×4
MASKED_LOGIT = -1e8  # a class a MultiDiscrete dimension lacks: probability exactly 0, no infinities


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


# -- encoders ---------------------------------------------------------------------------------------


def _orthogonal(module: nn.Module) -> nn.Module:
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(layer.weight, gain=math.sqrt(2))
            nn.init.zeros_(layer.bias)
    return module


class ImageCNN(nn.Module):
    """uint8 images ``[..., H, W, C]`` (or ``[..., C, H, W]``) to features ``[..., features]``:
    scaled to [0, 1], channels moved first, then the convolutions and one linear layer (ReLU)."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.channels_last = not channels_first(shape)
        c, h, w = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        if min(h, w) >= NATURE_MIN_PIXELS:  # the Nature-CNN
            convs = [nn.Conv2d(c, 32, 8, stride=4), nn.Conv2d(32, 64, 4, stride=2), nn.Conv2d(64, 64, 3, stride=1)]
            self.features = 512
        elif min(h, w) >= SMALL_MIN_PIXELS:  # small grids (MiniGrid's 7×7 view)
            convs = [nn.Conv2d(c, 16, 2), nn.Conv2d(16, 32, 2), nn.Conv2d(32, 64, 2)]
            self.features = 128
        else:
            raise SpaceError(
                f"an image observation of {h}×{w} pixels is too small for the CNN (at least "
                f"{SMALL_MIN_PIXELS}×{SMALL_MIN_PIXELS}); use --policy mlp"
            )
        layers: list[nn.Module] = []
        for conv in convs:
            layers += [conv, nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, c, h, w)).shape[-1]
        self.linear = nn.Sequential(nn.Linear(flat, self.features), nn.ReLU())
        _orthogonal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32) / 255.0
        if self.channels_last:
            x = x.movedim(-1, -3)
        lead = x.shape[:-3]
        return self.linear(self.convs(x.reshape(-1, *x.shape[-3:]))).reshape(*lead, self.features)


class FlatImage(nn.Module):
    """uint8 images to flat vectors in [0, 1] (``--policy mlp`` on an image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) / 255.0).flatten(-3)


class ObservationEncoder(nn.Module):
    """The observation parts (one tensor each, in ``parts`` order) to one feature vector: vectors
    normalised (when enabled) and images through their CNN (or flattened), concatenated."""

    def __init__(self, parts: list[Part], normalizers: nn.ModuleList, cnn: bool):
        super().__init__()
        self.normalizers = normalizers  # one per vector part, in order; shared with the critic
        encoders, size = [], 0
        for part in parts:
            if part.kind == "vector":
                encoders.append(nn.Identity())
                size += part.size
            elif cnn:
                encoders.append(ImageCNN(part.shape))
                size += encoders[-1].features
            else:
                encoders.append(FlatImage())
                size += part.size
        self.encoders = nn.ModuleList(encoders)
        self.kinds = [part.kind for part in parts]
        self.features = size

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out, v = [], 0
        for x, kind, encoder in zip(inputs, self.kinds, self.encoders):
            if kind == "vector":
                x = self.normalizers[v](x.to(torch.float32))
                v += 1
            out.append(encoder(x))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)


class EncodedNet(nn.Module):
    """``head(encoder(*inputs))``: one network of the actor or the critic over a shared encoder."""

    def __init__(self, encoder: ObservationEncoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, *inputs: torch.Tensor):
        return self.head(self.encoder(*inputs))


# -- action heads -----------------------------------------------------------------------------------


class IndependentCategorical(D.Independent):
    """Independent categoricals over logits ``[..., d, k]``: integer actions ``[..., d]``."""

    def __init__(self, logits: torch.Tensor):
        super().__init__(D.Categorical(logits=logits), 1)

    @property
    def deterministic_sample(self) -> torch.Tensor:
        return self.base_dist.logits.argmax(-1)


class IndependentBernoulli(D.Independent):
    """Independent Bernoullis over logits ``[..., d]``: 0/1 actions ``[..., d]`` (as floats)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__(D.Bernoulli(logits=logits), 1)

    @property
    def deterministic_sample(self) -> torch.Tensor:
        return (self.base_dist.logits > 0).to(self.base_dist.logits.dtype)


class MultiDiscreteLogits(nn.Module):
    """``sum(nvec)`` logits to ``[..., d, max(nvec)]``, the classes a dimension lacks at MASKED_LOGIT."""

    def __init__(self, nvec: list[int]):
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        k = max(self.nvec)
        index = torch.tensor([i * k + j for i, n in enumerate(self.nvec) for j in range(n)])
        self.register_buffer("index", index, persistent=False)
        self.width = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, k = len(self.nvec), self.width
        if all(n == k for n in self.nvec):
            return x.unflatten(-1, (d, k))
        out = x.new_full((*x.shape[:-1], d * k), MASKED_LOGIT)
        out = out.index_copy(-1, self.index, x)
        return out.unflatten(-1, (d, k))


def _actor(net: nn.Module, in_keys: list[str], out_keys: list[str], distribution_class) -> ProbabilisticActor:
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=in_keys, out_keys=out_keys),
        in_keys=out_keys,
        distribution_class=distribution_class,
        return_log_prob=True,
        # sample when no exploration type is set: TRPO's surrogate needs on-policy random actions
        default_interaction_type=InteractionType.RANDOM,
    )


def action_outputs(action_space: gym.Space) -> int:
    """The actor network's output size for ``action_space``."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return int(action_space.nvec.sum())
    if isinstance(action_space, gym.spaces.MultiBinary) and len(action_space.shape) == 1:
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return int(action_space.shape[0])
    raise SpaceError(
        f"the training app supports Discrete, MultiDiscrete, flat MultiBinary and flat Box action spaces, "
        f"got {action_space}"
    )


# -- the models -------------------------------------------------------------------------------------


def resolve_policy(policy: str, parts: list[Part]) -> str:
    """``mlp``, ``cnn``, ``lstm`` or ``gru``: ``auto`` picks ``cnn`` when an image is among the
    observation's parts; a recurrent policy over an image is refused (no CNN+RNN encoder)."""
    images = any(part.kind == "image" for part in parts)
    if policy in RECURRENT_POLICIES and images:
        image = next(part for part in parts if part.kind == "image")
        raise SpaceError(
            f"--policy {policy}: the observation holds an image ({image.key!r}, uint8 {'x'.join(map(str, image.shape))}); "
            f"the CNN+{policy.upper()} combination is not supported (lstm/gru read vector observations); use --policy cnn"
        )
    if policy == "auto":
        return "cnn" if images else "mlp"
    if policy == "cnn" and not images:
        raise SpaceError("--policy cnn needs an image in the observation (a uint8 Box H×W×C or C×H×W); use mlp")
    return policy


def is_plain(observation_space: gym.Space, action_space: gym.Space, policy: str) -> bool:
    """A flat Box observation through an MLP to a Discrete or flat Box action: the models (and
    the collector) of the app's first version, unchanged."""
    flat = isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) == 1
    actions = isinstance(action_space, gym.spaces.Discrete) or (
        isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1
    )
    return flat and actions and policy in ("auto", "mlp")


def build_models(config: TrainConfig, observation_space: gym.Space, action_space: gym.Space):
    """(actor, critic, normalizer) for the spaces of one environment (not the vector env's), as
    :func:`~.envs.make_vector_env` converts them.

    The observation normalizer (one module, or one per vector entry of a Dict observation, see
    :func:`observation_normalizers`) is shared by both networks, so the actor and the critic always
    see the same normalisation.
    """
    if is_plain(observation_space, action_space, config.policy):
        return _plain_models(config, observation_space, action_space)
    parts = observation_parts(observation_space)
    kind = resolve_policy(config.policy, parts)
    if kind in RECURRENT_POLICIES:
        return _recurrent_models(config, parts, action_space, kind)
    cnn = kind == "cnn"
    normalizers = nn.ModuleList(
        ObservationNormalizer(part.shape, enabled=config.normalize_observations)
        for part in parts
        if part.kind == "vector"
    )
    encoder = ObservationEncoder(parts, normalizers, cnn)
    # sb3's CnnPolicy puts the action and value layers right on the Nature-CNN's features
    only_images = cnn and all(part.kind == "image" for part in parts)
    hidden = () if only_images else tuple(config.hidden_sizes)
    act = config.activation
    in_keys = [part.key for part in parts]
    outputs = action_outputs(action_space)
    policy_head = mlp(encoder.features, outputs, hidden, act, out_gain=0.01)
    if isinstance(action_space, gym.spaces.Discrete):
        actor = categorical_actor(EncodedNet(encoder, policy_head), in_keys=in_keys, one_hot=True)
    elif isinstance(action_space, gym.spaces.Box):
        head = nn.Sequential(policy_head, StateIndependentScale(outputs, config.init_log_std))
        actor = _actor(EncodedNet(encoder, head), in_keys, ["loc", "scale"], IndependentNormal)
    elif isinstance(action_space, gym.spaces.MultiDiscrete):
        head = nn.Sequential(policy_head, MultiDiscreteLogits(action_space.nvec.tolist()))
        actor = _actor(EncodedNet(encoder, head), in_keys, ["logits"], IndependentCategorical)
    else:  # MultiBinary (action_outputs refused anything else)
        actor = _actor(EncodedNet(encoder, policy_head), in_keys, ["logits"], IndependentBernoulli)
    critic_net = EncodedNet(encoder, mlp(encoder.features, 1, hidden, act, out_gain=1.0))
    critic = TensorDictModule(critic_net, in_keys=in_keys, out_keys=["state_value"])
    device = torch.device(config.device)
    keyed = PartNormalizers([part.key for part in parts if part.kind == "vector"], normalizers)
    return actor.to(device), critic.to(device), keyed


def _plain_models(config: TrainConfig, observation_space: gym.Space, action_space: gym.Space):
    obs_dim = observation_size(observation_space)
    normalizer = ObservationNormalizer((obs_dim,), enabled=config.normalize_observations)
    hidden, act = tuple(config.hidden_sizes), config.activation
    if isinstance(action_space, gym.spaces.Discrete):
        net = nn.Sequential(normalizer, mlp(obs_dim, int(action_space.n), hidden, act, out_gain=0.01))
        actor = categorical_actor(net, one_hot=True)
    else:
        action_dim = action_space.shape[0]
        net = nn.Sequential(normalizer, mlp(obs_dim, action_dim, hidden, act, out_gain=0.01))
        actor = gaussian_actor(net, action_dim, init_log_std=config.init_log_std)
    critic_net = nn.Sequential(normalizer, mlp(obs_dim, 1, hidden, act, out_gain=1.0))
    critic = TensorDictModule(critic_net, in_keys=["observation"], out_keys=["state_value"])
    device = torch.device(config.device)
    return actor.to(device), critic.to(device), normalizer


def _recurrent_models(config: TrainConfig, parts: list[Part], action_space: gym.Space, kind: str):
    """``--policy lstm|gru``: encoder (normalised vectors) → LSTMModule/GRUModule → MLP head →
    the action distribution; an MLP critic on the encoder's output (see the module docstring)."""
    normalizers = nn.ModuleList(
        ObservationNormalizer(part.shape, enabled=config.normalize_observations) for part in parts
    )
    encoder = ObservationEncoder(parts, normalizers, cnn=False)
    in_keys = [part.key for part in parts]
    rnn_class = LSTMModule if kind == "lstm" else GRUModule
    rnn = rnn_class(
        input_size=encoder.features, hidden_size=config.rnn_hidden, in_key="rnn_input", out_key="rnn_features"
    )
    hidden, act = tuple(config.hidden_sizes), config.activation
    outputs = action_outputs(action_space)
    head = mlp(config.rnn_hidden, outputs, hidden, act, out_gain=0.01)
    if isinstance(action_space, gym.spaces.Discrete):
        out_keys, distribution = ["logits"], OneHotCategorical
    elif isinstance(action_space, gym.spaces.Box):
        head = nn.Sequential(head, StateIndependentScale(outputs, config.init_log_std))
        out_keys, distribution = ["loc", "scale"], IndependentNormal
    elif isinstance(action_space, gym.spaces.MultiDiscrete):
        head = nn.Sequential(head, MultiDiscreteLogits(action_space.nvec.tolist()))
        out_keys, distribution = ["logits"], IndependentCategorical
    else:  # MultiBinary (action_outputs refused anything else)
        out_keys, distribution = ["logits"], IndependentBernoulli
    network = TensorDictSequential(
        TensorDictModule(encoder, in_keys=in_keys, out_keys=["rnn_input"]),
        rnn,
        TensorDictModule(head, in_keys=["rnn_features"], out_keys=out_keys),
    )
    actor = ProbabilisticActor(
        network,
        in_keys=out_keys,
        distribution_class=distribution,
        return_log_prob=True,
        default_interaction_type=InteractionType.RANDOM,
    )
    critic_net = EncodedNet(encoder, mlp(encoder.features, 1, hidden, act, out_gain=1.0))
    critic = TensorDictModule(critic_net, in_keys=in_keys, out_keys=["state_value"])
    device = torch.device(config.device)
    keyed = PartNormalizers(in_keys, normalizers)
    return actor.to(device), critic.to(device), keyed


def is_recurrent(actor: nn.Module) -> bool:
    """Whether ``actor`` holds a TorchRL LSTMModule/GRUModule (a hidden state carried between steps)."""
    return any(isinstance(m, RECURRENT_MODULES) for m in actor.modules())


def recurrent_env_transforms(actor: nn.Module) -> list[Transform]:
    """What an environment needs to run a recurrent ``actor`` one step at a time: ``InitTracker``
    (``is_init`` marks episode starts, where the module zeroes its state) and each module's primer
    (its hidden state stored at every step, zero after a reset). None for a memoryless actor."""
    modules = [m for m in actor.modules() if isinstance(m, RECURRENT_MODULES)]
    if not modules:
        return []
    return [InitTracker(), *(m.make_tensordict_primer() for m in modules)]


class PartNormalizers:
    """The observation normalisers of a Dict observation's vector entries, by TensorDict key (the
    modules live in the encoder; this only names them)."""

    def __init__(self, keys: list[str], modules: nn.ModuleList):
        self.keys = keys
        self.modules = modules

    def items(self):
        return list(zip(self.keys, self.modules))


def observation_normalizers(normalizer) -> list[tuple[str, ObservationNormalizer]]:
    """``(key, normaliser)`` for each observation entry whose statistics a batch updates."""
    if isinstance(normalizer, ObservationNormalizer):
        return [("observation", normalizer)]
    return normalizer.items()
