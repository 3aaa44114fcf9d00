"""A run's directory: its name, the refusal to write into another run's files, ``progress.csv`` and
the optional TorchRL logger (TensorBoard, W&B, CSV)."""

from __future__ import annotations

import csv
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINT_DIR
from .config import ConfigError, TrainConfig
from .errors import AppError


class RunDirError(AppError):
    """A run directory, or a log in it, that cannot be written."""


PROGRESS_FIELDS = [
    "iteration",
    "frames",
    "time_s",
    "fps",
    "train_return",
    "train_episodes",
    "eval_return",
    "eval_return_std",
    "kl",
    "surrogate_improvement",
    "step_accepted",
    "backtrack_steps",
    "cg_residual",
    "critic_loss",
    "explained_variance",
]


def env_slug(env: str) -> str:
    """``env`` as one folder name: the ``/`` of ``ALE/Pong-v5`` and the ``:`` of ``module:Id``
    become ``-`` (a run directory is one folder, with a name every file system takes)."""
    return env.replace("/", "-").replace(":", "-")


def default_run_name(config: TrainConfig) -> str:
    return f"{env_slug(config.env)}__seed{config.seed}__{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def earlier_run(run_dir: Path) -> str | None:
    """Why a new run may not use ``run_dir`` (another run's log or checkpoints are there), or None."""
    found = [name for name in ("progress.csv", CHECKPOINT_DIR) if (run_dir / name).exists()]
    if not found:
        return None
    return (
        f"run directory {str(run_dir)!r} already holds a run ({', '.join(found)}): choose another "
        f"--run-name or --logdir, or continue that run with --resume {run_dir}"
    )


def unwritable(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot hold a run (it cannot be created, or a probe file in it cannot be
    written and removed), or None. Folders the probe creates are removed again, so a run that
    fails to start later leaves nothing behind."""
    run_dir = Path(run_dir)
    created = []
    probe = run_dir / f".write-probe-{os.getpid()}"
    try:
        for folder in reversed([run_dir, *run_dir.parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as err:
        return (
            f"run directory {str(run_dir)!r} cannot be written ({err.strerror or err}"
            f"{': ' + repr(err.filename) if err.filename else ''}): choose another --logdir or free space there"
        )
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
    return None


def make_logger(config: TrainConfig, run_dir: Path):
    """The TorchRL logger ``config.logger`` names, writing under ``run_dir/logs``; None for 'none'."""
    if config.logger == "none":
        return None
    from torchrl.record.loggers import get_logger

    kwargs = {}
    if config.logger == "wandb":
        kwargs = {"project": "trpo_torchrl", "config": config.to_dict()}
    try:
        return get_logger(config.logger, logger_name=str(run_dir), experiment_name="logs", **kwargs)
    except ImportError as err:
        raise ConfigError(
            f"config: logger={config.logger!r} needs its package: pip install 'trpo-torchrl[{config.logger}]' ({err})"
        ) from None


class ProgressLog:
    """Appends one row per iteration to ``run_dir/progress.csv`` and sends its numbers to the logger."""

    def __init__(self, run_dir: Path, logger=None):
        self.path = Path(run_dir) / "progress.csv"
        self.logger = logger

    def write(self, row: dict[str, Any]) -> None:
        """Appends ``row``; the file is closed (flushed) after each row, so a run that stops keeps
        every row written before."""
        new = not self.path.exists()
        try:
            with self.path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=PROGRESS_FIELDS, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow({k: row.get(k, "") for k in PROGRESS_FIELDS})
        except OSError as err:
            raise RunDirError(
                f"cannot write {str(self.path)!r}: {err.strerror or err} (the rows before are kept); "
                "free space there, then continue with --resume " + str(self.path.parent)
            ) from None
        if self.logger is not None:
            for key, value in row.items():
                if key not in ("iteration", "frames") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.logger.log_scalar(key, value, step=row["frames"])
