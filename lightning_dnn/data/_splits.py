"""Index arithmetic behind the data modules: class selection, stratified hold-out, N samples per class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["remap_classes", "sample_per_class", "stratified_holdout"]


def remap_classes(labels: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Keep the samples whose label is in ``classes`` and relabel ``classes[i]`` as ``i``.

    Returns:
        ``(keep, new_labels)``: the sorted indices of the kept samples and their new labels.
    """
    lookup = np.full(int(max(int(labels.max(initial=0)), *classes)) + 1, -1, dtype=np.int64)
    lookup[np.asarray(classes, dtype=np.int64)] = np.arange(len(classes))
    new = lookup[labels]
    keep = np.flatnonzero(new >= 0)
    return keep, new[keep]


def stratified_holdout(
    labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into ``(rest, holdout)`` with exactly ``size`` held-out samples.

    Each class contributes ``size * count / total`` samples, rounded by the largest-remainder rule (ties go
    to the smaller label), so every class's share is within one sample of proportional. Both index arrays
    are sorted; which samples of a class are held out is drawn from ``rng``.
    """
    total = len(labels)
    if not 0 <= size < total:
        raise ValueError(f"hold-out size must be in [0, {total}), got {size}")
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = size * counts / total
    take = np.floor(quotas).astype(np.int64)
    remainder = size - int(take.sum())
    if remainder > 0:
        order = np.argsort(-(quotas - take), kind="stable")
        take[order[:remainder]] += 1
    parts = [
        rng.choice(np.flatnonzero(inverse == k), size=int(take[k]), replace=False) for k in range(len(values))
    ]
    holdout = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(total), holdout, assume_unique=True)
    return rest, holdout


def sample_per_class(
    labels: np.ndarray, n: int, class_names: Sequence[str], rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices of ``n`` samples of each class ``0..len(class_names)-1``, drawn from ``rng``.

    Raises:
        ValueError: some class has fewer than ``n`` samples; the message lists every class's count.
    """
    num_classes = len(class_names)
    counts = np.bincount(labels, minlength=num_classes)
    if (counts < n).any():
        listing = ", ".join(f"{name!r}: {int(k)}" for name, k in zip(class_names, counts, strict=False))
        raise ValueError(
            f"`samples_per_class`={n} is larger than what the training split holds for some classes "
            f"(samples per class after class selection and validation split: {{{listing}}}); "
            f"use samples_per_class <= {int(counts.min())}"
        )
    parts = [rng.choice(np.flatnonzero(labels == c), size=n, replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(parts))
