"""Optimizers by name (:func:`build_optimizer`) and the strict registry behind it.

Names, the defaults set here, and how TF1's optimizers and their defaults map onto torch's arguments:

``sgd``
    ``torch.optim.SGD``. TF1 ``GradientDescentOptimizer``: identical.
``momentum``
    ``SGD(momentum=0.9)``. TF1 ``MomentumOptimizer(lr, 0.9)``: TF's accumulator folds in the learning rate;
    the iterates are identical for a constant learning rate.
``nesterov``
    ``SGD(momentum=0.9, nesterov=True)``. TF1 ``MomentumOptimizer(lr, 0.9, use_nesterov=True)``: as above.
``adagrad``
    ``torch.optim.Adagrad`` with torch's defaults. TF1 ``AdagradOptimizer`` starts the accumulator at 0.1
    (torch: 0) and has no eps (``var -= lr * g / sqrt(accum)``; torch: eps=1e-10 outside the root). Pass
    ``initial_accumulator_value=0.1, eps=0.0`` for TF's update.
``rmsprop``
    ``torch.optim.RMSprop`` with torch's defaults. TF1 ``RMSPropOptimizer`` documents decay=0.9 (torch's
    ``alpha``; default 0.99), momentum=0.0 (Géron's chapter uses 0.9) and epsilon=1e-10 (torch: 1e-8). They
    are documented, not forced: pass ``alpha=0.9, eps=1e-10`` (and ``momentum=0.9``). Even then the two
    differ slightly: TF adds eps inside the square root and starts the mean square at 1, torch adds eps
    outside and starts at 0.
``adam``
    ``torch.optim.Adam``. TF1 ``AdamOptimizer``: same betas and eps, but TF adds eps to the root of the
    bias-uncorrected second moment ("epsilon hat").
``adamw``
    ``torch.optim.AdamW`` (torch's default ``weight_decay=0.01``).
``ftrl``
    :class:`~lightning_dnn.optim.FTRL`: TF's ``FtrlOptimizer`` / Keras ``Ftrl`` semantics and defaults.

Everything not listed keeps torch's defaults; keyword arguments to :func:`build_optimizer` override both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_dnn._checks import check_kwargs, check_number
from lightning_dnn._registry import lookup, register
from lightning_dnn.optim.ftrl import FTRL

__all__ = ["OPTIMIZERS", "OptimizerSpec", "build_optimizer", "register_optimizer"]


@dataclass(frozen=True)
class OptimizerSpec:
    """How :func:`build_optimizer` builds one named optimizer.

    Args:
        name: the registry name.
        cls: the ``torch.optim.Optimizer`` subclass, called as ``cls(params, lr=lr, **kwargs)``.
        defaults: keyword arguments applied before the caller's (stored read-only).
        summary: one line for listings.

    Example:
        >>> OPTIMIZERS["nesterov"].defaults["nesterov"]
        True
    """

    name: str
    cls: type[Optimizer]
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)
    summary: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))


_REGISTRY: dict[str, OptimizerSpec] = {}

OPTIMIZERS: Mapping[str, OptimizerSpec] = MappingProxyType(_REGISTRY)
"""Read-only, live view of the registry: iterate it for the names, index it for an :class:`OptimizerSpec`."""


def register_optimizer(
    name: str,
    cls: type[Optimizer],
    defaults: Mapping[str, Any] | None = None,
    *,
    summary: str = "",
) -> OptimizerSpec:
    """Add an optimizer to the registry so :func:`build_optimizer` (and ``DNNClassifier``) accept its name.

    Args:
        name: a new, lower-case name.
        cls: a ``torch.optim.Optimizer`` subclass taking ``(params, lr=..., **kwargs)``.
        defaults: keyword arguments it gets unless the caller overrides them; they must be accepted by ``cls``.
        summary: one line for listings.

    Returns:
        the registered spec.

    Raises:
        ValueError: if ``name`` is empty, not lower-case, or already registered (duplicates are refused,
            never replaced).
        TypeError: if ``name`` is not a string, ``cls`` is not an Optimizer subclass, or a default is not an
            argument of ``cls``.

    Example:
        >>> spec = register_optimizer("sgd_doctest", torch.optim.SGD, {"momentum": 0.5})
        >>> build_optimizer("sgd_doctest", [torch.nn.Parameter(torch.zeros(1))], lr=0.1).defaults["momentum"]
        0.5
        >>> register_optimizer("sgd_doctest", torch.optim.SGD)
        Traceback (most recent call last):
        ...
        ValueError: Optimizer 'sgd_doctest' is already registered (OptimizerSpec(...)); pick another name
        >>> _ = _REGISTRY.pop("sgd_doctest")  # keep the doctest self-contained
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string, got {type(name).__name__} {name!r}")
    if not name or name != name.lower() or name != name.strip():
        raise ValueError(
            f"`name` must be a non-empty lower-case string without surrounding spaces, got {name!r}"
        )
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise TypeError(f"`cls` must be a torch.optim.Optimizer subclass, got {cls!r}")
    spec = OptimizerSpec(name, cls, dict(defaults or {}), summary)
    check_kwargs(f"optimizer {name!r} ({cls.__name__})", cls, spec.defaults, argument="defaults")
    return register(_REGISTRY, "optimizer", spec)


def build_optimizer(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    lr: float,
    **kwargs: Any,
) -> Optimizer:
    """Build a ``torch.optim`` optimizer by name.

    Names: ``sgd``, ``momentum`` (SGD, momentum 0.9), ``nesterov`` (SGD, momentum 0.9, Nesterov), ``adagrad``,
    ``rmsprop``, ``adam``, ``adamw``, ``ftrl``, plus anything added with :func:`register_optimizer`. The module
    docstring lists the defaults and how TF1's defaults map onto torch's arguments.

    Args:
        name: a registry name (case-insensitive); see :data:`OPTIMIZERS`.
        params: parameters or param groups, as for any ``torch.optim`` optimizer.
        lr: learning rate, > 0.
        **kwargs: keyword arguments of the optimizer class; they override the registry defaults
            (``build_optimizer("momentum", params, 0.1, momentum=0.5)``).

    Returns:
        the optimizer.

    Raises:
        ValueError: if ``name`` is unknown (the message suggests close matches) or ``lr <= 0``.
        TypeError: if ``name`` is not a string, ``lr`` is not a number, or a keyword argument is not one the
            optimizer accepts.

    Example:
        >>> params = [torch.nn.Parameter(torch.zeros(3))]
        >>> opt = build_optimizer("nesterov", params, lr=0.01)
        >>> type(opt).__name__, opt.defaults["momentum"], opt.defaults["nesterov"]
        ('SGD', 0.9, True)
        >>> build_optimizer("rmsprop", params, 0.01, alpha=0.9, eps=1e-10).defaults["alpha"]  # TF1's decay
        0.9
        >>> build_optimizer("adamm", params, 0.01)
        Traceback (most recent call last):
        ...
        ValueError: Unknown optimizer 'adamm'. Did you mean 'adam', 'adamw'? Valid names: ...
    """
    spec = lookup(_REGISTRY, "optimizer", name, fold_case=True)
    lr = check_number("lr", lr, low=0.0, low_inclusive=False)
    check_kwargs(f"optimizer {spec.name!r} ({spec.cls.__name__})", spec.cls, kwargs)
    factory = cast(Callable[..., Optimizer], spec.cls)
    return factory(params, lr=lr, **{**spec.defaults, **kwargs})


register_optimizer("sgd", torch.optim.SGD, summary="plain gradient descent")
register_optimizer("momentum", torch.optim.SGD, {"momentum": 0.9}, summary="SGD with momentum 0.9")
register_optimizer(
    "nesterov",
    torch.optim.SGD,
    {"momentum": 0.9, "nesterov": True},
    summary="SGD with Nesterov momentum 0.9",
)
register_optimizer("adagrad", torch.optim.Adagrad, summary="AdaGrad (torch defaults)")
register_optimizer("rmsprop", torch.optim.RMSprop, summary="RMSProp (torch defaults; TF1's documented)")
register_optimizer("adam", torch.optim.Adam, summary="Adam")
register_optimizer("adamw", torch.optim.AdamW, summary="Adam with decoupled weight decay")
register_optimizer("ftrl", FTRL, summary="FTRL-Proximal, TensorFlow semantics")
