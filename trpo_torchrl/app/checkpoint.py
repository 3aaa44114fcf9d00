"""Checkpoints: ``torch.save`` files written atomically (temporary file, fsync, rename), so a crash
or Ctrl-C mid-write leaves the previous checkpoint intact, and read back with clear errors; and the
run state beside the models that a resumed run needs to continue bit for bit (the random number
generators')."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import AppError

CHECKPOINT_DIR = "checkpoints"
FORMAT = "trpo_torchrl.checkpoint"
VERSION = 1


class CheckpointError(AppError):
    """A checkpoint that cannot be read."""


class CheckpointWriteError(AppError):
    """A training run's checkpoint that cannot be written (a full disk, a directory that refuses
    writes); the training app raises it for the OSError of :func:`save_checkpoint`."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes ``state`` to ``path`` atomically; returns the path. A write that fails (a full disk)
    raises its OSError and leaves the file that was at ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its ``checkpoints/final.pt``, else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("final.pt", "last.pt"):
            if (path / CHECKPOINT_DIR / name).is_file():
                return path / CHECKPOINT_DIR / name
        raise CheckpointError(
            f"no checkpoint in run directory {str(path)!r} (looked for {CHECKPOINT_DIR}/final.pt, last.pt)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (or the run directory holding one)."""
    path = resolve_checkpoint(path)
    try:
        # the file holds numpy RNG states and plain Python objects besides tensors
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated, not a torch file, wrong pickle...
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a checkpoint: {type(err).__name__}: {err}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a trpo_torchrl checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has version {state.get('version')}, this trpo_torchrl reads {VERSION}"
        )
    missing = [key for key in ("config", "actor") if not isinstance(state.get(key), dict)]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}: it is incomplete or was edited")
    return state


# -- random number generators ---------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seeds Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The global generators' states and those of ``generators`` (by name)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {k: g.get_state() for k, g in generators.items()},
    }


def load_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Restores what :func:`rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])
