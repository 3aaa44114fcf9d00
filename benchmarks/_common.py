"""Helpers shared by the side-by-side benchmarks: machine info, the peer (sb3-contrib TRPO) built
from one of our TrainConfigs, timing, tables and JSON. Not a benchmark itself."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import trpo_torchrl
from trpo_torchrl.ops import extension_loaded


def sb3_available() -> bool:
    try:
        import sb3_contrib  # noqa: F401
    except ImportError:
        return False
    return True


def machine() -> dict[str, Any]:
    """Machine, versions and load, recorded next to every table."""
    import tensordict
    import torchrl

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "trpo_torchrl": trpo_torchrl.__version__,
        "compiled_ops": extension_loaded(),
    }
    try:
        info["load_average_1m_5m_15m"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if sb3_available():
        import sb3_contrib
        import stable_baselines3

        info["sb3_contrib"] = sb3_contrib.__version__
        info["stable_baselines3"] = stable_baselines3.__version__
    try:
        import gymnasium

        info["gymnasium"] = gymnasium.__version__
        import mujoco

        info["mujoco"] = mujoco.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Stopwatch:
    """Wall time of a block; synchronises CUDA before reading the clock when ``cuda`` is set."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.seconds = 0.0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._t0


def sb3_trpo(config, env=None, *, verbose: int = 0):
    """sb3-contrib's TRPO with the same hyperparameters as our ``config`` (a TrainConfig), and the
    environment rl-zoo3 would give it (``make_vec_env`` + ``VecNormalize`` when the preset normalises).

    Names map as in :mod:`trpo_torchrl.app.presets` (our critic_eps is SB3's fixed Adam eps, 1e-5).
    Differences that remain: SB3 normalises observations with the statistics of the batch being
    collected, ours updates them once per batch after the update.
    """
    if config.kl_reduction != "mean":
        raise ValueError(
            "sb3_trpo: sb3-contrib averages a Gaussian's KL over the action dimensions; compare it with "
            f"kl_reduction='mean' (got {config.kl_reduction!r})"
        )
    from sb3_contrib import TRPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    if env is None:
        env = make_vec_env(config.env, n_envs=config.num_envs, seed=config.seed)
        if config.normalize_observations or config.normalize_rewards:
            env = VecNormalize(
                env, norm_obs=config.normalize_observations, norm_reward=config.normalize_rewards, gamma=config.gamma
            )
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[config.activation]
    hidden = list(config.hidden_sizes)
    policy_kwargs = dict(
        net_arch=dict(pi=hidden, vf=hidden), activation_fn=activation, log_std_init=config.init_log_std
    )
    return TRPO("MlpPolicy", env, policy_kwargs=policy_kwargs, verbose=verbose, **sb3_trpo_kwargs(config))


def sb3_trpo_kwargs(config) -> dict[str, Any]:
    """sb3-contrib ``TRPO``'s keyword arguments for our ``config``'s TRPO settings (the policy and
    its network are the caller's): each name mapped as in :mod:`trpo_torchrl.app.presets`."""
    return dict(
        learning_rate=config.critic_lr,
        n_steps=config.steps_per_env,
        batch_size=config.critic_minibatch,
        gamma=config.gamma,
        cg_max_steps=config.cg_iters,
        cg_damping=config.damping,
        line_search_shrinking_factor=config.backtrack_coeff,
        line_search_max_iter=config.backtrack_iters,
        n_critic_updates=config.critic_epochs,
        gae_lambda=config.gae_lambda,
        normalize_advantage=config.normalize_advantage,
        target_kl=config.max_kl,
        sub_sampling_factor=max(1, round(1 / config.fvp_subsample)),
        seed=config.seed,
        device=config.device,
    )


def our_config(env: str, **overrides):
    """Our TrainConfig for ``env`` with its rl-zoo3 preset, quiet (no logger, no progress bar)."""
    from trpo_torchrl.app.config import build_config

    cli = {"env": env, "logger": "none", "progress": False, "checkpoint_every": 0, "eval_episodes": 0}
    cli.update(overrides)
    return build_config(cli)


def write_json(path: str | Path | None, result: dict) -> None:
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {path}")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def median_ms(fn, device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in ms after ``warmup`` calls, synchronising CUDA around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def pick_devices(choice: str) -> list[torch.device]:
    """``cpu``, ``cuda`` or ``all`` (CPU, and CUDA when present) as devices; exits if none is left."""
    devices = [torch.device("cpu")] if choice in ("cpu", "all") else []
    if choice in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        raise SystemExit("no device to run on (asked for CUDA without one?)")
    return devices
