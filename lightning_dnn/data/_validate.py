"""Checks of the data a module serves: non-finite values, classes without training samples, label gaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_dnn._lightning import rank_zero_warn

__all__ = ["check_class_coverage", "check_finite", "finite_statistics"]

_SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def check_finite(what: str, x: Tensor) -> None:
    """Raise ValueError naming ``what``, the count and the first position if ``x`` holds NaN or inf.

    Args:
        what: how the message names the array (``"ArrayDataModule `x_train`"``).
        x: samples ``[N, ...]``; integer and bool tensors are always finite and not scanned.

    Raises:
        ValueError: with the number of non-finite values (NaN and inf counted apart), the first offending
            sample and its position inside the sample, and the ``allow_nonfinite=True`` opt-out.

    Example:
        >>> check_finite("`x`", torch.ones(2, 3))
        >>> check_finite("`x`", torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
        Traceback (most recent call last):
            ...
        ValueError: `x` holds 1 non-finite value (1 NaN, 0 inf); the first is at sample 1, position (0,): nan. ...
    """
    if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
        return
    bad = ~torch.isfinite(x)
    count = int(bad.sum())
    if count == 0:
        return
    nans = int(torch.isnan(x).sum())
    per_sample = bad.reshape(len(x), -1)
    sample = int(per_sample.any(dim=1).nonzero()[0])
    flat = int(per_sample[sample].nonzero()[0])
    position = tuple(int(i) for i in np.unravel_index(flat, tuple(x.shape[1:]) or (1,)))
    value = x.reshape(len(x), -1)[sample, flat].item()
    raise ValueError(
        f"{what} holds {count} non-finite value{'s' if count > 1 else ''} ({nans} NaN, {count - nans} inf); "
        f"the first is at sample {sample}, position {position}: {value}. One NaN or inf spreads through the "
        "scaling statistics and, within a few steps, into every weight. Clean or impute the data, or pass "
        "allow_nonfinite=True to keep them (the scaling statistics then use the finite values only)."
    )


def finite_statistics(x: Tensor, scaling: str) -> tuple[Tensor, Tensor]:
    """The ``(low, high)`` (``"unit"``) or per-feature ``(mean, std)`` (``"standardize"``) of the finite values.

    For data kept with ``allow_nonfinite=True``: a NaN or inf then stays where it is instead of turning every
    other value NaN (or, for an inf under ``"unit"``, zero). A feature with no finite value gets mean 0, std 0.

    Example:
        >>> low, high = finite_statistics(torch.tensor([[1.0], [float("inf")], [3.0]]), "unit")
        >>> float(low), float(high)
        (1.0, 3.0)
    """
    x64 = x.to(torch.float64)
    finite = torch.isfinite(x64)
    if scaling == "unit":
        values = x64[finite]
        if values.numel() == 0:
            return torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        return values.min(), values.max()
    counts = finite.sum(dim=0)
    masked = torch.where(finite, x64, torch.zeros_like(x64))
    mean = masked.sum(dim=0) / counts.clamp(min=1)
    centered = torch.where(finite, x64 - mean, torch.zeros_like(x64))
    std = ((centered * centered).sum(dim=0) / counts.clamp(min=1)).sqrt()
    return mean, std


def check_class_coverage(
    dataset: str,
    labels: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    source_labels: Sequence[int],
    selected: bool,
) -> None:
    """Refuse a class with no training sample that another split holds; warn about a class no split holds.

    A class with no training sample can never be predicted, so a model trained on these splits is wrong on
    every validation/test sample of it, silently. A class absent from every split (a gap in the labels, e.g.
    ``0, 1, 3``) only costs a network output that is never used: a warning.

    Args:
        dataset: the data set's name, for the messages.
        labels: the final labels of each split (``"train"``, optionally ``"val"`` and ``"test"``), ``0..k-1``.
        class_names: the name of each class ``0..k-1``.
        source_labels: the source label of each class ``0..k-1`` (differs from the index after ``classes=``).
        selected: whether ``classes=`` selected the classes (for the hint).

    Raises:
        ValueError: naming the class, its source label, and the splits that hold it.

    Example:
        >>> check_class_coverage("toy", {"train": np.array([0, 1]), "test": np.array([0, 2])}, "abc", [0, 1, 2],
        ...                      selected=False)
        Traceback (most recent call last):
            ...
        ValueError: toy: class 2 (label 2, 'c') has no training samples, so it can never be learned, ...
    """
    k = len(class_names)
    counts = {split: np.bincount(y, minlength=k) for split, y in labels.items()}
    gaps = []
    for c in np.flatnonzero(counts["train"] == 0).tolist():
        elsewhere = {s: int(n[c]) for s, n in counts.items() if s != "train" and n[c] > 0}
        name = f"class {c} (label {source_labels[c]}, {class_names[c]!r})"
        if not elsewhere:
            gaps.append(int(source_labels[c]))
            continue
        held = " and ".join(f"the {_SPLIT_NAMES.get(s, s)} split has {n}" for s, n in elsewhere.items())
        present = [int(source_labels[i]) for i in np.flatnonzero(counts["train"] > 0).tolist()]
        raise ValueError(
            f"{dataset}: {name} has no training samples, so it can never be learned, but {held} (after the "
            f"class selection, validation split and samples_per_class). Give it training samples, or "
            f"{'drop it from' if selected else 'select the trained classes with'} `classes=` "
            f"(labels with training samples: {present[:20]}{' ...' if len(present) > 20 else ''})."
        )
    if gaps:
        more = f" and {len(gaps) - 10} more" if len(gaps) > 10 else ""
        shown = ", ".join(str(g) for g in gaps[:10]) + more
        rank_zero_warn(
            f"{dataset}: label{'s' if len(gaps) > 1 else ''} {shown} {'have' if len(gaps) > 1 else 'has'} no "
            f"samples in any split, yet the network gets an output for each of the {k} labels 0..{k - 1}. "
            "Relabel the data to 0..k-1 or pass `classes=` with the labels present."
        )
