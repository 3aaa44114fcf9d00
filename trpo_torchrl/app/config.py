"""The training configuration: one dataclass, a docstring per field, presets and YAML overrides.

Precedence, lowest first: the dataclass defaults (Stable-Baselines3-contrib's TRPO defaults), the
environment's preset (:mod:`trpo_torchrl.app.presets`), a YAML file (``--config``), command-line
flags. Every layer is validated: an unknown key or a value of the wrong type or range is an error
that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import AppError


class ConfigError(AppError):
    """A configuration key or value that cannot be used."""


POLICIES = ("auto", "mlp", "cnn", "lstm", "gru")
RECURRENT_POLICIES = ("lstm", "gru")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved in every checkpoint."""

    env: str = "CartPole-v1"
    """Gymnasium environment id (MuJoCo tasks need the ``mujoco`` extra), or ``module:Id`` to import
    your own module first (it registers the id)."""
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments for ``gymnasium.make``: a YAML or JSON mapping, e.g. ``'{size: 8}'``."""
    preset: str | None = None
    """Hyperparameter preset; defaults to the environment's own preset when there is one."""
    total_frames: int = 1_000_000
    """Environment steps to train for (all environments together)."""
    seed: int = 0
    """Seed of the environments, the policy's sampling and every other random draw."""
    seeds: int = 1
    """Train this many independent members (seeds seed, seed+1, ...) with one command, their
    collection, actor steps and critic fits batched (see ``member_processes``); each writes its own
    run directory."""
    member_processes: int = 0
    """Processes ``--seeds M`` trains its members in, each a population of a contiguous slice of at
    least two of them; member m's results are the same in any slicing. 0 takes one per core (at
    most M / 2) for the ``direct`` collector on the CPU and 1 otherwise; 1 trains every member in
    this process; P > 1, P processes."""
    device: str = "cpu"
    """Device of the networks and the update (``cpu`` or ``cuda``)."""
    threads: int = 1
    """torch's CPU threads in this process (0: torch's default, one per core). The thread count
    changes how torch sums, so a run's numbers depend on it: with 1 the same command gives the same
    run whatever the machine's core count (same versions, same CPU type), at a small cost in speed (HalfCheetah on a 2-core
    machine: 6,390 frames/s with 1 thread, 6,700 with 2)."""
    env_threads: int = 1
    """Threads stepping the environments of the ``direct`` collector (all members' together under
    ``--seeds M``): 1 steps them in turn on the main thread; N > 1 on N threads; 0 one per core for
    MuJoCo tasks (whose simulator releases the GIL while it steps) and 1 for others (a pure-Python
    step such as CartPole's only slows down on threads). The results do not depend on it; on the
    shared 2-core machine measured, threads mostly cost time (docs/population.md)."""
    env_workers: int = 0
    """Worker processes stepping the ``direct`` collector's environments: 0 steps them in this
    process; N >= 1 in worker processes (gymnasium's ``AsyncVectorEnv``, one per environment, all
    members' stepped at once under ``--seeds M``, at most N stepping at the same time). The results
    do not depend on it. On a 2-core machine a worker's pipe round trip costs more than the step it
    runs, for every M: a HalfCheetah batch of 1,024 steps per environment takes 0.17 s in this
    process and 0.56 s with workers at M = 1, 1.03 s and 2.53 s at M = 8
    (``benchmarks/population.py --collection``), so 0 is the default; workers can pay off for
    environments whose step is slow, on free cores (docs/population.md)."""
    logdir: str = "runs"
    """Folder under which each run gets its own directory."""
    run_name: str | None = None
    """The run directory's name; defaults to ``<env>__seed<seed>__<time>``."""

    num_envs: int = 1
    """Environments stepped together in one synchronous vector environment."""
    steps_per_env: int = 2048
    """Steps each environment contributes to a batch (one TRPO iteration uses num_envs × this)."""
    collector: str = "direct"
    """``direct`` (one process: the app's own loop over the vector env, no per-step TensorDicts;
    several times faster than ``sync`` on a small CPU), ``sync`` (one process, TorchRL's
    ``Collector``), ``multisync`` (TorchRL's multi-process collector on this machine) or ``ray``
    (TorchRL's Ray collector: a local Ray instance, or the cluster at ``ray_address``)."""
    workers: int = 1
    """Collector workers (processes for ``multisync``, Ray actors for ``ray``); each runs ``num_envs``
    environments for ``steps_per_env / workers`` steps, so a batch still holds ``frames_per_batch``
    frames. Under ``torchrun`` every learner rank has this many workers."""
    ray_address: str | None = None
    """Address of a running Ray cluster for ``collector=ray`` (else ``$RAY_ADDRESS``; else a local
    Ray instance is started for the run)."""

    gamma: float = 0.99
    """Discount factor γ."""
    gae_lambda: float = 0.95
    """GAE's λ."""
    normalize_advantage: bool = True
    """Standardise advantages over the batch before the actor step."""
    max_kl: float = 0.01
    """Trust-region radius δ on the mean KL(π_old‖π_θ)."""
    kl_reduction: str = "mean"
    """How a multi-dimensional action's KL is measured: ``mean`` over the action dimensions (what
    Stable-Baselines3-contrib does, so its and rl-zoo3's max_kl and damping values mean the same here)
    or ``sum`` (the KL of the joint action distribution, as in the paper: d action dimensions then
    need d× max_kl and damping for the same step). No difference for discrete actions."""
    damping: float = 0.1
    """Damping added to the Fisher's diagonal in the CG solve."""
    cg_iters: int = 15
    """Conjugate-gradient iterations."""
    backtrack_iters: int = 10
    """Line-search candidates."""
    backtrack_coeff: float = 0.8
    """Line-search shrink factor β."""
    fvp: str = "gauss_newton"
    """Fisher-vector product: ``gauss_newton`` (JᵀMJ) or ``kl_hessian`` (double backward)."""
    fvp_subsample: float = 1.0
    """Fraction of the batch's states the Fisher is averaged over."""
    entropy_coeff: float = 0.0
    """Weight of the entropy bonus in the surrogate."""

    critic_lr: float = 1e-3
    """Adam learning rate of the critic."""
    critic_eps: float = 1e-5
    """Adam epsilon of the critic (Stable-Baselines3's value; torch's default is 1e-8)."""
    critic_epochs: int = 10
    """Passes of the critic fit over each batch."""
    critic_minibatch: int = 128
    """States per critic Adam step."""

    policy: str = "auto"
    """Network kind: ``mlp``, ``cnn`` (a CNN encoder per image entry of the observation, the
    rest concatenated, then the MLP), ``lstm`` or ``gru`` (the vector observation through a one-layer
    TorchRL LSTMModule/GRUModule, then the MLP head; collected by TorchRL's Collector) or ``auto``
    (``cnn`` when the observation holds an image, else ``mlp``)."""
    rnn_hidden: int = 64
    """State size of the ``lstm``/``gru`` policy's recurrent layer (rl-zoo3's recurrent PPO uses 64)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the actor and critic MLPs."""
    activation: str = "tanh"
    """Hidden activation: ``tanh`` or ``relu``."""
    init_log_std: float = 0.0
    """Initial log standard deviation of a Gaussian policy (state independent)."""
    normalize_observations: bool = False
    """Normalise observations with running statistics (saved in checkpoints)."""
    normalize_rewards: bool = False
    """Scale rewards by the running std of the discounted return."""
    clip_actions: bool = True
    """Clip continuous actions to the action box before they reach the environment."""

    eval_episodes: int = 10
    """Episodes of the final deterministic evaluation (0: none)."""
    eval_every: int = 0
    """Evaluate every this many iterations as well (0: only at the end)."""
    checkpoint_every: int = 10
    """Write a checkpoint every this many iterations (and always at the end and on Ctrl-C)."""
    logger: str = "csv"
    """TorchRL logger: ``csv``, ``tensorboard``, ``wandb`` or ``none``."""
    progress: bool = True
    """Show a progress bar."""

    @property
    def frames_per_batch(self) -> int:
        return self.num_envs * self.steps_per_env

    def frames_note(self) -> str:
        """The frames a run trains, which is whole batches: more than ``total_frames`` when they do not divide it."""
        iterations = math.ceil(self.total_frames / self.frames_per_batch)
        note = f"{iterations * self.frames_per_batch} frames ({iterations} iteration{'s' if iterations != 1 else ''} of {self.frames_per_batch})"
        if iterations * self.frames_per_batch != self.total_frames:
            note += f"; --total-frames {self.total_frames} rounded up to whole batches"
        return note

    def trust_region_kwargs(self) -> dict[str, Any]:
        """The options of :class:`~trpo_torchrl.TrustRegionUpdate` (and its population form)."""
        return {
            "max_kl": self.max_kl,
            "damping": self.damping,
            "cg_iters": self.cg_iters,
            "backtrack_iters": self.backtrack_iters,
            "backtrack_coeff": self.backtrack_coeff,
            "fvp": self.fvp,
            "fvp_subsample": self.fvp_subsample,
        }

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        d["env_kwargs"] = dict(self.env_kwargs)
        return d

    def validate(self) -> TrainConfig:
        """Checks ranges and choices; returns self."""
        checks = [
            ("total_frames", self.total_frames >= 1, "must be >= 1"),
            ("seeds", self.seeds >= 1, "must be >= 1"),
            ("threads", self.threads >= 0, "must be >= 0 (0: torch's default)"),
            ("member_processes", self.member_processes >= 0, "must be >= 0 (0: one per core, 1: this process)"),
            ("env_threads", self.env_threads >= 0, "must be >= 0 (0: one per core for MuJoCo tasks, 1: none)"),
            ("env_workers", self.env_workers >= 0, "must be >= 0 (0: none, N: worker processes, N stepping at once)"),
            ("num_envs", self.num_envs >= 1, "must be >= 1"),
            ("steps_per_env", self.steps_per_env >= 1, "must be >= 1"),
            ("workers", self.workers >= 1, "must be >= 1"),
            ("gamma", 0 < self.gamma <= 1, "must be in (0, 1]"),
            ("gae_lambda", 0 <= self.gae_lambda <= 1, "must be in [0, 1]"),
            ("max_kl", self.max_kl > 0 and math.isfinite(self.max_kl), "must be > 0"),
            ("damping", self.damping >= 0, "must be >= 0"),
            ("cg_iters", self.cg_iters >= 1, "must be >= 1"),
            ("backtrack_iters", self.backtrack_iters >= 1, "must be >= 1"),
            ("backtrack_coeff", 0 < self.backtrack_coeff < 1, "must be in (0, 1)"),
            ("fvp", self.fvp in ("gauss_newton", "kl_hessian"), "must be 'gauss_newton' or 'kl_hessian'"),
            ("kl_reduction", self.kl_reduction in ("sum", "mean"), "must be 'sum' or 'mean'"),
            ("fvp_subsample", 0 < self.fvp_subsample <= 1, "must be in (0, 1]"),
            ("entropy_coeff", self.entropy_coeff >= 0, "must be >= 0"),
            ("critic_lr", self.critic_lr > 0, "must be > 0"),
            ("critic_eps", self.critic_eps > 0, "must be > 0"),
            ("critic_epochs", self.critic_epochs >= 0, "must be >= 0"),
            ("critic_minibatch", self.critic_minibatch >= 1, "must be >= 1"),
            (
                "hidden_sizes",
                len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes),
                "must be positive widths",
            ),
            ("activation", self.activation in ("tanh", "relu"), "must be 'tanh' or 'relu'"),
            ("policy", self.policy in POLICIES, f"must be one of {', '.join(POLICIES)}"),
            ("rnn_hidden", self.rnn_hidden >= 1, "must be >= 1"),
            ("eval_episodes", self.eval_episodes >= 0, "must be >= 0"),
            ("eval_every", self.eval_every >= 0, "must be >= 0"),
            ("checkpoint_every", self.checkpoint_every >= 0, "must be >= 0"),
            (
                "logger",
                self.logger in ("csv", "tensorboard", "wandb", "none"),
                "must be csv, tensorboard, wandb or none",
            ),
            (
                "collector",
                self.collector in ("direct", "sync", "multisync", "ray"),
                "must be 'direct', 'sync', 'multisync' or 'ray'",
            ),
            ("device", re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None, "must be 'cpu', 'cuda' or 'cuda:N'"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"config: {name}={getattr(self, name)!r} {why}")
        if self.env_workers and self.env_threads > 1:
            raise ConfigError(
                f"config: env_workers={self.env_workers} steps the environments in worker processes, "
                f"env_threads={self.env_threads} on threads here: choose one"
            )
        if self.env_workers and self.collector != "direct":
            raise ConfigError(
                f"config: env_workers={self.env_workers} needs collector='direct' (the workers of "
                f"collector={self.collector!r} are set with workers)"
            )
        if self.collector in ("direct", "sync") and self.workers != 1:
            raise ConfigError(f"config: workers={self.workers} needs collector='multisync' or 'ray'")
        if self.policy in RECURRENT_POLICIES:
            if self.seeds > 1:
                raise ConfigError(
                    f"config: seeds={self.seeds} with policy={self.policy!r}: the population step (--seeds M > 1) "
                    "refuses recurrent actors; train each seed as its own run (--seed S)"
                )
            if self.collector not in ("direct", "sync"):
                raise ConfigError(
                    f"config: collector={self.collector!r} with policy={self.policy!r}: only the one-process "
                    "collector (sync, which direct becomes) carries the recurrent state; use --collector sync"
                )
        if self.member_processes > 1:
            if self.seeds < 2 * self.member_processes:
                raise ConfigError(
                    f"config: member_processes={self.member_processes} needs at least two members per process "
                    f"(seeds >= {2 * self.member_processes}), got seeds={self.seeds}: a one-member population "
                    "rounds differently from a larger one, and a member's results do not depend on its process"
                )
            if self.device != "cpu":
                raise ConfigError(
                    f"config: member_processes={self.member_processes} with device={self.device!r}: on a GPU the "
                    "members train batched in one process (member_processes 0 or 1)"
                )
            if self.collector == "ray":
                raise ConfigError(
                    f"config: member_processes={self.member_processes} with collector='ray': the members' Ray "
                    "workers are Ray's to place; train them in one process (member_processes 0 or 1)"
                )
        if self.ray_address is not None and self.collector != "ray":
            raise ConfigError(f"config: ray_address={self.ray_address!r} needs collector='ray'")
        self.check_split(1)
        return self

    def check_split(self, world_size: int) -> None:
        """Raises ConfigError unless the batch splits evenly over ``world_size`` learner ranks and
        their collector workers: each (rank, worker) steps its ``num_envs`` environments
        ``steps_per_env / (world_size × workers)`` times, so the ranks together see exactly
        ``frames_per_batch`` frames per iteration."""
        shards = world_size * self.workers
        if self.steps_per_env % shards:
            who = f"world size {world_size} × workers {self.workers}" if world_size > 1 else f"workers={self.workers}"
            raise ConfigError(
                f"config: steps_per_env={self.steps_per_env} does not divide over {who}; the batch of "
                f"frames_per_batch={self.frames_per_batch} frames is split evenly, so steps_per_env must be a "
                f"multiple of {shards}"
            )


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def field_docs() -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), for --help."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(TrainConfig))
    docs, body = {}, tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def coerce(name: str, value: Any) -> Any:
    """Converts a value from YAML or the command line to field ``name``'s type, or raises ConfigError."""
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"config: unknown key {name!r}{hint}")
    hint = _HINTS[name]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is dict:
        mapping = value
        if isinstance(value, str):
            try:
                mapping = yaml.safe_load(value) if value.strip() else {}
            except yaml.YAMLError:
                mapping = value
        mapping = {} if mapping is None else mapping
        if isinstance(mapping, dict) and all(isinstance(k, str) for k in mapping):
            return dict(mapping)
        raise ConfigError(
            f"config: {name}={value!r} is not a mapping of keyword names to values (YAML or JSON, "
            "e.g. '{size: 8}' or '{\"size\": 8}')"
        )
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            number = value
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:  # "1e6", "2048.0": fine when the number is a whole one
                    number = float(value)
            if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
                raise ValueError
            return int(number)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if hint is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(v) for v in items)
        if type(None) in args:  # str | None
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
                return None
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"config: {name}={value!r} is not a valid {getattr(hint, '__name__', hint)}")


def apply_overrides(config: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    """A copy of ``config`` with ``overrides`` applied (keys may use - or _)."""
    changes = {}
    for key, value in overrides.items():
        name = str(key).replace("-", "_")
        try:
            changes[name] = coerce(name, value)
        except ConfigError as err:
            raise ConfigError(f"{err} (from {source})") from None
    return dataclasses.replace(config, **changes)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a flat mapping of config keys from a YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config: {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def build_config(
    cli: dict[str, Any] | None = None, config_file: str | Path | None = None, base: TrainConfig | None = None
) -> TrainConfig:
    """Defaults (or ``base``) < preset < YAML file < command line; validated."""
    from .presets import preset_overrides

    cli = dict(cli or {})
    file_values = load_yaml(config_file) if config_file else {}
    config = base or TrainConfig()
    # the environment and preset decide which preset applies, so read them first
    env = cli.get("env", file_values.get("env", config.env))
    preset = cli.get("preset", file_values.get("preset", config.preset))
    if base is None:
        config = apply_overrides(config, {"env": env, "preset": preset}, "arguments")
        config = apply_overrides(
            config, preset_overrides(config.preset, config.env), f"preset {config.preset or config.env}"
        )
    config = apply_overrides(config, file_values, str(config_file))
    config = apply_overrides(config, cli, "the command line")
    return config.validate()


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """The config a checkpoint was saved with. Checkpoints written before ``kl_reduction`` and
    ``critic_eps`` existed measured the KL summed over action dimensions and used torch's Adam
    epsilon, and keep doing so when resumed (all of them name their collector; the key's default
    for a hand-written dict is the one that existed then, ``sync``)."""
    legacy = {"kl_reduction": "sum", "critic_eps": 1e-8, "collector": "sync"}
    return apply_overrides(TrainConfig(), {**legacy, **data}, "a checkpoint").validate()


__all__ = [
    "ConfigError",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "coerce",
    "config_from_dict",
    "field_docs",
    "load_yaml",
    "save_yaml",
]
