"""The param groups LayerFreezer's unfreeze steps add: their names and lrs, the user group each one follows.

Also their restore on resume, the scheduler checks and snapshots at fit start, and the checkpoint form of a step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from lightning_dnn._lightning import rank_zero_warn
from lightning_dnn._selection import shorten
from lightning_dnn.callbacks._freeze_schedule import StepSpec
from lightning_dnn.callbacks._param_groups import (
    add_param_group,
    check_proportional,
    optimizer_param_ids,
    scale,
)
from lightning_dnn.callbacks._user_groups import DEFAULT_BUCKET, Bucket, follows_first, probe_buckets

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = [
    "GroupOptions",
    "add_step_groups",
    "check_schedulers",
    "group_name",
    "restore_group",
    "scheduler_starts",
    "step_lr",
    "step_record",
    "user_buckets",
]


@dataclass(frozen=True)
class GroupOptions:
    """How a step's new param groups start: LayerFreezer's lr arguments and what it learnt at fit start.

    Attributes:
        unfrozen_lr: LayerFreezer's ``unfrozen_lr``.
        layer_decay: LayerFreezer's ``layer_decay``.
        reset_scheduler: LayerFreezer's ``reset_scheduler``.
        buckets: ``id(parameter)`` -> the user param group it joins (empty: follow the first group).
        base_lrs: every param group's lr at fit start (a float or a tensor).
    """

    unfrozen_lr: float | None
    layer_decay: float | None
    reset_scheduler: bool
    buckets: Mapping[int, Bucket]
    base_lrs: Sequence[Any]


def step_lr(
    index: int, step: StepSpec, unfrozen_lr: float | None, layer_decay: float | None
) -> tuple[float | None, float]:
    """The step's absolute start lr (or None) and otherwise its factor to the lr of the group it follows."""
    decay = 1.0 if layer_decay is None else layer_decay ** (index + 1)
    if step.lr is not None:
        return step.lr, 1.0
    if unfrozen_lr is not None:
        return unfrozen_lr * decay, 1.0
    return None, decay


def group_name(steps: Sequence[StepSpec], index: int) -> str:
    """The name of the param group step ``index`` adds: ``unfrozen-epoch{N}``, or ``unfrozen-step{k}`` (metric)."""
    epoch = steps[index].epoch
    return f"unfrozen-step{index + 1}" if epoch is None else f"unfrozen-epoch{epoch}"


def user_buckets(
    pl_module: pl.LightningModule,
    groups: Sequence[Mapping[str, Any]],
    frozen: Sequence[nn.Parameter],
    base_lr: Any,
) -> dict[int, Bucket]:
    """The user param group each ``frozen`` parameter joins once trainable; empty when all follow the first."""
    if not frozen:
        return {}
    # learn which user group each frozen parameter joins once it is trainable
    buckets = probe_buckets(pl_module.configure_optimizers, groups, frozen, base_lr)
    # one plain group (the user's groups were all emptied by freezing, or there is one): as before
    if len(groups) > 1 or any(not follows_first(b, groups[0]) for b in buckets.values()):
        return buckets
    return {}


def check_schedulers(trainer: pl.Trainer, steps: Sequence[StepSpec], options: GroupOptions) -> None:
    """Refuse at fit start a scheduler that cannot keep a step's lr in proportion (instead of at the step)."""
    arg = (
        "unfrozen_lr"
        if options.unfrozen_lr is not None
        else "layer_decay"
        if options.layer_decay is not None
        else "unfreeze lr"
        if any(s.lr is not None for s in steps)
        else "the user's param groups (their lr ratios)"
        if any(b.ratio != 1.0 for b in options.buckets.values())
        else None
    )
    if arg is None:
        return
    for config in trainer.lr_scheduler_configs:
        if config.scheduler.optimizer is trainer.optimizers[0]:
            try:
                check_proportional(config.scheduler)
            except ValueError as err:
                raise ValueError(f"`{arg}`: {err}") from None


def scheduler_starts(trainer: pl.Trainer) -> list[tuple[Any, dict[str, Any]]]:
    """Give every group of the first optimizer an ``initial_lr``; return its schedulers' states (to restart from)."""
    for group in trainer.optimizers[0].param_groups:
        group.setdefault("initial_lr", scale(group["lr"], 1.0))
    return [
        (c.scheduler, copy.deepcopy(c.scheduler.state_dict()))
        for c in trainer.lr_scheduler_configs
        if c.scheduler.optimizer is trainer.optimizers[0]
    ]


def add_step_groups(
    trainer: pl.Trainer,
    steps: Sequence[StepSpec],
    index: int,
    params: Sequence[tuple[str, nn.Parameter]],
    options: GroupOptions,
) -> tuple[list[dict[str, Any]], int]:
    """Add the ``params`` step ``index`` unfroze that no optimizer holds to the first one, a group per user group.

    Returns:
        The groups added (name and parameter names), and how many parameters they hold.
    """
    held = optimizer_param_ids(trainer.optimizers)
    new = [(n, p) for n, p in params if id(p) not in held]
    if new and not trainer.optimizers:
        rank_zero_warn(
            "LayerFreezer: the trainer has no optimizer; unfrozen parameters were not added to one."
        )
        new = []
    buckets: dict[int, tuple[Bucket, list[tuple[str, nn.Parameter]]]] = {}
    for name, param in new:
        bucket = options.buckets.get(id(param), DEFAULT_BUCKET)
        buckets.setdefault(id(bucket), (bucket, []))[1].append((name, param))
    groups = []
    base = group_name(steps, index)
    for bucket, items in buckets.values():
        name = base if len(buckets) == 1 else f"{base}/{bucket.label or 'default'}"
        _add_group(trainer, steps, index, [p for _, p in items], [n for n, _ in items], name, bucket, options)
        groups.append({"name": name, "params": [n for n, _ in items]})
    return groups, len(new)


def restore_group(
    trainer: pl.Trainer,
    pl_module: nn.Module,
    steps: Sequence[StepSpec],
    index: int,
    group: Mapping[str, Any],
    options: GroupOptions,
) -> None:
    """Add back a param group a step added before the checkpoint was saved (values restored after)."""
    by_name = dict(pl_module.named_parameters())
    missing = [n for n in group["params"] if n not in by_name]
    if missing:
        raise RuntimeError(
            f"LayerFreezer cannot restore param group {group['name']!r}: the model has no "
            f"parameters {shorten(missing, 12)}."
        )
    params = [by_name[n] for n in group["params"]]
    held = optimizer_param_ids(trainer.optimizers)
    if any(id(p) in held for p in params):
        raise RuntimeError(
            f"LayerFreezer cannot restore param group {group['name']!r}: `configure_optimizers` "
            "already put some of its parameters in the optimizer, unlike the run that saved the "
            "checkpoint; the optimizer state would not match."
        )
    bucket = options.buckets.get(id(params[0]), DEFAULT_BUCKET)
    _add_group(trainer, steps, index, params, list(group["params"]), group["name"], bucket, options)


def _add_group(
    trainer: pl.Trainer,
    steps: Sequence[StepSpec],
    index: int,
    params: list[nn.Parameter],
    names: list[str],
    name: str,
    bucket: Bucket,
    options: GroupOptions,
) -> None:
    """Add one param group to the first optimizer: its lr from the step and ``bucket``, its schedulers extended."""
    optimizer = trainer.optimizers[0]
    lr, factor = step_lr(index, steps[index], options.unfrozen_lr, options.layer_decay)
    new = add_param_group(
        optimizer,
        params,
        name=name,
        lr=lr,
        ratio=None if lr is not None else bucket.ratio * factor,
        like=bucket.like,
        settings=bucket.settings,
        schedulers=[config.scheduler for config in trainer.lr_scheduler_configs],
        param_names=names,
        fallback_lr=options.base_lrs[bucket.like] if options.base_lrs else None,
    )
    if options.reset_scheduler and lr is not None:
        new["initial_lr"] = scale(new["lr"], 1.0)  # restarts begin at the step's lr


def step_record(rec: Mapping[str, Any], position: int) -> dict[str, Any]:
    """An applied step as stored by ``LayerFreezer.state_dict`` (also read from the older one-group form)."""
    groups = rec.get("groups")
    if groups is None:
        groups = [{"name": rec["group_name"], "params": list(rec["group"])}] if rec.get("group") else []
    return {
        "step": int(rec.get("step", position)),
        "epoch": rec.get("epoch"),
        "modules": list(rec.get("modules", [])),
        "groups": [{"name": g["name"], "params": list(g["params"])} for g in groups],
    }
