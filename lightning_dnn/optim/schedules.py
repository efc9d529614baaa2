"""Learning-rate schedules with TensorFlow's semantics, as torch LR schedulers.

Step-based schedules count optimizer steps ``t`` from 0, like TF's ``global_step``: the learning rate used by
the ``t``-th ``optimizer.step()`` is the schedule at ``t``, so call ``scheduler.step()`` after every optimizer
step (in Lightning: ``{"scheduler": s, "interval": "step"}``). ``lr0`` is each param group's initial lr.

* ``exponential`` (:func:`exponential_decay`): ``lr0 * decay_rate ** (t / decay_steps)``; TF1's
  ``tf.train.exponential_decay``.
* ``power`` (:func:`power_decay`): ``lr0 * (1 + t / decay_steps) ** -power``; Géron's "power scheduling",
  TF1's ``tf.train.inverse_time_decay`` for ``power=1``.
* ``piecewise_constant`` (:func:`piecewise_constant`): ``values[i]`` for ``boundaries[i-1] < t <=
  boundaries[i]``; TF1's ``tf.train.piecewise_constant``.
* ``performance`` (:func:`performance_schedule`): multiplied by ``factor`` when a monitored metric stops
  improving for ``patience`` evaluations; Géron's "performance scheduling", torch's ``ReduceLROnPlateau``.

``staircase=True`` replaces ``t / decay_steps`` with ``floor(t / decay_steps)``. :data:`SCHEDULE_INTERVAL`
tells a trainer how often to step each one: ``"step"`` after every optimizer step, ``"epoch"`` once per
validation epoch with the monitored metric (``scheduler.step(metric)``; in Lightning return
``{"scheduler": s, "interval": "epoch", "monitor": "val_loss"}``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from lightning_dnn._checks import check_bool, check_choice, check_int, check_kwargs, check_number
from lightning_dnn._registry import lookup, register

__all__ = [
    "SCHEDULES",
    "SCHEDULE_INTERVAL",
    "ScheduleSpec",
    "build_schedule",
    "exponential_decay",
    "performance_schedule",
    "piecewise_constant",
    "power_decay",
]


def _check_optimizer(optimizer: Any) -> Optimizer:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


@dataclass(frozen=True)
class _ExponentialFactor:
    """``decay_rate ** (t / decay_steps)``, picklable (LambdaLR stores its fields in ``state_dict``)."""

    decay_steps: float
    decay_rate: float
    staircase: bool

    def __call__(self, step: int) -> float:
        exponent = step / self.decay_steps
        return float(self.decay_rate ** (math.floor(exponent) if self.staircase else exponent))


@dataclass(frozen=True)
class _PowerFactor:
    """``(1 + t / decay_steps) ** -power``."""

    decay_steps: float
    power: float
    staircase: bool

    def __call__(self, step: int) -> float:
        ratio = step / self.decay_steps
        return float((1.0 + (math.floor(ratio) if self.staircase else ratio)) ** -self.power)


def exponential_decay(
    optimizer: Optimizer, decay_steps: float, decay_rate: float, staircase: bool = False
) -> LambdaLR:
    """Exponential decay per optimizer step: ``lr0 * decay_rate ** (t / decay_steps)`` (TF semantics).

    Args:
        optimizer: the optimizer; each param group decays from its own initial lr.
        decay_steps: steps over which the lr is multiplied by ``decay_rate`` once, > 0.
        decay_rate: the factor per ``decay_steps``, > 0 (< 1 to decay).
        staircase: use ``floor(t / decay_steps)``: the lr drops once every ``decay_steps`` steps.

    Returns:
        a ``LambdaLR``; call its ``step()`` after every ``optimizer.step()``.

    Raises:
        ValueError: if ``decay_steps <= 0`` or ``decay_rate <= 0``.
        TypeError: if an argument has the wrong type.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = exponential_decay(opt, decay_steps=10, decay_rate=0.1)
        >>> lrs = []
        >>> for _ in range(21):
        ...     lrs.append(opt.param_groups[0]["lr"])
        ...     opt.step()
        ...     sched.step()
        >>> [round(lrs[t], 6) for t in (0, 5, 10, 20)]
        [1.0, 0.316228, 0.1, 0.01]
    """
    factor = _ExponentialFactor(
        check_number("decay_steps", decay_steps, low=0.0, low_inclusive=False),
        check_number("decay_rate", decay_rate, low=0.0, low_inclusive=False),
        check_bool("staircase", staircase),
    )
    return LambdaLR(_check_optimizer(optimizer), factor)


def power_decay(
    optimizer: Optimizer, decay_steps: float, power: float = 1.0, staircase: bool = False
) -> LambdaLR:
    """Power scheduling per optimizer step: ``lr0 * (1 + t / decay_steps) ** -power``.

    With ``power=1`` this is TF's ``tf.train.inverse_time_decay(lr0, t, decay_steps, decay_rate=1)``; Géron
    calls the general form "power scheduling" (``eta0 / (1 + t / s) ** c``).

    Args:
        optimizer: the optimizer; each param group decays from its own initial lr.
        decay_steps: the step scale ``s``, > 0: after ``s`` steps the lr is ``lr0 / 2 ** power``.
        power: the exponent ``c``, >= 0.
        staircase: use ``floor(t / decay_steps)``.

    Returns:
        a ``LambdaLR``; call its ``step()`` after every ``optimizer.step()``.

    Raises:
        ValueError: if ``decay_steps <= 0`` or ``power < 0``.
        TypeError: if an argument has the wrong type.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> sched = power_decay(opt, decay_steps=2)
        >>> for _ in range(6):
        ...     opt.step()
        ...     sched.step()
        >>> round(opt.param_groups[0]["lr"], 6)  # t = 6: 0.1 / (1 + 6 / 2)
        0.025
    """
    factor = _PowerFactor(
        check_number("decay_steps", decay_steps, low=0.0, low_inclusive=False),
        check_number("power", power, low=0.0),
        check_bool("staircase", staircase),
    )
    return LambdaLR(_check_optimizer(optimizer), factor)


class _PiecewiseConstantLR(LRScheduler):
    """Absolute (or, with ``relative=True``, multiplied) constant learning rates between step boundaries."""

    def __init__(
        self, optimizer: Optimizer, boundaries: Sequence[int], values: Sequence[float], relative: bool
    ) -> None:
        self.boundaries = list(boundaries)
        self.values = list(values)
        self.relative = relative
        super().__init__(optimizer)

    def _value(self, step: int) -> float:
        # values[i] for boundaries[i-1] < t <= boundaries[i]: the number of boundaries strictly below t.
        return self.values[sum(1 for b in self.boundaries if step > b)]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        value = self._value(self.last_epoch)
        if self.relative:
            return [float(base_lr) * value for base_lr in self.base_lrs]
        return [value for _ in self.base_lrs]


def piecewise_constant(
    optimizer: Optimizer, boundaries: Sequence[int], values: Sequence[float], *, relative: bool = False
) -> LRScheduler:
    """Piecewise-constant learning rate per optimizer step (TF's ``tf.train.piecewise_constant``).

    The lr is ``values[0]`` for ``t <= boundaries[0]``, ``values[i]`` for ``boundaries[i-1] < t <=
    boundaries[i]`` and ``values[-1]`` for ``t > boundaries[-1]``: a step equal to a boundary still uses the
    lower interval's value.

    Args:
        optimizer: the optimizer.
        boundaries: strictly increasing step numbers (ints).
        values: ``len(boundaries) + 1`` learning rates, each > 0. As in TF they are absolute: every param
            group gets exactly ``values[i]``, whatever its initial lr.
        relative: treat ``values`` as multipliers of each group's initial lr instead (keeps the ratio between
            groups that have their own lr).

    Returns:
        an ``LRScheduler``; call its ``step()`` after every ``optimizer.step()``.

    Raises:
        ValueError: if the boundaries are not strictly increasing, the lengths do not match, or a value is
            not > 0.
        TypeError: if a boundary is not an int or a value not a number.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = piecewise_constant(opt, boundaries=[2, 4], values=[0.1, 0.01, 0.001])
        >>> lrs = []
        >>> for _ in range(6):
        ...     lrs.append(opt.param_groups[0]["lr"])
        ...     opt.step()
        ...     sched.step()
        >>> lrs
        [0.1, 0.1, 0.1, 0.01, 0.01, 0.001]
    """
    _check_optimizer(optimizer)
    if isinstance(boundaries, str | bytes) or not isinstance(boundaries, Sequence):
        raise TypeError(f"`boundaries` must be a sequence of ints, got {type(boundaries).__name__}")
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"`values` must be a sequence of numbers, got {type(values).__name__}")
    checked_boundaries = [check_int(f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
    for i in range(1, len(checked_boundaries)):
        if checked_boundaries[i] <= checked_boundaries[i - 1]:
            raise ValueError(f"`boundaries` must be strictly increasing, got {checked_boundaries}")
    checked_values = [
        check_number(f"values[{i}]", v, low=0.0, low_inclusive=False) for i, v in enumerate(values)
    ]
    if len(checked_values) != len(checked_boundaries) + 1:
        raise ValueError(
            f"`values` must have len(boundaries) + 1 = {len(checked_boundaries) + 1} entries, got "
            f"{len(checked_values)}"
        )
    return _PiecewiseConstantLR(
        optimizer, checked_boundaries, checked_values, check_bool("relative", relative)
    )


def performance_schedule(
    optimizer: Optimizer,
    *,
    mode: Literal["min", "max"] = "min",
    factor: float = 0.5,
    patience: int = 5,
    threshold: float = 1e-4,
    cooldown: int = 0,
    min_lr: float = 0.0,
) -> ReduceLROnPlateau:
    """Performance scheduling: cut the lr by ``factor`` when a monitored metric stops improving.

    Géron's "performance scheduling" (Keras ``ReduceLROnPlateau(factor=0.5, patience=5)`` in the chapter) is
    torch's ``ReduceLROnPlateau``. It needs the metric: call ``scheduler.step(val_loss)`` once per
    evaluation; in Lightning return ``{"scheduler": s, "interval": "epoch", "monitor": "val_loss"}``.

    Args:
        optimizer: the optimizer.
        mode: ``"min"`` for a loss, ``"max"`` for an accuracy.
        factor: multiplier applied to the lr on a plateau, in (0, 1).
        patience: evaluations without improvement tolerated before cutting, >= 0.
        threshold: relative improvement that counts as one, >= 0.
        cooldown: evaluations to wait after a cut before counting again, >= 0.
        min_lr: floor for the lr, >= 0.

    Returns:
        a ``ReduceLROnPlateau``.

    Raises:
        ValueError: if an argument is out of range or ``mode`` is unknown.
        TypeError: if an argument has the wrong type.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = performance_schedule(opt, patience=1)
        >>> for val_loss in [1.0, 0.5, 0.6, 0.6, 0.6]:
        ...     sched.step(val_loss)
        >>> opt.param_groups[0]["lr"]  # two evaluations without improvement after 0.5: halved once
        0.5
    """
    return ReduceLROnPlateau(
        _check_optimizer(optimizer),
        mode=check_choice("mode", mode, ("min", "max")),  # type: ignore[arg-type]
        factor=check_number("factor", factor, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False),
        patience=check_int("patience", patience, low=0),
        threshold=check_number("threshold", threshold, low=0.0),
        cooldown=check_int("cooldown", cooldown, low=0),
        min_lr=check_number("min_lr", min_lr, low=0.0),
    )


@dataclass(frozen=True)
class ScheduleSpec:
    """A named schedule: how to build it and how often a trainer must step it.

    Args:
        name: the registry name.
        build: ``build(optimizer, **kwargs)`` returning the scheduler.
        interval: ``"step"`` (after every optimizer step) or ``"epoch"`` (once per evaluation, with the
            monitored metric).
        needs_metric: whether ``scheduler.step`` takes the monitored metric (``ReduceLROnPlateau``).

    Example:
        >>> SCHEDULES["performance"].interval, SCHEDULES["performance"].needs_metric
        ('epoch', True)
    """

    name: str
    build: Callable[..., Any]
    interval: Literal["step", "epoch"]
    needs_metric: bool = False


_REGISTRY: dict[str, ScheduleSpec] = {}
for _spec in (
    ScheduleSpec("exponential", exponential_decay, "step"),
    ScheduleSpec("power", power_decay, "step"),
    ScheduleSpec("piecewise_constant", piecewise_constant, "step"),
    ScheduleSpec("performance", performance_schedule, "epoch", needs_metric=True),
):
    register(_REGISTRY, "learning-rate schedule", _spec)
del _spec

SCHEDULES: Mapping[str, ScheduleSpec] = MappingProxyType(_REGISTRY)
"""Read-only registry: name -> :class:`ScheduleSpec`; iterate it for the names :func:`build_schedule` accepts."""

SCHEDULE_INTERVAL: Mapping[str, str] = MappingProxyType(
    {name: spec.interval for name, spec in _REGISTRY.items()}
)
"""Read-only: name -> ``"step"`` (step after every optimizer step) or ``"epoch"`` (once per evaluation with the
monitored metric). Lightning's ``lr_scheduler_config["interval"]`` takes these values directly."""


def build_schedule(name: str, optimizer: Optimizer, **kwargs: Any) -> LRScheduler | ReduceLROnPlateau:
    """Build a learning-rate schedule by name (see :data:`SCHEDULES`).

    Args:
        name: ``"exponential"``, ``"power"``, ``"piecewise_constant"`` or ``"performance"`` (case-insensitive).
        optimizer: the optimizer to schedule.
        **kwargs: the schedule function's arguments (:func:`exponential_decay`, :func:`power_decay`,
            :func:`piecewise_constant`, :func:`performance_schedule`).

    Returns:
        the scheduler; step it as :data:`SCHEDULE_INTERVAL` says.

    Raises:
        ValueError: if ``name`` is unknown (with close matches) or an argument is out of range.
        TypeError: if ``name`` is not a string or a keyword is not accepted by the schedule.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> sched = build_schedule("exponential", opt, decay_steps=100, decay_rate=0.5)
        >>> type(sched).__name__, SCHEDULE_INTERVAL["exponential"]
        ('LambdaLR', 'step')
        >>> build_schedule("exponentail", opt)
        Traceback (most recent call last):
        ...
        ValueError: Unknown learning-rate schedule 'exponentail'. Did you mean 'exponential'? ...
    """
    spec = lookup(_REGISTRY, "learning-rate schedule", name, fold_case=True)
    check_kwargs(f"schedule {spec.name!r}", spec.build, kwargs)
    scheduler: LRScheduler | ReduceLROnPlateau = spec.build(optimizer, **kwargs)
    return scheduler
