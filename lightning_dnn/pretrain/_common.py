"""What both pretraining modules share: the optimizer argument, the encoder spec, seeded per-step noise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dnn._checks import check_number
from lightning_dnn._specs import NetSpec, OptimizerFactory, resolve_net, resolve_optimizer
from lightning_dnn.loading.sampler import sequence_seed

__all__ = [
    "batch_inputs",
    "check_optimizer",
    "ddp_finds_unused",
    "resolve_encoder",
    "step_generator",
    "touch",
    "unused_head",
]


def check_optimizer(
    optimizer: Any, lr: float, optimizer_kwargs: Mapping[str, Any] | None
) -> tuple[float, dict[str, Any], OptimizerFactory | None, Any]:
    """Check ``lr``/``optimizer_kwargs`` and resolve ``optimizer`` as DNNClassifier does.

    Returns:
        ``(lr, optimizer_kwargs, factory, JSON-able description)``.
    """
    lr = check_number("lr", lr, low=0.0, low_inclusive=False)
    if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, Mapping):
        raise TypeError(
            f"`optimizer_kwargs` must be a mapping of keyword arguments or None, "
            f"got {type(optimizer_kwargs).__name__} {optimizer_kwargs!r}"
        )
    kwargs = dict(optimizer_kwargs or {})
    if "lr" in kwargs:
        raise ValueError("`optimizer_kwargs` must not hold 'lr'; pass the learning rate as `lr=`")
    factory, spec = resolve_optimizer(optimizer, lr, kwargs)
    return lr, kwargs, factory, spec


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
