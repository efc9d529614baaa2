"""Gradient averaging under DDP for parameters that DistributedDataParallel's reducer does not know.

``DistributedDataParallel`` only all-reduces the gradients of the parameters that required grad when it wrapped
the model, and it cannot register new ones later (re-wrapping mid-fit would leave the old reducer's autograd hooks
attached). :class:`UnsyncedGradients` averages the gradients of such parameters itself, like DDP would.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["UnsyncedGradients", "average_gradients"]


class UnsyncedGradients:
    """The trainable parameters that a DDP wrapper does not synchronize, and their gradient averaging.

    Call :meth:`attach` once the model is wrapped, :meth:`track` whenever parameters become trainable, and
    :meth:`after_backward` after every backward pass (before any optimizer-step hook, so gradient clipping sees
    synchronized gradients).

    Example:
        >>> net = nn.Linear(2, 2)
        >>> sync = UnsyncedGradients()
        >>> sync.attach(net, net)  # not wrapped in DistributedDataParallel: nothing to do
        >>> sync.track(net.parameters())
        >>> sync.params, sync.after_backward(net)
        ([], None)
    """

    def __init__(self) -> None:
        self._synced: set[int] | None = None  # ids of the parameters DDP's reducer syncs; None: not DDP
        self.params: list[nn.Parameter] = []

    def attach(self, model: nn.Module | None, module: nn.Module) -> None:
        """Record what ``model`` (the strategy's model, maybe a DDP wrapper of ``module``) synchronizes.

        Args:
            model: the model as wrapped by the strategy.
            module: the wrapped module (the LightningModule), whose parameter names DDP's ignore list uses.
        """
        if isinstance(model, DistributedDataParallel):
            ignored = model.parameters_to_ignore
            self._synced = {
                id(p) for n, p in module.named_parameters() if p.requires_grad and n not in ignored
            }
        else:
            self._synced = None
        self.params = []

    def track(self, params: Iterable[nn.Parameter]) -> None:
        """Set the parameters to average: those of ``params`` that are trainable and not synced by DDP."""
        synced = self._synced
        self.params = [] if synced is None else [p for p in params if p.requires_grad and id(p) not in synced]

    def after_backward(self, model: nn.Module | None) -> None:
        """Average the tracked gradients over the DDP process group, on the micro-batches where DDP syncs.

        Nothing happens for a single process or inside a ``no_sync`` gradient-accumulation micro-batch.
        """
        if not self.params:
            return
        if not isinstance(model, DistributedDataParallel) or not model.require_backward_grad_sync:
            return
        average_gradients(self.params, model.process_group)


def average_gradients(params: Sequence[nn.Parameter], group: Any) -> None:
    """All-reduce-average the gradients of ``params`` over ``group``, as DDP does for the ones it registered.

    A rank whose parameter has no gradient contributes zeros; a parameter with no gradient on any rank keeps
    ``grad=None``. One collective for the presence flags, then one per (device, dtype) bucket, in the same
    parameter order on every rank.

    Raises:
        RuntimeError: for sparse gradients.
    """
    world = dist.get_world_size(group)
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(present, group=group)
    anywhere = dict(zip((id(p) for p in params), present.tolist(), strict=True))
    buckets: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise RuntimeError(
                "LayerFreezer cannot synchronize sparse gradients of unfrozen parameters under DDP."
            )
        if anywhere[id(p)]:
            buckets.setdefault((p.device, p.dtype), []).append(p)
    for bucket in buckets.values():
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
        )
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        offset = 0
        for p in bucket:
            mean = flat[offset : offset + p.numel()].view_as(p)
            if p.grad is not None:
                p.grad.copy_(mean)
            else:
                p.grad = mean.clone()
            offset += p.numel()
