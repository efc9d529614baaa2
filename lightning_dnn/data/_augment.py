"""Per-sample augmentation for the training split: the transform spec and the dataset that applies it."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["AugmentSpec", "TransformDataset", "build_augmentation"]

AugmentSpec = Mapping[str, Any] | Callable[[Tensor], Tensor]


def build_augmentation(
    augment: AugmentSpec | None, sample_shape: tuple[int, ...]
) -> Callable[[Tensor], Tensor] | None:
    """Turn the ``augment`` argument into a transform of one sample (or ``None``).

    A mapping holds keyword arguments of ``torchvision.transforms.v2.RandomAffine``; ``degrees`` defaults to 0,
    a number ``t`` for ``translate`` means ``(t, t)`` and a number ``s`` for ``scale`` means ``(1 - s, 1 + s)``.
    A callable is used as it is: it receives one sample shaped ``[C, H, W]`` (or the source's own shape for
    non-image data) and must return a tensor of the same shape.
    """
    if augment is None:
        return None
    if isinstance(augment, Mapping):
        if len(sample_shape) < 2:
            raise ValueError(
                f"`augment` as a dict builds a RandomAffine transform, which needs image samples shaped "
                f"[C, H, W] or [H, W]; this data has samples of shape {sample_shape}. "
                "Pass 2-D or 3-D samples (not flattened ones) or a callable transform."
            )
        from torchvision.transforms import v2

        valid = [p for p in inspect.signature(v2.RandomAffine).parameters if p != "self"]
        unknown = sorted(set(augment) - set(valid))
        if unknown:
            raise ValueError(
                f"`augment` has unknown key(s) {unknown}; valid keys (RandomAffine's arguments): "
                f"{', '.join(valid)}"
            )
        kwargs = dict(augment)
        kwargs.setdefault("degrees", 0)
        if isinstance(kwargs.get("translate"), numbers.Real):
            kwargs["translate"] = (kwargs["translate"], kwargs["translate"])
        if isinstance(kwargs.get("scale"), numbers.Real):
            kwargs["scale"] = (1.0 - kwargs["scale"], 1.0 + kwargs["scale"])
        for key in ("translate", "scale"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        try:
            return v2.RandomAffine(**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"`augment`={dict(augment)!r} is not a valid RandomAffine configuration: {err}"
            ) from err
    if callable(augment):
        return augment
    raise TypeError(
        "`augment` must be None, a dict of RandomAffine arguments (e.g. {'degrees': 10, 'translate': 0.1}) "
        f"or a callable transform, got {type(augment).__name__}"
    )


class TransformDataset(Dataset[tuple[Tensor, Tensor]]):
    """``(transform(x[i]), y[i])`` for tensors ``x`` ``[N, *sample_shape]`` and ``y`` ``[N]``.

    Two-dimensional samples ``[H, W]`` get a channel axis for the transform and lose it again; with
    ``flatten`` the transformed sample is returned as a vector.
    """

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor], *, flatten: bool) -> None:
        self.x, self.y, self.transform, self.flatten = x, y, transform, flatten

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        sample = self.x[index]
        shape = sample.shape
        image = sample.unsqueeze(0) if sample.dim() == 2 else sample
        out = self.transform(image)
        if not isinstance(out, Tensor) or out.numel() != math.prod(shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"The `augment` transform must return a tensor of the sample's shape {tuple(shape)}, "
                f"got {got}"
            )
        out = out.reshape(-1) if self.flatten else out.reshape(shape)
        return out.to(torch.float32), self.y[index]
