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

from lightning_dnn._registry import available, lookup, register
from lightning_dnn._specs import network_config
from lightning_dnn.nn.convnet import ConvNet
from lightning_dnn.nn.mlp import MLP

__all__ = [
    "ArchitectureSpec",
    "architecture_of",
    "available_architectures",
    "find_architecture",
    "get_architecture",
    "lower_blocks",
    "refuse_wrapped_architecture",
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
        """Return ``net.config`` as a plain JSON-able dict (the same reading as ``DNNClassifier``'s checkpoints).

        Raises:
            TypeError: if ``config`` is not a mapping or not JSON-able.
        """
        return network_config(net)


_REGISTRY: dict[str, ArchitectureSpec] = {}
register(_REGISTRY, "architecture", ArchitectureSpec("ConvNet", ConvNet))
register(_REGISTRY, "architecture", ArchitectureSpec("MLP", MLP))


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
        ValueError: Architecture 'MLP' is already registered (ArchitectureSpec(...)); pick another name
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
    for spec in _REGISTRY.values():
        if spec.cls is cls and spec.name != name:  # the same name is refused by `register`, with the spec
            raise ValueError(f"{cls.__qualname__} is already registered as {spec.name!r}")
    return register(_REGISTRY, "architecture", ArchitectureSpec(name, cls))


def available_architectures() -> tuple[str, ...]:
    """Return the registered architecture names, sorted.

    Example:
        >>> available_architectures()
        ('ConvNet', 'MLP')
    """
    return available(_REGISTRY)


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
    return lookup(_REGISTRY, "architecture", name, arg="architecture")


def find_architecture(net: nn.Module) -> ArchitectureSpec | None:
    """Return the spec whose class is exactly ``type(net)``, or ``None`` for an unregistered network.

    Example:
        >>> find_architecture(MLP(4, 3, 2)).name, find_architecture(nn.Linear(2, 2))
        ('MLP', None)
    """
    return next((spec for spec in _REGISTRY.values() if type(net) is spec.cls), None)


def refuse_wrapped_architecture(net: nn.Module) -> None:
    """Raise TypeError when ``net`` wraps a registered architecture as ``.net`` (a ``DNNClassifier``).

    Saving the wrapper would lose the architecture's config round trip; the message says to pass ``.net``.
    """
    inner = getattr(net, "net", None)
    if isinstance(inner, nn.Module) and find_architecture(inner) is not None:
        raise TypeError(
            f"{type(net).__name__} is not a registered architecture, but it wraps a {type(inner).__name__} as "
            "`.net`: pass that instead (its config is recorded, so the folder rebuilds it)."
        )


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


def lower_blocks(net: nn.Module) -> tuple[str, ...]:
    """Name the network's lower blocks: its top-level children that hold parameters, except the head (the last).

    These are the layers worth reusing under a new head, e.g. ``load_pretrained(..., include=..., into=new_net)``;
    the names come from ``net.named_children()``, so they are the names the selection rule matches.

    Args:
        net: any network; its head is the last top-level child that holds parameters.

    Returns:
        the names, in the order of ``named_children()`` (empty when the network has fewer than two such children).

    Raises:
        TypeError: if ``net`` is not an ``nn.Module``.

    Example:
        >>> from lightning_dnn.nn import ConvNet
        >>> lower_blocks(MLP(4, (8, 8, 8), 2)), lower_blocks(ConvNet(1, (8, 16), 10))
        (('hidden1', 'hidden2', 'hidden3'), ('conv1', 'conv2'))
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"`net` must be an nn.Module, got {type(net).__name__}")
    with_parameters = [name for name, child in net.named_children() if any(True for _ in child.parameters())]
    return tuple(with_parameters[:-1])
