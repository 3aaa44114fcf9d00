"""Checkpoints: ``torch.save`` files written atomically (temporary file, fsync, rename), so a crash
or Ctrl-C mid-write leaves the previous checkpoint intact, and read back with clear errors; and the
run state beside the models that a resumed run needs to continue bit for bit (the random number
generators').

A checkpoint is read with ``torch.load(..., weights_only=True)``: unpickling it builds tensors and
plain containers and calls nothing else, so a file from elsewhere cannot run code when it is
evaluated or resumed. The few other objects a run's state holds (numpy arrays and scalars, numpy
generators, TensorDicts) are written as tagged plain dicts of tensors and numbers
(:func:`encode_state`) and rebuilt after loading (:func:`decode_state`). A file that asks the
unpickler for anything else is refused with its name and the global it asked for.

Version 1 checkpoints pickled those objects directly, which only an unrestricted ``torch.load`` reads
— one that runs whatever the file asks for. They are read only with ``trust=True`` (the command
line's ``--trust-checkpoint``)."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import random
import re
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import AppError

CHECKPOINT_DIR = "checkpoints"
FORMAT = "trpo_torchrl.checkpoint"
VERSION = 2
# version 1 pickled numpy arrays, numpy generators and TensorDicts: readable only by a torch.load
# that runs code from the file, so only when the user says the file is trusted
UNSAFE_VERSION = 1
_TAG = "__trpo_torchrl_type__"


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
    payload = {"format": FORMAT, "version": VERSION, **encode_state(state)}
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (or the run directory holding one).

    The file is unpickled with ``weights_only=True``; one that asks for any other global is refused
    (:class:`CheckpointError` naming the file and the global) and nothing in it runs. ``trust=True``
    also reads version-1 checkpoints, with an unrestricted ``torch.load`` that runs whatever code the
    file holds: only for files from a source you trust."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        asked = _refused_global(err)
        if asked is None:  # not a refusal: the pickle itself is broken
            raise _corrupt(path, err) from None
        if _header_version(path) != UNSAFE_VERSION:
            raise CheckpointError(
                f"checkpoint {str(path)!r} asks to load {asked}, which no trpo_torchrl checkpoint holds: refused, "
                "nothing in it ran; use a checkpoint written by trpo-torchrl train, not one from another "
                "program or one edited since"
            ) from None
        if not trust:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is a version-1 checkpoint, which can only be read by running code "
                f"from the file (it asks to load {asked}); re-save it with this trpo_torchrl, or pass "
                "--trust-checkpoint if the file comes from a source you trust"
            ) from None
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err2:
            raise _corrupt(path, err2) from None
    except Exception as err:  # truncated, not a torch file...
        raise _corrupt(path, err) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a trpo_torchrl checkpoint")
    if state.get("version") not in (UNSAFE_VERSION, VERSION):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has version {state.get('version')}, this trpo_torchrl reads "
            f"{VERSION} (and {UNSAFE_VERSION} with --trust-checkpoint)"
        )
    state = decode_state(state)
    missing = [key for key in ("config", "actor") if not isinstance(state.get(key), dict)]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}: it is incomplete or was edited")
    return state


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    # torch wraps what its restricted unpickler said in advice to load the file unrestricted: keep
    # only the unpickler's own words (e.g. "Unsupported operand 110" for a file that is no pickle)
    message = str(err).split("WeightsUnpickler error:")[-1]
    detail = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return CheckpointError(
        f"checkpoint {str(path)!r} is corrupt or not a checkpoint: {type(err).__name__}: {detail}".rstrip(": ")
    )


def _refused_global(err: pickle.UnpicklingError) -> str | None:
    """What a ``weights_only`` load refused, from torch's message (a global's dotted name, or the
    unpickler's words for a refused call), or None when the pickle is broken rather than refused."""
    message = str(err)
    if "Weights only load failed" not in message:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return found.group(1)
    found = re.search(r"(?:reduce for unrecognized function|new object for .*? but got) (.+)", message)
    return found.group(1).strip() if found else None


def _header_version(path: Path) -> int | None:
    """The ``version`` a checkpoint's pickle states at its start, read from the opcodes without
    unpickling (so without running anything), or None when it does not look like a checkpoint."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            data = archive.read(name)
        args = []
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name in ("GLOBAL", "STACK_GLOBAL", "REDUCE") or len(args) >= 8:
                break
            if arg is not None and opcode.name != "PROTO" and not opcode.name.endswith(("PUT", "GET")):
                args.append(arg)
    except Exception:
        return None
    if args[:3] == ["format", FORMAT, "version"] and len(args) > 3 and isinstance(args[3], int):
        return args[3]
    return None


# -- the state as tensors and plain containers ------------------------------------------------------

_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)


def encode_state(obj: Any, where: str = "state") -> Any:
    """``obj`` with every numpy array or scalar, numpy generator and TensorDict replaced by a tagged
    dict of tensors and numbers, so that a ``weights_only`` load reads it back; other objects that
    are not tensors or plain containers are refused (a ``TypeError``: a bug in what is saved)."""
    from tensordict import TensorDictBase

    if isinstance(obj, _PLAIN):
        return obj
    if type(obj) in (dict, OrderedDict):
        out = {k: encode_state(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return OrderedDict(out) if type(obj) is OrderedDict else out
    if type(obj) in (list, tuple):
        return type(obj)(encode_state(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        if arr.dtype.hasobject or arr.dtype.fields is not None:
            raise TypeError(f"{where}: a numpy array of dtype {arr.dtype} cannot be checkpointed")
        data = bytearray(np.ascontiguousarray(arr).tobytes())
        raw = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        kind = "ndarray" if isinstance(obj, np.ndarray) else "numpy_scalar"
        return {_TAG: kind, "dtype": arr.dtype.str, "shape": list(arr.shape), "bytes": raw}
    if isinstance(obj, np.random.Generator):
        bits = obj.bit_generator
        return {_TAG: "numpy_generator", "bit_generator": type(bits).__name__, "state": encode_state(bits.state)}
    if isinstance(obj, TensorDictBase):
        items = {}
        for key in obj.keys():
            value = obj.get(key)
            if not isinstance(value, (torch.Tensor, TensorDictBase)) or type(value).__name__ == "NonTensorData":
                raise TypeError(
                    f"{where}[{key!r}]: a TensorDict entry of type {type(value).__name__} cannot be checkpointed"
                )
            items[key] = encode_state(value, f"{where}[{key!r}]")
        device = None if obj.device is None else str(obj.device)
        return {_TAG: "TensorDict", "batch_size": list(obj.batch_size), "device": device, "items": items}
    raise TypeError(f"{where}: an object of type {type(obj).__qualname__} cannot be checkpointed")


def decode_state(obj: Any) -> Any:
    """Rebuilds what :func:`encode_state` tagged; everything else is returned as it is."""
    if type(obj) in (dict, OrderedDict):
        kind = obj.get(_TAG)
        if kind is None:
            out = {k: decode_state(v) for k, v in obj.items()}
            return OrderedDict(out) if type(obj) is OrderedDict else out
        if kind in ("ndarray", "numpy_scalar"):
            arr = np.frombuffer(obj["bytes"].numpy().tobytes(), dtype=np.dtype(obj["dtype"]))
            arr = arr.reshape(obj["shape"]).copy()
            return arr if kind == "ndarray" else arr[()]
        if kind == "numpy_generator":
            name = obj["bit_generator"]
            if name not in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
                raise CheckpointError(f"a checkpoint names an unknown numpy bit generator {name!r}")
            generator = np.random.Generator(getattr(np.random, name)())
            generator.bit_generator.state = decode_state(obj["state"])
            return generator
        if kind == "TensorDict":
            from tensordict import TensorDict

            items = {k: decode_state(v) for k, v in obj["items"].items()}
            return TensorDict(items, batch_size=obj["batch_size"], device=obj["device"])
        raise CheckpointError(f"a checkpoint holds an object of unknown kind {kind!r}")
    if type(obj) in (list, tuple):
        return type(obj)(decode_state(v) for v in obj)
    return obj


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
    """Restores what :func:`rng_state` saved. A generator the saved state lacks (a checkpoint written
    before the run had it) keeps its state."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["generators"]
    for k, g in generators.items():
        if k in saved:
            g.set_state(saved[k])
