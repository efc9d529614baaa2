"""Per-sample transforms over in-memory tensors: :class:`TransformDataset`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["TransformDataset"]


class TransformDataset(Dataset[tuple[Tensor, Tensor]]):
    """``(transform(x[i]), y[i])`` for tensors ``x`` ``[N, *sample_shape]`` and ``y`` ``[N]``.

    Two-dimensional samples ``[H, W]`` get a channel axis for the transform and lose it again; with
    ``flatten`` the transformed sample is returned as a vector. Samples come out as float32.

    Args:
        x: the inputs, one sample per row.
        y: the targets, one per sample.
        transform: maps one sample ``[C, H, W]`` (or the sample's own shape for non-image data) to a tensor with
            as many elements.
        flatten: return each transformed sample as a vector.

    Example:
        >>> import torch
        >>> ds = TransformDataset(torch.zeros(3, 2, 2), torch.arange(3), lambda s: s + 1, flatten=True)
        >>> len(ds), ds[2]
        (3, (tensor([1., 1., 1., 1.]), tensor(2)))
    """

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor], *, flatten: bool) -> None:
        self.x, self.y, self.transform, self.flatten = x, y, transform, flatten

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """The transformed sample ``index`` and its target.

        Raises:
            ValueError: the transform returned something else than a tensor of the sample's size.
        """
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
