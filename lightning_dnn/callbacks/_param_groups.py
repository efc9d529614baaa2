"""Param-group surgery: add a param group to a live optimizer without breaking the LR schedulers attached to it.

Used by :class:`~lightning_dnn.callbacks.LayerFreezer` when unfrozen parameters join the optimizer mid-fit.
Plain torch apart from the one warning; tested directly against torch's schedulers and ours.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ChainedScheduler,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    ReduceLROnPlateau,
    SequentialLR,
)

from lightning_dnn._lightning import rank_zero_warn

__all__ = [
    "COPIED",
    "SCALED",
    "add_param_group",
    "check_proportional",
    "extend_scheduler",
    "lr_ratio",
    "optimizer_param_ids",
    "restart_scheduler",
    "scale",
]

#: Scheduler attributes holding one learning rate per param group: the new group gets the first group's entry
#: times the lr ratio (ReduceLROnPlateau's floor ``min_lrs`` too, so the new group stays at `ratio` times the first).
SCALED = ("base_lrs", "max_lrs", "min_lrs")
#: Scheduler attributes holding one entry per param group that the new group copies unchanged.
COPIED = ("lr_lambdas", "base_momentums", "max_momentums")


def optimizer_param_ids(optimizers: Iterable[Optimizer]) -> set[int]:
    """``id()`` of every parameter the optimizers hold (parameters are compared by identity, never by value).

    Example:
        >>> p = nn.Parameter(torch.zeros(1))
        >>> optimizer_param_ids([torch.optim.SGD([p], lr=0.1)]) == {id(p)}
        True
    """
    return {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}


def scale(value: Any, ratio: float) -> Any:
    """``value * ratio`` (a float or a tensor lr); a copy of ``value`` when ``ratio`` is 1.

    Example:
        >>> scale(0.1, 0.5), scale(torch.tensor(0.5), 1.0)
        (0.05, tensor(0.5000))
    """
    if ratio == 1.0:
        return value.clone() if isinstance(value, torch.Tensor) else value
    return value * ratio


def lr_ratio(group0: dict[str, Any], lr: float | None, fallback_lr: Any = None) -> float:
    """The ratio of a new group's learning rate to the first group's: ``lr / group0["lr"]``, 1 when ``lr`` is None.

    When the first group's lr is 0 (the start of a warm-up), the ratio is taken to its ``initial_lr``, or else
    ``fallback_lr`` (e.g. its lr when the fit started); 1 when none of them is positive.

    Example:
        >>> lr_ratio({"lr": 0.1}, 0.02), lr_ratio({"lr": 0.0, "initial_lr": 0.5}, 0.05), lr_ratio({"lr": 0.1}, None)
        (0.2, 0.1, 1.0)
    """
    if lr is None:
        return 1.0
    reference = float(group0["lr"])
    if reference <= 0:
        reference = float(group0.get("initial_lr", fallback_lr if fallback_lr is not None else 0.0))
    return lr / reference if reference > 0 else 1.0


def add_param_group(
    optimizer: Optimizer,
    params: Sequence[nn.Parameter],
    *,
    name: str,
    lr: float | None = None,
    schedulers: Iterable[Any] = (),
    param_names: Sequence[str] | None = None,
    fallback_lr: Any = None,
    like: int = 0,
    ratio: float | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Append a named param group that follows the first group's learning-rate schedule, scaled.

    ``like`` names another group to follow instead of the first (its index), ``ratio`` gives the factor to that
    group's lr directly (instead of ``lr``), and ``settings`` hyper-parameters (weight decay, ``lr_scale``, ...)
    that replace the optimizer's defaults for the new group.

    The new group starts at ``lr`` (``None``: at the first group's current lr) and from then on every scheduler in
    ``schedulers`` attached to ``optimizer`` moves it in proportion to the first group: its per-group entries
    (``base_lrs``, ``initial_lr``, ``min_lrs``, ``max_lrs``, OneCycleLR's ``max_lr``/``min_lr``, ...) are the first
    group's times ``lr / lr_0`` (:func:`lr_ratio`), its ``lr_lambdas`` and momenta the first group's, and the children
    of ``SequentialLR``/``ChainedScheduler`` are extended too. The group's other hyper-parameters come from the
    optimizer's defaults, except a momentum that a scheduler cycles, which starts at the first group's.

    Args:
        optimizer: the optimizer, with at least one param group.
        params: the parameters of the new group, none of them in ``optimizer`` yet.
        name: the group's ``"name"`` (Lightning's ``LearningRateMonitor`` label).
        lr: the new group's starting learning rate, or None for the first group's.
        schedulers: schedulers to extend; those attached to another optimizer are skipped.
        param_names: the parameters' names, required when the optimizer's groups have ``param_names``.
        fallback_lr: the reference lr when the first group's lr and ``initial_lr`` are not positive.
        like: the index of the group to follow (default: the first).
        ratio: the new group's lr as a factor of that group's (exclusive with ``lr``).
        settings: hyper-parameters of the new group other than ``params``, ``lr`` and ``name``.

    Returns:
        the new param group (``optimizer.param_groups[-1]``).

    Raises:
        ValueError: if ``param_names`` is missing while the optimizer's groups have them, or a scheduler cannot
            keep a group at a ratio other than 1 to the first one (:func:`check_proportional`); nothing is changed.

    Example:
        >>> p0, p1 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([p0], lr=0.1)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        >>> group = add_param_group(opt, [p1], name="new", lr=0.01, schedulers=[sched])
        >>> opt.step(); sched.step()
        >>> [round(g["lr"], 6) for g in opt.param_groups], len(sched.base_lrs)
        ([0.05, 0.005], 2)
    """
    if not 0 <= like < len(optimizer.param_groups):
        raise ValueError(
            f"`like` must index one of the {len(optimizer.param_groups)} param groups, got {like}"
        )
    if lr is not None and ratio is not None:
        raise ValueError(f"give `lr` or `ratio`, not both: got lr={lr!r}, ratio={ratio!r}")
    group0 = optimizer.param_groups[like]
    if param_names is None and "param_names" in group0:
        raise ValueError(
            f"`param_names` is required: the param groups of {type(optimizer).__name__} are named"
        )
    if ratio is None:
        ratio = lr_ratio(group0, lr, fallback_lr)
    attached = [s for s in schedulers if getattr(s, "optimizer", None) is optimizer]
    if ratio != 1.0:
        for scheduler in attached:
            check_proportional(scheduler)
    start = ratio if lr is None or float(group0["lr"]) > 0 else 0.0
    group: dict[str, Any] = {k: v for k, v in (settings or {}).items() if k not in ("params", "param_names")}
    group.update(params=list(params), name=name, lr=scale(group0["lr"], start))
    if param_names is not None and "param_names" in group0:
        group["param_names"] = list(param_names)
    n_old = len(optimizer.param_groups)
    optimizer.add_param_group(group)
    new = optimizer.param_groups[-1]
    # Keys a scheduler set on the groups (initial_lr, OneCycleLR's max_lr/min_lr/momenta) that defaults lack.
    for key, value in group0.items():
        if key not in new:
            new[key] = scale(value, ratio) if key.endswith("lr") else value
    for scheduler in attached:
        _copy_cycled_momentum(scheduler, group0, new)
        extend_scheduler(scheduler, n_old, ratio, new["lr"], like=like)
    return new


def check_proportional(scheduler: Any) -> None:
    """Refuse a scheduler that cannot keep a param group at a fixed ratio to the first one.

    ``CosineAnnealingLR``/``CosineAnnealingWarmRestarts`` with ``eta_min != 0`` anneal every group to the same
    floor, and ``piecewise_constant`` with absolute values (``relative=False``) sets every group to the same lr:
    a group that joins with its own lr would not keep it in proportion. Children of ``SequentialLR`` and
    ``ChainedScheduler`` are checked too.

    Raises:
        ValueError: naming the scheduler and the fix.

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> check_proportional(CosineAnnealingLR(opt, T_max=10))  # eta_min=0: proportional
        >>> check_proportional(CosineAnnealingLR(opt, T_max=10, eta_min=1e-3))
        Traceback (most recent call last):
            ...
        ValueError: CosineAnnealingLR(eta_min=0.001) anneals every param group to the same floor, ...
    """
    for child in getattr(scheduler, "_schedulers", None) or []:
        check_proportional(child)
    kind = type(scheduler).__name__
    if isinstance(scheduler, CosineAnnealingLR | CosineAnnealingWarmRestarts) and scheduler.eta_min != 0:
        raise ValueError(
            f"{kind}(eta_min={scheduler.eta_min}) anneals every param group to the same floor, so a new group "
            "with its own lr cannot stay in proportion to the first one; use eta_min=0, or let the new group "
            "follow the first group's lr (LayerFreezer: unfrozen_lr=None)"
        )
    if getattr(scheduler, "relative", None) is False and isinstance(getattr(scheduler, "values", None), list):
        raise ValueError(
            f"{kind} with absolute values (piecewise_constant(relative=False)) sets every param group to the "
            "same lr, so a new group with its own lr would lose it at the next step; use relative=True, or let "
            "the new group follow the first group's lr (LayerFreezer: unfrozen_lr=None)"
        )


def extend_scheduler(scheduler: Any, n_old: int, ratio: float, new_lr: Any, *, like: int = 0) -> None:
    """Give ``scheduler`` (and its children) an entry for the param group just appended to its optimizer.

    ``n_old`` is the number of groups before the new one; :data:`SCALED` lists get entry ``like`` (default: the
    first) times ``ratio``, :data:`COPIED` lists entry ``like``, ``_last_lr`` the new group's lr. Other per-group lists a
    custom scheduler may keep (``warmup_lrs``, ...) are reported with a warning rather than guessed.

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
        >>> opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "lr": 0.2})
        >>> extend_scheduler(sched, 1, 2.0, 0.2)
        >>> sched.base_lrs, len(sched.lr_lambdas), sched.get_last_lr()
        ([0.1, 0.2], 2, [0.1, 0.2])
    """
    for child in getattr(scheduler, "_schedulers", None) or []:
        extend_scheduler(child, n_old, ratio, new_lr, like=like)
    state = vars(scheduler)
    for attr in SCALED + COPIED:
        value = state.get(attr)
        if isinstance(value, list) and len(value) == n_old:
            value.append(scale(value[like], ratio) if attr in SCALED else value[like])
    last = state.get("_last_lr")
    if isinstance(last, list) and len(last) == n_old:
        last.append(scale(new_lr, 1.0))
    unknown = [
        k
        for k, v in state.items()
        if isinstance(v, list)
        and len(v) == n_old
        and ("lr" in k.lower() or "momentum" in k.lower())
        and k not in (*SCALED, *COPIED, "_last_lr")
    ]
    if unknown:
        rank_zero_warn(
            f"LayerFreezer: {type(scheduler).__name__} keeps per-param-group lists {unknown} that LayerFreezer "
            "does not know how to extend for the new param group; the scheduler may fail or ignore that group."
        )


def _copy_cycled_momentum(scheduler: Any, group0: dict[str, Any], new: dict[str, Any]) -> None:
    """A scheduler that cycles the momentum (CyclicLR, OneCycleLR) sets it per step: start where group 0 is."""
    for child in getattr(scheduler, "_schedulers", None) or []:
        _copy_cycled_momentum(child, group0, new)
    if not getattr(scheduler, "cycle_momentum", False):
        return
    if getattr(scheduler, "use_beta1", False) and "betas" in group0 and "betas" in new:
        new["betas"] = (group0["betas"][0], *new["betas"][1:])
    elif "momentum" in group0 and "momentum" in new:
        new["momentum"] = group0["momentum"]


def restart_scheduler(scheduler: Any, initial_state: Mapping[str, Any]) -> None:
    """Start ``scheduler`` over, as a fresh scheduler of the same class and arguments would start.

    ``initial_state`` is the scheduler's ``state_dict()`` right after it was built. The scheduler gets that state
    back (step count 0; ``ReduceLROnPlateau``'s best score and counters cleared), its per-group lists keep the
    entries added since for new param groups, every group's base lr becomes its ``initial_lr`` (a group without
    one keeps its current lr as ``initial_lr``), and every group's lr becomes the schedule's value at step 0 from
    there. The children of ``SequentialLR`` (the first one starts) and ``ChainedScheduler`` are restarted too.

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        >>> start = sched.state_dict()
        >>> opt.step(); sched.step(); opt.step(); sched.step()
        >>> round(opt.param_groups[0]["lr"], 6)
        0.025
        >>> opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "lr": 0.01, "initial_lr": 0.01})
        >>> extend_scheduler(sched, 1, 0.4, 0.01)
        >>> restart_scheduler(sched, start)
        >>> [g["lr"] for g in opt.param_groups], sched.last_epoch
        ([0.1, 0.01], 0)
    """
    groups = scheduler.optimizer.param_groups
    for group in groups:
        group.setdefault("initial_lr", scale(group["lr"], 1.0))
        group["lr"] = scale(group["initial_lr"], 1.0)
    scheduler.load_state_dict(_current_lists(scheduler, copy.deepcopy(dict(initial_state)), len(groups)))
    _set_base_lrs(scheduler, groups)
    _start_lrs(scheduler, groups)


def _current_lists(scheduler: Any, state: dict[str, Any], n_groups: int) -> dict[str, Any]:
    """``state`` with the per-group lists the scheduler holds now (entries for groups added since) put back."""
    current = vars(scheduler)
    children = current.get("_schedulers") or []
    if isinstance(state.get("_schedulers"), list):
        state["_schedulers"] = [
            _current_lists(child, dict(s), n_groups)
            for child, s in zip(children, state["_schedulers"], strict=True)
        ]
    for key, value in state.items():
        now = current.get(key)
        if (
            key not in ("lr_lambdas", "_schedulers", "_milestones")
            and isinstance(value, list)
            and isinstance(now, list)
            and len(now) == n_groups
            and len(value) != n_groups
        ):
            state[key] = copy.copy(now)
    return state


def _set_base_lrs(scheduler: Any, groups: list[dict[str, Any]]) -> None:
    for child in getattr(scheduler, "_schedulers", None) or []:
        _set_base_lrs(child, groups)
    if isinstance(getattr(scheduler, "base_lrs", None), list):
        scheduler.base_lrs = [scale(g["initial_lr"], 1.0) for g in groups]


def _start_lrs(scheduler: Any, groups: list[dict[str, Any]]) -> None:
    """Set the groups' lrs to the schedule's value at step 0 (the groups are at their ``initial_lr``)."""
    if isinstance(scheduler, SequentialLR):
        _start_lrs(scheduler._schedulers[0], groups)
    elif isinstance(scheduler, ChainedScheduler):
        for child in scheduler._schedulers:
            _start_lrs(child, groups)
    elif not isinstance(scheduler, ReduceLROnPlateau):
        initial = vars(scheduler).get("_is_initial")  # torch >= 2.8: get_lr() gives step 0's lrs when set
        if initial is not None:
            scheduler._is_initial = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "get_lr() outside step()": here on purpose, at step 0
                lrs = scheduler.get_lr()
        finally:
            if initial is not None:
                scheduler._is_initial = initial
        for group, lr in zip(groups, lrs, strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
    scheduler._last_lr = [scale(g["lr"], 1.0) for g in groups]
