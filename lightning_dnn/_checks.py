"""Argument validation shared by every public constructor.

Each helper raises early with the argument's name, what was expected and what was received, as STYLE.md asks:
``"`max_norm` must be > 0, got -1.0"``.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_kwargs",
    "check_number",
    "check_probability",
    "close_matches_hint",
    "unknown_name_error",
]


def close_matches_hint(word: str, options: Iterable[str]) -> str:
    """Return ``" Did you mean 'a', 'b'?"`` for the options close to ``word``, ignoring case, or ``""``.

    Args:
        word: what the caller passed.
        options: the valid names.

    Returns:
        the hint with a leading space, or an empty string when nothing is close.

    Example:
        >>> close_matches_hint("mlp", ["ConvNet", "MLP"])
        " Did you mean 'MLP'?"
        >>> close_matches_hint("xyz", ["ConvNet", "MLP"])
        ''
    """
    by_folded: dict[str, list[str]] = {}
    for option in options:
        by_folded.setdefault(option.casefold(), []).append(option)
    matches = difflib.get_close_matches(word.strip().casefold(), list(by_folded), n=3)
    close = [option for match in matches for option in by_folded[match]][:3]
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_name_error(what: str, name: object, choices: Iterable[str]) -> ValueError:
    """Build the ValueError for an unknown registry name, with close matches and the full list.

    Args:
        what: what the registry holds, for the message (``"optimizer"``).
        name: the name that was looked up.
        choices: the registered names.

    Returns:
        the error, for the caller to raise.

    Example:
        >>> unknown_name_error("optimizer", "adamm", ["sgd", "adam", "adamw"])
        ValueError("Unknown optimizer 'adamm'. Did you mean 'adam', 'adamw'? Valid names: adam, adamw, sgd.")
    """
    options = sorted(choices)
    hint = close_matches_hint(str(name), options)
    return ValueError(f"Unknown {what} {name!r}.{hint} Valid names: {', '.join(options)}.")


def check_bool(arg: str, value: Any) -> bool:
    """Return ``value`` if it is a bool: ``True`` or ``False``, not ``1``, ``"yes"`` or ``None``.

    Args:
        arg: the argument's name, for the message.
        value: what the caller passed.

    Returns:
        ``value``.

    Raises:
        TypeError: if ``value`` is not a bool.

    Example:
        >>> check_bool("flatten", True)
        True
        >>> check_bool("flatten", 1)
        Traceback (most recent call last):
            ...
        TypeError: `flatten` must be a bool, got int 1
    """
    if not isinstance(value, bool):
        raise TypeError(f"`{arg}` must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_choice(arg: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise ValueError naming ``arg``."""
    options = list(choices)
    if not isinstance(value, str):
        raise TypeError(f"`{arg}` must be a string, one of {options}, got {type(value).__name__} {value!r}")
    if value not in options:
        raise ValueError(
            f"`{arg}` must be one of {options}, got {value!r}.{close_matches_hint(value, options)}"
        )
    return value


def check_kwargs(
    what: str, func: Callable[..., Any], kwargs: Mapping[str, Any], *, argument: str = "keyword"
) -> None:
    """Raise TypeError before ``func(**kwargs)`` would, naming each unknown keyword with its close match.

    A ``func`` that takes ``**kwargs`` accepts any keyword.

    Args:
        what: what ``func`` builds, for the message (``"optimizer 'adam' (Adam)"``).
        func: the function or class that will be called.
        kwargs: the keyword arguments it will get.
        argument: what the keywords are called in the message (``"keyword"``, ``"defaults"``).

    Raises:
        TypeError: if a key of ``kwargs`` is not a keyword ``func`` accepts; the message lists the accepted
            ones with their defaults.

    Example:
        >>> def elu(alpha: float = 1.0) -> None: ...
        >>> check_kwargs("activation 'elu'", elu, {"alpha": 0.5})
        >>> check_kwargs("activation 'elu'", elu, {"alpah": 0.5})
        Traceback (most recent call last):
            ...
        TypeError: activation 'elu' does not accept keyword 'alpah' (did you mean 'alpha'?); accepted: alpha=1.0
    """
    parameters = inspect.signature(func).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = {
        p.name: p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = sorted(set(kwargs) - set(accepted))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(accepted), n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    listing = ", ".join(
        name if p.default is inspect.Parameter.empty else f"{name}={p.default!r}"
        for name, p in accepted.items()
    )
    raise TypeError(f"{what} does not accept {argument} {', '.join(hints)}; accepted: {listing or 'none'}")


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
