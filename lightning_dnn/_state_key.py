"""One helper for our callbacks' ``state_key``: formatted once per instance, the way Lightning formats it."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from typing_extensions import override

from lightning_dnn._lightning import Callback

__all__ = ["StateKeyOnce"]


class StateKeyOnce(Callback):
    """A callback mixin whose ``state_key`` is computed once instead of at every hook call.

    Lightning formats every callback's ``state_key`` at every hook call, several times per training step (about
    5 µs each on a 2-core CPU). A subclass names the arguments that tell two instances apart in
    :meth:`state_key_fields`; returning ``None`` keeps the key of the next class in the MRO (e.g. Lightning's own
    ``EarlyStopping``), still computed once. :attr:`state_key_name` replaces the class name at the front of the
    key, so that a subclass of a Lightning callback keeps its parent's checkpoint key.

    Example:
        >>> class Scale(StateKeyOnce):
        ...     def __init__(self, factor):
        ...         self.factor = factor
        ...     def state_key_fields(self):
        ...         return {"factor": self.factor}
        >>> Scale(2.0).state_key
        "Scale{'factor': 2.0}"
    """

    #: The class name written at the front of the key; ``None``: this class's own ``__qualname__``.
    state_key_name: ClassVar[str | None] = None

    def state_key_fields(self) -> dict[str, Any] | None:
        """The arguments that distinguish two instances (JSON-like values), or ``None`` for the parent's key."""
        return {}

    @functools.cached_property
    @override
    def state_key(self) -> str:  # type: ignore[override]
        """``ClassName{fields}``, as Lightning's ``Callback._generate_state_key`` writes it; computed once."""
        fields = self.state_key_fields()
        key = self._generate_state_key(**fields) if fields is not None else self._parent_state_key()
        if self.state_key_name is not None:
            key = self.state_key_name + key[len(type(self).__qualname__) :]
        return key

    def _parent_state_key(self) -> str:
        for cls in type(self).__mro__:
            if issubclass(cls, StateKeyOnce) or "state_key" not in vars(cls):
                continue
            return str(vars(cls)["state_key"].fget(self))
        return str(Callback.state_key.fget(self))  # type: ignore[attr-defined]
