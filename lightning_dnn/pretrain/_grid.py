"""A PNG grid of images and their reconstructions (matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from torch import Tensor

__all__ = ["image_shape_of", "write_reconstruction_grid"]


def image_shape_of(sample_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(H, W)`` to draw one sample as a grayscale image, or ``None`` when it is not one.

    ``[C=1, H, W]`` and ``[H, W]`` are images; a flat vector of a square length ``F = S * S`` is drawn ``S x S``.
    """
    dims = tuple(d for d in sample_shape if d != 1) if len(sample_shape) > 1 else sample_shape
    if len(dims) == 2:
        return int(dims[0]), int(dims[1])
    if len(dims) == 1:
        side = math.isqrt(int(dims[0]))
        if side * side == dims[0] and side > 1:
            return side, side
    return None


def write_reconstruction_grid(
    originals: Tensor, reconstructions: Tensor, path: str | os.PathLike[str], image_shape: tuple[int, int]
) -> Path:
    """Write a 2-row PNG: the originals on top, their reconstructions below, on a shared gray scale.

    Args:
        originals: ``[n, ...]`` samples, ``H * W`` values each.
        reconstructions: the same shape as ``originals``.
        path: the PNG file to write (its folder is created).
        image_shape: ``(H, W)``.

    Returns:
        the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(originals)
    rows = (
        originals.detach().float().cpu().reshape(n, *image_shape),
        reconstructions.detach().float().cpu().reshape(n, *image_shape),
    )
    low = float(min(r.min() for r in rows))
    high = float(max(r.max() for r in rows))
    fig = Figure(figsize=(1.2 * n, 2.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, n, squeeze=False)
    for row, (images, label) in enumerate(zip(rows, ("input", "reconstruction"), strict=True)):
        for col in range(n):
            ax = axes[row][col]
            ax.imshow(images[col].numpy(), cmap="gray", vmin=low, vmax=high if high > low else low + 1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="png", dpi=80)
    return target
