"""What both pretraining modules share: the optimizer argument, the encoder spec, seeded per-step noise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dnn._specs import NetSpec, resolve_net
from lightning_dnn.loading.sampler import sequence_seed

__all__ = [
    "batch_inputs",
    "ddp_finds_unused",
    "resolve_encoder",
    "step_generator",
    "touch",
    "unused_head",
]


def step_generator(numbers: Sequence[int], device: torch.device) -> torch.Generator:
    """A generator seeded by ``numbers`` (``(seed, step, rank, ...)``): the same noise in a resumed run."""
    generator = torch.Generator(device=device)
    generator.manual_seed(sequence_seed(*numbers))
    return generator


def batch_inputs(batch: Any, who: str) -> Tensor:
    """``x`` from a batch ``x``, ``(x,)`` or ``(x, y, ...)`` (labels are ignored)."""
    x = batch[0] if isinstance(batch, list | tuple) and len(batch) > 0 else batch
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects batches `x` or `(x, y)` with x a tensor, got {type(batch).__name__}")
    return x


def unused_head(encoder: nn.Module) -> list[nn.Parameter]:
    """The parameters of an MLP-like encoder's ``output`` head, which pretraining does not use."""
    head = getattr(encoder, "output", None)
    if not isinstance(head, nn.Module) or not callable(getattr(encoder, "forward_features", None)):
        return []
    return list(head.parameters())


def touch(loss: Tensor, params: list[nn.Parameter], trainer: Any) -> Tensor:
    """Under DDP, ``loss + 0 * sum(params)``: every parameter gets a (zero) gradient, as DDP's reducer requires.

    The parameters are not in the optimizer, so they stay unchanged.
    """
    if not params or trainer is None or int(trainer.world_size) <= 1:
        return loss
    return loss + 0.0 * sum(p.sum() for p in params)


def ddp_finds_unused(trainer: Any) -> bool:
    """Whether the trainer's strategy is not DDP, or DDP built with ``find_unused_parameters=True``."""
    if int(trainer.world_size) <= 1:
        return True
    kwargs = getattr(trainer.strategy, "_ddp_kwargs", None)  # DDPStrategy(**kwargs): the kwargs of DDP
    return not isinstance(kwargs, dict) or bool(kwargs.get("find_unused_parameters", False))


def resolve_encoder(encoder: nn.Module | NetSpec) -> tuple[nn.Module, Any]:
    """The encoder network and its spec, from a module or a class-path spec; errors name the ``encoder`` argument.

    Example:
        >>> from lightning_dnn.nn import MLP
        >>> type(resolve_encoder(MLP(4, (3,), 2))[0]).__name__
        'MLP'
    """
    try:
        return resolve_net(encoder)
    except (TypeError, ValueError) as err:
        raise type(err)(f"`encoder`: {err}") from None
