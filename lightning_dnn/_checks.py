"""Argument validation shared by every public constructor.

Each helper raises early with the argument's name, what was expected and what was received, as STYLE.md asks:
``"`max_norm` must be > 0, got -1.0"``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

__all__ = [
    "check_choice",
    "check_int",
    "check_number",
    "check_probability",
    "unknown_name_error",
]


def unknown_name_error(what: str, name: object, choices: Iterable[str]) -> ValueError:
    """Build the ValueError for an unknown registry name, with close matches and the full list."""
    options = sorted(choices)
    close = difflib.get_close_matches(str(name), options, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"Unknown {what} {name!r}.{hint} Valid names: {', '.join(options)}.")


def check_choice(arg: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise ValueError naming ``arg``."""
    options = list(choices)
    if not isinstance(value, str):
        raise TypeError(f"`{arg}` must be a string, one of {options}, got {type(value).__name__} {value!r}")
    if value not in options:
        close = difflib.get_close_matches(value, options, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"`{arg}` must be one of {options}, got {value!r}.{hint}")
    return value


def check_number(
    arg: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``float(value)`` after checking it is a finite real number inside the given bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{arg}` must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{arg}` must be finite, got {value!r}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"`{arg}` must be {op} {low}, got {value!r}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"`{arg}` must be {op} {high}, got {value!r}")
    return value


def check_int(arg: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` after checking it is an int (not a bool) inside ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{arg}` must be an integer, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"`{arg}` must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"`{arg}` must be <= {high}, got {value!r}")
    return value


def check_probability(arg: str, value: Any) -> float:
    """Return ``value`` as a float in ``[0, 1)`` (a dropout rate)."""
    return check_number(arg, value, low=0.0, high=1.0, high_inclusive=False)
