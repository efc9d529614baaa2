"""Activation functions by name (:func:`get_activation`).

=============  ==========================================================================  =====================
name           f(x) for x < 0 (x for x >= 0 unless noted)                                  keyword arguments
=============  ==========================================================================  =====================
relu           0                                                                           --
leaky_relu     negative_slope * x                                                          negative_slope=0.01
rrelu          a * x, a ~ U(lower, upper) per element in training, (lower + upper) / 2     lower=1/8, upper=1/3
               in eval
prelu          a * x, a learned (one per channel with num_parameters > 1)                  num_parameters=1,
                                                                                           init=0.25
elu            alpha * (exp(x) - 1)                                                        alpha=1.0
selu           scale * alpha * (exp(x) - 1), and scale * x for x >= 0                      --
               (alpha = 1.6732632423543772, scale = 1.0507009873554805)
tanh           tanh(x) everywhere                                                          --
sigmoid        1 / (1 + exp(-x)) everywhere; alias ``logistic``                            --
=============  ==========================================================================  =====================

Names are matched case-insensitively. TF1 notes: ``tf.nn.leaky_relu`` calls the slope ``alpha`` (default 0.2,
Géron's chapter uses 0.01); Keras' ``ELU``/``SELU`` use the same constants as torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from lightning_dnn._checks import check_int, check_kwargs, check_number
from lightning_dnn._registry import available, lookup, register

__all__ = ["ActivationLike", "available_activations", "get_activation"]

ActivationLike = str | Mapping[str, Any] | nn.Module | type[nn.Module]
"""What :func:`get_activation` accepts: a name, ``{"name": ..., **kwargs}``, a module instance or a module class."""


@dataclass(frozen=True)
class _ActivationSpec:
    """``build(**kwargs)`` makes the module; its signature is the list of keywords (and defaults) accepted."""

    name: str
    build: Callable[..., nn.Module]


def _without_options(cls: type[nn.Module]) -> Callable[[], nn.Module]:
    """A builder that takes no keyword (``nn.ReLU``'s ``inplace`` is not offered)."""

    def build() -> nn.Module:
        return cls()

    return build


def _leaky_relu(negative_slope: float = 0.01) -> nn.Module:
    return nn.LeakyReLU(check_number("negative_slope", negative_slope, low=0.0))


def _rrelu(lower: float = 1.0 / 8.0, upper: float = 1.0 / 3.0) -> nn.Module:
    lower = check_number("lower", lower, low=0.0)
    upper = check_number("upper", upper, low=0.0)
    if lower > upper:
        raise ValueError(f"`lower` must be <= `upper`, got lower={lower!r} > upper={upper!r}")
    return nn.RReLU(lower, upper)


def _prelu(num_parameters: int = 1, init: float = 0.25) -> nn.Module:
    return nn.PReLU(check_int("num_parameters", num_parameters, low=1), check_number("init", init))


def _elu(alpha: float = 1.0) -> nn.Module:
    return nn.ELU(check_number("alpha", alpha, low=0.0, low_inclusive=False))


_REGISTRY: dict[str, _ActivationSpec] = {}
for _spec in (
    _ActivationSpec("relu", _without_options(nn.ReLU)),
    _ActivationSpec("leaky_relu", _leaky_relu),
    _ActivationSpec("rrelu", _rrelu),
    _ActivationSpec("prelu", _prelu),
    _ActivationSpec("elu", _elu),
    _ActivationSpec("selu", _without_options(nn.SELU)),
    _ActivationSpec("tanh", _without_options(nn.Tanh)),
    _ActivationSpec("sigmoid", _without_options(nn.Sigmoid)),
    _ActivationSpec("logistic", _without_options(nn.Sigmoid)),
):
    register(_REGISTRY, "activation", _spec)
del _spec


def available_activations() -> tuple[str, ...]:
    """Return the activation names :func:`get_activation` accepts, sorted.

    Example:
        >>> available_activations()
        ('elu', 'leaky_relu', 'logistic', 'prelu', 'relu', 'rrelu', 'selu', 'sigmoid', 'tanh')
    """
    return available(_REGISTRY)


def get_activation(name_or_module: ActivationLike, **kwargs: Any) -> nn.Module:
    """Build a fresh activation module.

    Args:
        name_or_module: a name from :func:`available_activations` (case-insensitive); a mapping
            ``{"name": ..., **kwargs}`` (the JSON form, e.g. ``{"name": "leaky_relu", "negative_slope": 0.2}``);
            an ``nn.Module`` instance, returned as a deep copy so two layers never share, e.g., one PReLU
            slope; or an ``nn.Module`` subclass, instantiated with ``kwargs``.
        **kwargs: the activation's keyword arguments (see the module docstring); only with a name or a class.

    Returns:
        a new module.

    Raises:
        TypeError: if ``name_or_module`` has an unsupported type, or keyword arguments are not accepted.
        ValueError: if the name is unknown (the message lists the valid ones), or an argument is out of range
            (``negative_slope < 0``, ``alpha <= 0``, ``lower > upper``, ...).

    Example:
        >>> get_activation("leaky_relu", negative_slope=0.2)
        LeakyReLU(negative_slope=0.2)
        >>> get_activation({"name": "elu", "alpha": 0.5})
        ELU(alpha=0.5)
        >>> prelu = nn.PReLU()
        >>> get_activation(prelu) is prelu
        False
    """
    if isinstance(name_or_module, nn.Module):
        if kwargs:
            raise TypeError(
                f"keyword arguments {sorted(kwargs)} cannot be applied to an activation module instance "
                f"({type(name_or_module).__name__}); configure the instance itself"
            )
        return copy.deepcopy(name_or_module)
    if isinstance(name_or_module, type) and issubclass(name_or_module, nn.Module):
        return name_or_module(**kwargs)
    if isinstance(name_or_module, Mapping):
        if kwargs:
            raise TypeError(
                f"pass keyword arguments either inside the `name_or_module` mapping or as keywords, not both; "
                f"got mapping {dict(name_or_module)!r} and keywords {kwargs!r}"
            )
        options = dict(name_or_module)
        if "name" not in options:
            raise ValueError(
                f"`name_or_module` mapping must have a 'name' key, e.g. {{'name': 'elu', 'alpha': 1.0}}, "
                f"got {options!r}"
            )
        name = options.pop("name")
        if not isinstance(name, str):
            raise TypeError(f"`name_or_module['name']` must be a string, got {type(name).__name__} {name!r}")
        return get_activation(name, **options)
    if not isinstance(name_or_module, str):
        raise TypeError(
            "`name_or_module` must be an activation name, a {'name': ..., **kwargs} mapping, an nn.Module "
            f"instance or an nn.Module subclass, got {type(name_or_module).__name__} {name_or_module!r}"
        )
    spec = lookup(_REGISTRY, "activation", name_or_module, arg="name_or_module", fold_case=True)
    check_kwargs(f"activation {spec.name!r}", spec.build, kwargs)
    return spec.build(**kwargs)
