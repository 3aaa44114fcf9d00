"""Checkpoints: ``torch.save`` files written atomically (temporary file, fsync, rename), so a crash
or Ctrl-C mid-write leaves the previous checkpoint intact, and read back with clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
FORMAT = "trpo_torchrl.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes ``state`` to ``path`` atomically; returns the path."""
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
        raise CheckpointError(f"no checkpoint in run directory {str(path)!r} (looked for {CHECKPOINT_DIR}/final.pt, last.pt)")
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
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a trpo_torchrl checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has version {state.get('version')}, this trpo_torchrl reads {VERSION}")
    missing = [key for key in ("config", "actor") if not isinstance(state.get(key), dict)]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}: it is incomplete or was edited")
    return state
