"""The registry of architectures that ``config.json`` can name, so a saved folder rebuilds its network.

An architecture is a ``torch.nn.Module`` subclass with a JSON-able ``config`` (property) and a
``from_config(config)`` classmethod that rebuilds it, as :class:`~lightning_dnn.nn.MLP` has. The registry is small
and strict: names are unique, a class is registered once, and an unknown name raises ValueError with the close
matches. ``save_pretrained`` writes ``"architecture": <name>`` and ``load_pretrained`` builds through the same
``from_config`` users call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from lightning_dnn._checks import unknown_name_error
from lightning_dnn.nn.convnet import ConvNet
from lightning_dnn.nn.mlp import MLP

__all__ = [
    "ArchitectureSpec",
    "architecture_of",
    "available_architectures",
    "get_architecture",
    "register_architecture",
]


@dataclass(frozen=True)
class ArchitectureSpec:
    """A registered architecture: its name in ``config.json`` and its class.

    Attributes:
        name: the name written to ``config.json`` (``"architecture"``).
        cls: the ``nn.Module`` subclass, with a ``config`` property and a ``from_config`` classmethod.

    Example:
        >>> spec = get_architecture("MLP")
        >>> net = spec.build({"in_features": 4, "hidden": [3], "out_features": 2})
        >>> type(net).__name__, spec.config_of(net)["hidden"]
        ('MLP', [3])
    """

    name: str
    cls: type[nn.Module]

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        """Build a new network with ``cls.from_config(config)``.

        Raises:
            TypeError: if ``from_config`` does not return an instance of ``cls``.
        """
        net = self.cls.from_config(config)  # type: ignore[attr-defined]
        if not isinstance(net, self.cls):
            raise TypeError(
                f"{self.cls.__name__}.from_config returned {type(net).__name__}, expected a {self.cls.__name__}"
            )
        return net

    def config_of(self, net: nn.Module) -> dict[str, Any]:
        """Return ``net.config`` as a plain dict.

        Raises:
            TypeError: if ``config`` is not a mapping.
        """
        config = net.config
        if not isinstance(config, Mapping):
            raise TypeError(f"{type(net).__name__}.config must be a mapping, got {type(config).__name__}")
        return dict(config)


_REGISTRY: dict[str, ArchitectureSpec] = {
    "ConvNet": ArchitectureSpec("ConvNet", ConvNet),
    "MLP": ArchitectureSpec("MLP", MLP),
}


def register_architecture(name: str, cls: type[nn.Module]) -> ArchitectureSpec:
    """Register ``cls`` under ``name`` so ``save_pretrained``/``load_pretrained`` can write and rebuild it.

    Args:
        name: the name written to ``config.json``; not registered yet.
        cls: an ``nn.Module`` subclass with a ``config`` property (JSON-able constructor arguments) and a
            ``from_config(config)`` classmethod; not registered yet under another name.

    Returns:
        the new :class:`ArchitectureSpec`.

    Raises:
        TypeError: if ``name`` is not a non-empty string or ``cls`` lacks what is needed.
        ValueError: if ``name`` or ``cls`` is already registered.

    Example:
        Register once, at import time of the module that defines the class; names are never replaced:

        >>> register_architecture("MLP", MLP)
        Traceback (most recent call last):
            ...
        ValueError: Architecture 'MLP' is already registered (lightning_dnn.nn.mlp.MLP); pick another name
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"`name` must be a non-empty string, got {type(name).__name__} {name!r}")
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"`cls` must be an nn.Module subclass, got {cls!r}")
    missing = [attr for attr in ("config", "from_config") if not hasattr(cls, attr)]
    if missing or not callable(getattr(cls, "from_config", None)):
        raise TypeError(
            f"`cls` {cls.__qualname__} must define a `config` property and a `from_config(config)` classmethod; "
            f"it lacks {missing or ['a callable from_config']}"
        )
    if name in _REGISTRY:
        known = _REGISTRY[name].cls
        raise ValueError(
            f"Architecture {name!r} is already registered ({known.__module__}.{known.__qualname__}); "
            "pick another name"
        )
    for spec in _REGISTRY.values():
        if spec.cls is cls:
            raise ValueError(f"{cls.__qualname__} is already registered as {spec.name!r}")
    spec = ArchitectureSpec(name, cls)
    _REGISTRY[name] = spec
    return spec


def available_architectures() -> tuple[str, ...]:
    """Return the registered architecture names, sorted.

    Example:
        >>> available_architectures()
        ('ConvNet', 'MLP')
    """
    return tuple(sorted(_REGISTRY))


def get_architecture(name: str) -> ArchitectureSpec:
    """Look up a registered architecture by name.

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: for an unknown name (with close matches and the full list).

    Example:
        >>> get_architecture("MLP").cls.__name__
        'MLP'
        >>> get_architecture("MPL")
        Traceback (most recent call last):
            ...
        ValueError: Unknown architecture 'MPL'. Did you mean 'MLP'? Valid names: ConvNet, MLP.
    """
    if not isinstance(name, str):
        raise TypeError(f"`architecture` must be a string, got {type(name).__name__} {name!r}")
    if name not in _REGISTRY:
        same_letters = [n for n in _REGISTRY if n.lower() == name.lower()]
        if same_letters:  # difflib's close matches are case-sensitive
            raise ValueError(
                f"Unknown architecture {name!r}. Did you mean {same_letters[0]!r}? "
                f"Valid names: {', '.join(sorted(_REGISTRY))}."
            )
        raise unknown_name_error("architecture", name, _REGISTRY)
    return _REGISTRY[name]


def architecture_of(net: nn.Module) -> ArchitectureSpec:
    """Return the spec whose class is exactly ``type(net)``.

    Raises:
        TypeError: if ``net`` is not a registered architecture; when it wraps one as ``net.net`` (a
            LightningModule such as ``DNNClassifier``), the message says to pass ``net.net``.

    Example:
        >>> architecture_of(MLP(4, 3, 2)).name
        'MLP'
    """
    for spec in _REGISTRY.values():
        if type(net) is spec.cls:
            return spec
    hint = ""
    inner = getattr(net, "net", None)
    if isinstance(inner, nn.Module) and any(type(inner) is s.cls for s in _REGISTRY.values()):
        hint = f" It wraps a {type(inner).__name__} as `.net`: pass that instead."
    raise TypeError(
        f"{type(net).__name__} is not a registered architecture (registered: {', '.join(sorted(_REGISTRY))}).{hint} "
        "Register a class that has `config` and `from_config` with "
        "lightning_dnn.hub.register_architecture(name, cls)."
    )
