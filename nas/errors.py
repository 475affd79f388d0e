"""The one user-input error type, and the validators every layer uses to raise it.

:class:`NasError` is bad user input: its message names the offending value (and the allowed ones);
the CLI prints it as one line ``nas: error: ...`` and exits 2, never a traceback. A failure that is
not the user's input (a diverging training run, a candidate out of memory) is a runtime error of
its own type, not a NasError.

The ``check_*`` functions are the only input validators in ``nas``, ``search_spaces`` and
``rewards``: each takes the value's name as the user knows it (a flag, a field), returns the value
when it is acceptable, and raises :class:`NasError` otherwise. ``bool`` is never taken for a number.
This module imports nothing heavy (it is loaded by ``nas --help``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = [
    "NasError",
    "check_choice",
    "check_int",
    "check_number",
    "check_positive",
    "check_probability",
    "fmt_range",
]


class NasError(ValueError):
    """Bad user input: the message names the offending value (and the allowed ones)."""


def fmt_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise NasError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise NasError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def check_number(
    name: str, value: Any, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    """A finite number in the range (bounds closed unless ``lo_open`` / ``hi_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NasError(f"{name} must be a finite number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        if math.isinf(hi) and not math.isinf(lo):
            what = f"> {lo:g}" if lo_open else f">= {lo:g}"
            raise NasError(f"{name} must be {'positive' if lo == 0 and lo_open else what}, got {value!r}")
        raise NasError(f"{name} must be in {fmt_range(lo, hi, lo_open, hi_open)}, got {value!r}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    return check_number(name, value, 0, math.inf, lo_open=True)


def check_probability(name: str, value: Any, *, hi_inclusive: bool = False) -> float:
    """A probability-like rate in ``[0, 1)`` (``[0, 1]`` with ``hi_inclusive``)."""
    return check_number(name, value, 0.0, 1.0, hi_open=not hi_inclusive)


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """One of ``allowed``, of the same type as the allowed values (3.0 is not the kernel 3: it would
    be written ``k3.0``, which does not parse back)."""
    allowed = tuple(allowed)
    try:
        ok = not isinstance(value, bool) and value in allowed and type(value) in {type(a) for a in allowed}
    except TypeError:  # unhashable or incomparable input
        ok = False
    if not ok:
        raise NasError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


class NasRuntimeError(RuntimeError):
    """A run that failed for a reason other than its input (training diverged, a candidate ran out of
    memory): the CLI prints it as one line and exits 1."""
