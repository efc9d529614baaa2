"""Variance-scaling weight initialization with Keras/TensorFlow semantics, and the named schemes.

Every scheme draws weights with ``Var(w) = scale / fan`` where ``fan`` is the number of inputs
(``"fan_in"``), outputs (``"fan_out"``) or their mean (``"fan_avg"``) of one output unit. Fans are counted the
way Keras counts them: a ``Linear`` weight ``[out, in]`` has ``fan_in = in`` and ``fan_out = out``; a ``ConvNd``
weight ``[out, in / groups, *kernel]`` multiplies both by the receptive field size ``prod(kernel)``.

Three distributions reach that variance:

* ``"truncated_normal"``: a normal with ``std = sqrt(scale / fan) / 0.87962566103423978`` cut at two standard
  deviations. Cutting at ``±2 std`` shrinks the standard deviation by the factor 0.8796..., so dividing by it
  first makes the variance exact (Keras' ``VarianceScaling`` in TF 2).
* ``"normal"``: an untruncated normal with ``std = sqrt(scale / fan)``.
* ``"uniform"``: ``U(-limit, limit)`` with ``limit = sqrt(3 * scale / fan)``.

The named schemes (:func:`get_init`) are the usual (scale, mode, distribution) triples:

=================  =====  =========  ==================
name               scale  mode       distribution
=================  =====  =========  ==================
glorot_uniform     1      fan_avg    uniform
glorot_normal      1      fan_avg    truncated_normal
he_normal          2      fan_in     truncated_normal
he_uniform         2      fan_in     uniform
he_avg_normal      2      fan_avg    truncated_normal
lecun_normal       1      fan_in     truncated_normal
lecun_uniform      1      fan_in     uniform
torch_default      1/3    fan_in     uniform
=================  =====  =========  ==================

Notes on TensorFlow 1, whose two "variance scaling" initializers differ from Keras' in the truncated case:

* ``tf.contrib.layers.variance_scaling_initializer(factor=2.0, mode="FAN_IN", uniform=False)`` (the defaults
  are He initialization, as in the first edition of Géron's chapter 11): ``factor`` is our ``scale``, ``mode="FAN_AVG"`` is
  ``"fan_avg"``. Its docstring promises ``truncated_normal(stddev=sqrt(factor / n))``, i.e. no 0.8796
  correction (actual variance ``0.774 * factor / n``); the released code drew with
  ``stddev = sqrt(1.3 * factor / n)``, an approximate correction (``1.3`` vs. ``1 / 0.8796**2 = 1.2924``).
  ``factor=2.0, mode="FAN_AVG"`` is our ``"he_avg_normal"``.
* ``tf.variance_scaling_initializer()`` (core TF1, ``init_ops.VarianceScaling``) defaults to ``scale=1.0``,
  ``mode="fan_in"``, truncated normal; older TF1 releases used ``stddev = sqrt(scale / n)`` with **no**
  correction, later ones divide by 0.8796 as Keras does. (Géron's TF1 notebook calls this one ``he_init``
  although its default scale is 1.)

Our ``"he_normal"`` (and every truncated scheme) follows Keras' corrected version: the variance is exactly
``scale / fan``. To reproduce an uncorrected TF1 draw, pass ``scale * 0.87962566103423978**2`` (the bounds then
match too: ``±2 * sqrt(scale / fan)``).

``"torch_default"`` is PyTorch's own ``reset_parameters`` distribution (``kaiming_uniform_(a=sqrt(5))``, i.e.
``U(±1/sqrt(fan_in))``, with biases ``U(±1/sqrt(fan_in))`` too): :func:`init_weights_` leaves such modules as
constructed, or redraws the same distributions from ``generator`` when one is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.parameter import UninitializedParameter

from lightning_dnn._checks import check_bool, check_choice, check_number
from lightning_dnn._registry import available, lookup, register

__all__ = [
    "TRUNCATED_NORMAL_STD_FACTOR",
    "Distribution",
    "FanMode",
    "InitScheme",
    "InitSpec",
    "available_inits",
    "compute_fans",
    "get_init",
    "init_weights_",
    "register_init",
    "variance_scaling_",
]

FanMode = Literal["fan_in", "fan_out", "fan_avg"]
Distribution = Literal["truncated_normal", "normal", "uniform"]
InitScheme = str | Callable[[Tensor], Any]
"""A scheme name from :func:`available_inits`, or a callable that initializes a weight tensor in place."""

#: Standard deviation of a standard normal truncated to ``[-2, 2]``.
TRUNCATED_NORMAL_STD_FACTOR = 0.87962566103423978

_FAN_MODES: tuple[str, ...] = get_args(FanMode)
_DISTRIBUTIONS: tuple[str, ...] = get_args(Distribution)


def compute_fans(tensor: Tensor) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` of a weight tensor, counted as Keras counts them.

    A ``Linear`` weight ``[out, in]`` gives ``(in, out)``; a ``ConvNd`` weight ``[out, in / groups, *kernel]``
    gives ``(in / groups * prod(kernel), out * prod(kernel))``.

    Args:
        tensor: a weight with at least two dimensions.

    Returns:
        ``(fan_in, fan_out)``.

    Raises:
        TypeError: if ``tensor`` is not a tensor.
        ValueError: if it has fewer than two dimensions.

    Example:
        >>> compute_fans(torch.empty(100, 784))
        (784, 100)
        >>> compute_fans(torch.empty(32, 3, 5, 5))
        (75, 800)
    """
    _check_weight(tensor)
    receptive = math.prod(tensor.shape[2:])
    return int(tensor.shape[1]) * receptive, int(tensor.shape[0]) * receptive


def variance_scaling_(
    tensor: Tensor,
    scale: float = 1.0,
    mode: FanMode = "fan_in",
    distribution: Distribution = "truncated_normal",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill ``tensor`` in place with values of variance ``scale / fan`` (Keras' ``VarianceScaling``).

    Args:
        tensor: the weight to fill, at least two dimensions (``Linear`` ``[out, in]`` or ``ConvNd``
            ``[out, in / groups, *kernel]``).
        scale: the variance numerator, > 0 (1 for Glorot/LeCun, 2 for He).
        mode: which fan divides ``scale``: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"`` (``(in + out) / 2``).
        distribution: ``"truncated_normal"`` (cut at 2 std, std corrected by 0.8796 so the variance is exact),
            ``"normal"`` or ``"uniform"``.
        generator: random generator to draw from (reproducible initialization); the global one when None.

    Returns:
        ``tensor``, filled.

    Raises:
        TypeError: if ``tensor`` is not a tensor, or an argument has the wrong type.
        ValueError: if ``tensor`` has fewer than two dimensions, ``scale <= 0``, or ``mode``/``distribution``
            is unknown.

    Example:
        >>> w = torch.empty(500, 400)
        >>> _ = variance_scaling_(w, scale=2.0, mode="fan_in", generator=torch.Generator().manual_seed(0))
        >>> round(w.var().item() * 400, 1)  # Var(w) * fan_in ~ scale
        2.0
        >>> bool(w.abs().max() <= 2 * (2.0 / 400) ** 0.5 / TRUNCATED_NORMAL_STD_FACTOR)
        True
    """
    _check_weight(tensor)
    scale = check_number("scale", scale, low=0.0, low_inclusive=False)
    check_choice("mode", mode, _FAN_MODES)
    check_choice("distribution", distribution, _DISTRIBUTIONS)
    _check_generator(generator)
    if tensor.numel() == 0:  # nothing to fill (torch's initializers make this a no-op too)
        return tensor
    fan_in, fan_out = compute_fans(tensor)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[mode]
    variance = scale / fan
    with torch.no_grad():
        if distribution == "truncated_normal":
            std = math.sqrt(variance) / TRUNCATED_NORMAL_STD_FACTOR
            return nn.init.trunc_normal_(tensor, 0.0, std, -2.0 * std, 2.0 * std, generator=generator)
        if distribution == "normal":
            return nn.init.normal_(tensor, 0.0, math.sqrt(variance), generator=generator)
        limit = math.sqrt(3.0 * variance)
        return nn.init.uniform_(tensor, -limit, limit, generator=generator)


@dataclass(frozen=True)
class InitSpec:
    """A named variance-scaling scheme: ``Var(w) = scale / fan`` drawn from ``distribution``.

    Calling the spec fills a weight in place, like :func:`variance_scaling_`.

    Args:
        name: registry name.
        scale: variance numerator, > 0.
        mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
        distribution: ``"truncated_normal"``, ``"normal"`` or ``"uniform"``.
        zero_bias: whether :func:`init_weights_` zeros the biases of the layers it initializes.
        description: one line for documentation.

    Raises:
        ValueError: if a field is invalid.

    Example:
        >>> spec = InitSpec("half_he", scale=1.0, mode="fan_in", distribution="normal")
        >>> w = spec(torch.empty(3, 4), generator=torch.Generator().manual_seed(0))
        >>> tuple(w.shape)
        (3, 4)
    """

    name: str
    scale: float
    mode: FanMode
    distribution: Distribution
    zero_bias: bool = True
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`name` must be a non-empty string, got {self.name!r}")
        check_number("scale", self.scale, low=0.0, low_inclusive=False)
        check_choice("mode", self.mode, _FAN_MODES)
        check_choice("distribution", self.distribution, _DISTRIBUTIONS)
        check_bool("zero_bias", self.zero_bias)

    def __call__(self, tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Fill ``tensor`` in place with this scheme and return it."""
        return variance_scaling_(tensor, self.scale, self.mode, self.distribution, generator=generator)


_REGISTRY: dict[str, InitSpec] = {}


def register_init(spec: InitSpec) -> InitSpec:
    """Add a scheme to the registry so its name works everywhere an init name is accepted.

    Args:
        spec: the scheme; its ``name`` must not be registered yet.

    Returns:
        ``spec``.

    Raises:
        TypeError: if ``spec`` is not an :class:`InitSpec`.
        ValueError: if the name is already registered.

    Example:
        Register once at import time of your code, e.g.
        ``register_init(InitSpec("he_fan_out_normal", 2.0, "fan_out", "normal"))``; names are never replaced:

        >>> register_init(InitSpec("he_normal", 2.0, "fan_in", "normal"))
        Traceback (most recent call last):
            ...
        ValueError: Init scheme 'he_normal' is already registered (...); pick another name
    """
    if not isinstance(spec, InitSpec):
        raise TypeError(f"`spec` must be an InitSpec, got {type(spec).__name__}")
    return register(_REGISTRY, "init scheme", spec)


def available_inits() -> tuple[str, ...]:
    """Return the registered scheme names, sorted.

    Example:
        >>> "he_normal" in available_inits()
        True
    """
    return available(_REGISTRY)


def get_init(name: str) -> InitSpec:
    """Look up a named scheme.

    Args:
        name: one of :func:`available_inits`.

    Returns:
        the frozen :class:`InitSpec`.

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: if it is unknown (the message lists close matches and every valid name).

    Example:
        >>> spec = get_init("he_avg_normal")
        >>> spec.scale, spec.mode, spec.distribution
        (2.0, 'fan_avg', 'truncated_normal')
    """
    return lookup(_REGISTRY, "init scheme", name)


def _resolve_init(arg: str, scheme: Any) -> InitSpec | Callable[[Tensor], Any]:
    """Resolve ``scheme`` (a name or a callable) early, raising errors that name ``arg``."""
    if isinstance(scheme, str):
        try:
            return get_init(scheme)
        except ValueError as err:
            raise ValueError(f"`{arg}`: {err}") from None
    if isinstance(scheme, InitSpec) or callable(scheme):
        return scheme  # type: ignore[no-any-return]
    raise TypeError(
        f"`{arg}` must be an init scheme name ({', '.join(available_inits())}) or a callable(tensor), "
        f"got {type(scheme).__name__} {scheme!r}"
    )


def init_weights_(
    module: nn.Module,
    scheme: InitScheme = "he_normal",
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialize every ``Linear``/``ConvNd`` weight in ``module`` with ``scheme`` and zero their biases.

    Layers are visited in ``module.modules()`` order, so the same ``generator`` seed gives the same weights.
    Other layers (batch norm, PReLU, ...) keep their own initialization.

    Args:
        module: the network (or a single layer).
        scheme: a name from :func:`available_inits`, an :class:`InitSpec`, or a callable ``fn(weight)`` that
            fills a weight in place. ``"torch_default"`` leaves the layers as PyTorch constructed them (weights
            and biases ``U(±1/sqrt(fan_in))``); with a ``generator`` it redraws those same distributions from it.
        generator: random generator for reproducible draws. Not supported with a custom callable ``scheme``
            (seed inside the callable instead).

    Returns:
        ``module``.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module`` or ``scheme`` is neither a name nor a callable.
        ValueError: if ``scheme`` is unknown, ``generator`` is given with a callable scheme, ``module`` contains
            no Linear/ConvNd layer, or a layer is still uninitialized (lazy).

    Example:
        >>> net = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
        >>> _ = init_weights_(net, "he_normal", generator=torch.Generator().manual_seed(0))
        >>> round(net[0].weight.var().item() * 784, 1), net[0].bias.abs().sum().item()
        (2.0, 0.0)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}")
    resolved = _resolve_init("scheme", scheme)
    _check_generator(generator)
    if generator is not None and not isinstance(resolved, InitSpec):
        raise ValueError(
            "`generator` cannot be passed to a custom callable `scheme` (it is called as fn(weight)); "
            "seed the randomness inside the callable instead"
        )
    layers = [m for m in module.modules() if isinstance(m, nn.Linear | _ConvNd)]
    if not layers:
        raise ValueError(
            f"`module` ({type(module).__name__}) contains no Linear or ConvNd layer to initialize"
        )
    for layer in layers:
        if isinstance(layer.weight, UninitializedParameter):
            raise ValueError(
                f"`module` has an uninitialized lazy layer {layer!r}; run a forward pass before init_weights_"
            )
    keep_default = isinstance(resolved, InitSpec) and resolved.name == "torch_default" and generator is None
    if keep_default:
        return module
    with torch.no_grad():
        for layer in layers:
            weight: Tensor = layer.weight
            bias: Tensor | None = layer.bias
            if isinstance(resolved, InitSpec):
                resolved(weight, generator=generator)
            else:
                resolved(weight)
            if bias is None:
                continue
            if isinstance(resolved, InitSpec) and not resolved.zero_bias:
                # torch_default's bias: U(±1/sqrt(fan_in)), as in Linear/ConvNd.reset_parameters.
                bound = 1.0 / math.sqrt(compute_fans(weight)[0])
                nn.init.uniform_(bias, -bound, bound, generator=generator)
            else:
                bias.zero_()
    return module


def _check_generator(generator: Any) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")


def _check_weight(tensor: Any) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"`tensor` must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() < 2:
        raise ValueError(
            f"`tensor` must have at least 2 dimensions (Linear [out, in] or ConvNd [out, in, *kernel]) "
            f"to define fan_in and fan_out, got shape {tuple(tensor.shape)}"
        )


for _spec in (
    InitSpec(
        "glorot_uniform", 1.0, "fan_avg", "uniform", description="Glorot & Bengio (2010), Keras default"
    ),
    InitSpec(
        "glorot_normal", 1.0, "fan_avg", "truncated_normal", description="Glorot, Keras' truncated normal"
    ),
    InitSpec("he_normal", 2.0, "fan_in", "truncated_normal", description="He et al. (2015), for ReLU family"),
    InitSpec("he_uniform", 2.0, "fan_in", "uniform", description="He et al. (2015), uniform"),
    InitSpec(
        "he_avg_normal",
        2.0,
        "fan_avg",
        "truncated_normal",
        description='TF1 variance_scaling_initializer(mode="FAN_AVG"), variance corrected',
    ),
    InitSpec("lecun_normal", 1.0, "fan_in", "truncated_normal", description="LeCun (1998), for SELU"),
    InitSpec("lecun_uniform", 1.0, "fan_in", "uniform", description="LeCun (1998), uniform"),
    InitSpec(
        "torch_default",
        1.0 / 3.0,
        "fan_in",
        "uniform",
        zero_bias=False,
        description="PyTorch's reset_parameters: kaiming_uniform_(a=sqrt(5)), bias U(±1/sqrt(fan_in))",
    ),
):
    register_init(_spec)
del _spec
