"""One rule for checking constructor arguments, so every class accepts and refuses the same values.

A count is an ``int`` (``numbers.Integral``), a number is a finite real (``numbers.Real``); ``bool``
is neither, although Python makes it an ``int``: ``epochs=True`` or ``max_kl=True`` is a mistake,
not 1. Every message names the class, the argument and the value, e.g.
``"CriticFit: epochs must be an int >= 1, got True"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import torch

__all__ = ["check_choice", "check_count", "check_generator", "check_number", "is_count", "is_finite_number"]


def is_count(value: Any) -> bool:
    """An integer, bools excluded."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A real, finite number, bools excluded."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_count(where: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` when it is an integer ``>= minimum``; else a ValueError."""
    if not (is_count(value) and value >= minimum):
        raise ValueError(f"{where}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    """The range in words: ``> 0``, ``>= 0``, ``in (0, 1]``, ``<= 1``."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def check_number(
    where: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> float | None:
    """``value`` as a ``float`` when it is a finite real number within the bounds (open or closed
    at each end; ``None`` for no bound); ``None`` when ``optional`` and it is ``None``; else a
    ValueError."""
    if optional and value is None:
        return None
    ok = is_finite_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = _bounds(low, high, low_open, high_open)
        two_sided = low is not None and high is not None
        wanted = f"a number {bounds}" if two_sided else f"a finite number {bounds}".rstrip()
        if optional:
            wanted = f"None or {wanted}"
        elif two_sided:
            wanted = bounds  # "in (0, 1]" already says it is a number
        raise ValueError(f"{where}: {name} must be {wanted}, got {value!r}")
    return float(value)


def check_choice(where: str, name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` when it is one of ``choices`` (compared with ``==`` and by type, so ``True`` is
    not ``1``); else a ValueError listing them."""
    if not any(type(value) is type(c) and value == c for c in choices):
        listed = [repr(c) for c in choices]
        options = listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} or {listed[-1]}"
        raise ValueError(f"{where}: {name} must be {options}, got {value!r}")
    return value


def check_generator(where: str, name: str, value: Any) -> torch.Generator | None:
    """``value`` when it is a ``torch.Generator`` or ``None``; else a TypeError."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{where}: {name} must be a torch.Generator or None, got {type(value).__name__}")
    return value
