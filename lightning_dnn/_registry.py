"""The one shape of every name -> spec registry: strict registration, lookups with close matches.

A registry is a plain ``dict`` from name to a frozen dataclass spec with a ``name`` field, owned by the module
that fills it (``nn/init.py``, ``nn/activations.py``, ``optim/factory.py``, ``optim/schedules.py``,
``hub/architectures.py``). These functions are the only code that adds to one or looks a name up in one, so every
registry refuses duplicates and reports unknown names alike. Plain Python: no torch, no Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from lightning_dnn._checks import unknown_name_error

__all__ = ["NamedSpec", "available", "lookup", "register"]


class NamedSpec(Protocol):
    """What a registry holds: anything with a ``name`` (a frozen dataclass spec)."""

    @property
    def name(self) -> str:
        """The registry name."""
        ...


SpecT = TypeVar("SpecT", bound=NamedSpec)
T = TypeVar("T")


def register(registry: dict[str, SpecT], what: str, spec: SpecT) -> SpecT:
    """Add ``spec`` under ``spec.name``; a name is never replaced.

    Args:
        registry: the registry to add to.
        what: what it holds, for the messages (``"init scheme"``).
        spec: the spec; its name must not be registered yet.

    Returns:
        ``spec``.

    Raises:
        ValueError: if the name is not a non-empty string or is already registered (the message shows the
            registered spec).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Spec:
        ...     name: str
        >>> table: dict[str, Spec] = {}
        >>> register(table, "widget", Spec("a"))
        Spec(name='a')
        >>> register(table, "widget", Spec("a"))
        Traceback (most recent call last):
            ...
        ValueError: Widget 'a' is already registered (Spec(name='a')); pick another name
    """
    name = spec.name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A {what} name must be a non-empty string, got {name!r}")
    if name in registry:
        raise ValueError(
            f"{what[:1].upper()}{what[1:]} {name!r} is already registered ({registry[name]!r}); pick another name"
        )
    registry[name] = spec
    return spec


def lookup(
    registry: Mapping[str, T], what: str, name: object, *, arg: str = "name", fold_case: bool = False
) -> T:
    """Return the spec registered under ``name``, the very object that was registered.

    Args:
        registry: the registry to read.
        what: what it holds, for the messages (``"optimizer"``).
        name: the name to look up.
        arg: the caller's argument that holds ``name``, for the TypeError.
        fold_case: match ``name.strip().lower()`` (for registries whose names are lower-case).

    Returns:
        the spec.

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: if it is not registered; the message lists the close matches (ignoring case) and every
            registered name.

    Example:
        >>> table = {"adam": "the adam spec", "sgd": "the sgd spec"}
        >>> lookup(table, "optimizer", " Adam ", fold_case=True)
        'the adam spec'
        >>> lookup(table, "optimizer", "adamm")
        Traceback (most recent call last):
            ...
        ValueError: Unknown optimizer 'adamm'. Did you mean 'adam'? Valid names: adam, sgd.
    """
    if not isinstance(name, str):
        raise TypeError(f"`{arg}` must be a string ({what} name), got {type(name).__name__} {name!r}")
    key = name.strip().lower() if fold_case else name
    try:
        return registry[key]
    except KeyError:
        raise unknown_name_error(what, name, registry) from None


def available(registry: Mapping[str, object]) -> tuple[str, ...]:
    """Return the registered names, sorted.

    Example:
        >>> available({"sgd": 1, "adam": 2})
        ('adam', 'sgd')
    """
    return tuple(sorted(registry))
