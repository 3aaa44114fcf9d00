"""Loads the compiled ops (``trpo_torchrl._C``), picks the compiled op or the reference for a
call, and registers the ops' fake kernels.

The library is optional: without it every op runs its pure-PyTorch reference, and the first
such call warns once with the command that builds it. Every op face asks :func:`compiled_op`
and registers its fake kernel with :func:`register_fake`, so those rules live here only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

try:
    from trpo_torchrl import _C  # noqa: F401  (loading it registers the ops)

    _LOAD_ERROR: Exception | None = None
except ImportError as err:  # no compiler at install time, or built against another torch
    _LOAD_ERROR = err

_warned = False

BUILD_HINT = (
    "build them with `pip install --no-build-isolation .` (or "
    "`python setup.py build_ext --inplace` in a checkout) in an environment that has torch"
)


def library_loaded() -> bool:
    """True when ``trpo_torchrl._C`` was imported (whatever TRPO_TORCHRL_FORCE_REFERENCE says)."""
    return _LOAD_ERROR is None


def force_reference() -> bool:
    """True when TRPO_TORCHRL_FORCE_REFERENCE=1 asks for the pure-PyTorch path."""
    return os.environ.get("TRPO_TORCHRL_FORCE_REFERENCE", "0").strip().lower() in ("1", "true", "yes")


def extension_loaded() -> bool:
    """True when calls go to the compiled ops: the library loaded and the reference is not forced."""
    return library_loaded() and not force_reference()


_kernel_cache: dict[tuple[str, str], bool] = {}


def has_kernel(op: str, device: torch.device) -> bool:
    """True when ``trpo_torchrl::<op>`` has a compiled kernel for ``device``'s type.

    The dispatcher is asked once per (op, device type) and the answer cached, so that the check
    costs nothing per call and stays out of the way of torch.compile tracing.
    """
    if not extension_loaded():
        return False
    key = (op, device.type)
    found = _kernel_cache.get(key)
    if found is None:
        dispatch_key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
        # a device kernel of its own, or one ATen-composed kernel that serves every device
        found = dispatch_key is not None and any(
            torch._C._dispatch_has_kernel_for_dispatch_key(f"trpo_torchrl::{op}", key)
            for key in (dispatch_key, "CompositeExplicitAutograd")
        )
        _kernel_cache[key] = found
    return found


def warn_reference_once(op: str) -> None:
    """Warns, once per process, that an op runs on its reference because the library is missing."""
    global _warned
    if _warned or force_reference():
        return
    _warned = True
    warnings.warn(
        f"trpo_torchrl: compiled ops are not available ({_LOAD_ERROR}); {op} and the other ops run "
        f"on their pure-PyTorch reference. To get the fast kernels, {BUILD_HINT}.",
        RuntimeWarning,
        stacklevel=3,
    )


def compiled_op(op: str, device: torch.device, caller: str) -> Callable | None:
    """``torch.ops.trpo_torchrl.<op>`` when it has a kernel for ``device``, else None.

    None means: run the pure-PyTorch reference. When that is because the library did not load
    (not because of the device, or TRPO_TORCHRL_FORCE_REFERENCE), the first such call in the
    process warns, naming ``caller``, the public function the user called.
    """
    if has_kernel(op, device):
        return getattr(torch.ops.trpo_torchrl, op)
    if not library_loaded():
        warn_reference_once(caller)
    return None


def register_fake(op: str) -> Callable[[Callable], Callable]:
    """Decorator: registers the function as the fake (meta) kernel of ``trpo_torchrl::<op>``.

    Fake kernels let torch.compile and ``opcheck`` trace the op without running it. The
    registration happens only when the library loaded and defines the op (registering for an
    op that does not exist fails, and import must work without the library), and whatever
    TRPO_TORCHRL_FORCE_REFERENCE says, since that may change after import.
    """

    def register(fn: Callable) -> Callable:
        if library_loaded() and hasattr(torch.ops.trpo_torchrl, op):
            torch.library.register_fake(f"trpo_torchrl::{op}")(fn)
        return fn

    return register
