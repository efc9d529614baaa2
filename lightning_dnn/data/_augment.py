"""Augmentation of the training split: the ``augment`` argument and the transform it builds.

The dataset that applies the transform is :class:`lightning_dnn.loading.TransformDataset`.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["AugmentSpec", "build_augmentation"]

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
