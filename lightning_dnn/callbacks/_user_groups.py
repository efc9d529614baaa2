"""The param groups a user built (timm's ``param_groups_layer_decay``, a no-decay group for biases, ...).

Which one each frozen parameter would have joined, learnt by building the optimizer once more with it trainable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from lightning_dnn.callbacks._param_groups import lr_ratio

__all__ = [
    "DEFAULT_BUCKET",
    "Bucket",
    "follows_first",
    "group_settings",
    "own_settings",
    "probe_buckets",
    "probe_param_groups",
    "same_settings",
]


@dataclass(frozen=True)
class Bucket:
    """Where unfrozen parameters of one user param group go.

    Attributes:
        like: the index of the live param group the new group follows (its scheduler entries are copied).
        ratio: the new group's lr as a factor of that group's.
        settings: the user group's other hyper-parameters (``weight_decay``, ``lr_scale``, ...), or None.
        label: the user group's ``"name"``, or ``group{i}`` (its index in the optimizer built with everything).

    Example:
        >>> DEFAULT_BUCKET
        Bucket(like=0, ratio=1.0, settings=None, label='')
    """

    like: int = 0
    ratio: float = 1.0
    settings: Mapping[str, Any] | None = None
    label: str = ""


#: Follow the first group exactly, with the optimizer's defaults: a single-group optimizer, or no user group known.
DEFAULT_BUCKET = Bucket()


def probe_buckets(
    configure: Callable[[], Any],
    live: Sequence[Mapping[str, Any]],
    frozen: Iterable[nn.Parameter],
    fallback_lr: Any = None,
) -> dict[int, Bucket]:
    """The bucket of each frozen parameter: the user group ``configure`` puts it in once it is trainable.

    ``frozen`` are made trainable for the call of ``configure`` (a ``configure_optimizers``; the optimizer it
    builds is discarded, never stepped) and frozen again after. A parameter's user group is matched to the live
    group with the same hyper-parameters when there is one (followed exactly), else the new group follows the
    first live group at the lr ratio the user groups had (``fallback_lr``: the first group's lr at fit start).

    Returns:
        ``id(parameter)`` -> its :class:`Bucket`; parameters ``configure`` leaves out are not in it.

    Example:
        >>> a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1)).requires_grad_(False)
        >>> def configure():
        ...     trainable = [p for p in (a, b) if p.requires_grad]
        ...     groups = [{"params": trainable[:1]}, {"params": trainable[1:], "lr": 0.05}]
        ...     return torch.optim.SGD([g for g in groups if g["params"]], lr=0.1)  # b frozen: one group
        >>> live = configure().param_groups
        >>> bucket = probe_buckets(configure, live, [b])[id(b)]
        >>> bucket.like, bucket.ratio, bucket.label, b.requires_grad
        (0, 0.5, 'group1', False)
    """
    frozen = list(frozen)
    for param in frozen:
        param.requires_grad_(True)
    try:
        probed = probe_param_groups(configure)
    finally:
        for param in frozen:
            param.requires_grad_(False)
            param.grad = None
    wanted = {id(p) for p in frozen}
    buckets: dict[int, Bucket] = {}
    for i, group in enumerate(probed or []):
        members = [p for p in group["params"] if id(p) in wanted]
        if not members:
            continue
        like = next((j for j, g in enumerate(live) if same_settings(g, group)), None)
        settings = own_settings(group)
        label = str(group.get("name") or f"group{i}")
        if like is not None:
            bucket = Bucket(like=like, ratio=1.0, settings=settings, label=label)
        else:
            ratio = lr_ratio(dict(live[0]), float(group["lr"]), fallback_lr)
            bucket = Bucket(like=0, ratio=ratio, settings=settings, label=label)
        buckets.update(dict.fromkeys((id(p) for p in members), bucket))
    return buckets


def follows_first(bucket: Bucket, first: Mapping[str, Any]) -> bool:
    """Whether a bucket is just the first live group (same lr, same settings): no user group to keep.

    Example:
        >>> follows_first(Bucket(like=0, ratio=1.0, settings={"momentum": 0.9}, label="group0"),
        ...               {"params": [], "lr": 0.1, "momentum": 0.9})
        True
    """
    same = bucket.settings is None or same_settings(bucket.settings, own_settings(first))
    return bucket.like == 0 and bucket.ratio == 1.0 and same


def own_settings(group: Mapping[str, Any]) -> dict[str, Any]:
    """A user group's settings that a new group keeps as they are: all but its name and every learning rate.

    The learning rates (``lr``, and ``initial_lr``, ``max_lr``, ``min_lr`` ... that a scheduler wrote on the group)
    are derived from the group the new one follows, at its ratio (``add_param_group``); taking them from the probed
    group would pin the new group to values of a discarded scheduler.

    Example:
        >>> own_settings({"params": [], "lr": 0.1, "max_lr": 1.0, "initial_lr": 0.04, "weight_decay": 0.01, "lr_scale": 0.5})
        {'weight_decay': 0.01, 'lr_scale': 0.5}
    """
    return {k: v for k, v in group_settings(group).items() if k != "name" and not k.endswith("lr")}


def group_settings(group: Mapping[str, Any]) -> dict[str, Any]:
    """A param group's hyper-parameters: everything but ``params`` and ``param_names``.

    Example:
        >>> group_settings({"params": [], "lr": 0.1, "weight_decay": 0.0})
        {'lr': 0.1, 'weight_decay': 0.0}
    """
    return {k: v for k, v in group.items() if k not in ("params", "param_names")}


def same_settings(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two param groups have the same hyper-parameters (tensors compared by value).

    Example:
        >>> same_settings({"params": [1], "lr": 0.1}, {"params": [2], "lr": 0.1})
        True
    """
    sa, sb = group_settings(a), group_settings(b)
    if sa.keys() != sb.keys():
        return False
    for key, va in sa.items():
        vb = sb[key]
        if isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
            if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and torch.equal(va, vb)):
                return False
        elif va != vb:
            return False
    return True


def probe_param_groups(configure: Callable[[], Any]) -> list[dict[str, Any]] | None:
    """The param groups of the first optimizer that ``configure`` (a ``configure_optimizers``) builds.

    Understands the return forms of Lightning's ``configure_optimizers``: an optimizer, a list or tuple of them,
    ``([optimizers], [schedulers])``, a dict with ``"optimizer"`` or a list of such dicts. ``None`` when it returns
    no optimizer. The optimizer is only built, never stepped.

    Example:
        >>> a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        >>> groups = probe_param_groups(lambda: {"optimizer": torch.optim.SGD([{"params": [a]}, {"params": [b],
        ...                                      "lr": 0.5}], lr=0.1)})
        >>> [(g["params"][0] is p, g["lr"]) for g, p in zip(groups, (a, b))]
        [(True, 0.1), (True, 0.5)]
    """
    found = _first_optimizer(configure())
    return None if found is None else list(found.param_groups)


def _first_optimizer(config: Any) -> Optimizer | None:
    if isinstance(config, Optimizer):
        return config
    if isinstance(config, Mapping):
        return _first_optimizer(config.get("optimizer"))
    if isinstance(config, list | tuple) and config:
        return _first_optimizer(config[0])
    return None
