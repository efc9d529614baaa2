"""Param-group surgery: add a param group to a live optimizer without breaking the LR schedulers attached to it.

Used by :class:`~lightning_dnn.callbacks.LayerFreezer` when unfrozen parameters join the optimizer mid-fit.
Plain torch apart from the one warning; tested directly against torch's schedulers and ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, CosineAnnealingWarmRestarts

__all__ = [
    "COPIED",
    "SCALED",
    "add_param_group",
    "check_proportional",
    "extend_scheduler",
    "lr_ratio",
    "optimizer_param_ids",
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
) -> dict[str, Any]:
    """Append a named param group that follows the first group's learning-rate schedule, scaled.

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
    group0 = optimizer.param_groups[0]
    if param_names is None and "param_names" in group0:
        raise ValueError(
            f"`param_names` is required: the param groups of {type(optimizer).__name__} are named"
        )
    ratio = lr_ratio(group0, lr, fallback_lr)
    attached = [s for s in schedulers if getattr(s, "optimizer", None) is optimizer]
    if ratio != 1.0:
        for scheduler in attached:
            check_proportional(scheduler)
    start = ratio if lr is None or float(group0["lr"]) > 0 else 0.0
    group: dict[str, Any] = {"params": list(params), "name": name, "lr": scale(group0["lr"], start)}
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
        extend_scheduler(scheduler, n_old, ratio, new["lr"])
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


def extend_scheduler(scheduler: Any, n_old: int, ratio: float, new_lr: Any) -> None:
    """Give ``scheduler`` (and its children) an entry for the param group just appended to its optimizer.

    ``n_old`` is the number of groups before the new one; :data:`SCALED` lists get the first entry times
    ``ratio``, :data:`COPIED` lists the first entry, ``_last_lr`` the new group's lr. Other per-group lists a
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
        extend_scheduler(child, n_old, ratio, new_lr)
    state = vars(scheduler)
    for attr in SCALED + COPIED:
        value = state.get(attr)
        if isinstance(value, list) and len(value) == n_old:
            value.append(scale(value[0], ratio) if attr in SCALED else value[0])
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
