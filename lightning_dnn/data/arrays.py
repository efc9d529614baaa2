"""Any in-memory arrays as a data module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from lightning_dnn.data._augment import AugmentSpec
from lightning_dnn.data.base import ClassificationDataModule, DatasetInfo, Scaling

__all__ = ["ArrayDataModule"]

MAX_SPARSE_CLASSES = 1000  # more classes than this ...
MAX_LABEL_SPARSITY = 10  # ... and this many times the distinct labels present: refused without `classes`


class ArrayDataModule(ClassificationDataModule):
    """A data module over arrays you already hold: numpy arrays or torch tensors, any shape ``[N, ...]``.

    Labels are integers; without ``classes`` they are used as they are and ``num_classes`` is the largest
    label plus one. Labels that would make an absurd number of classes (more than ``MAX_SPARSE_CLASSES`` =
    1,000 and more than ``MAX_LABEL_SPARSITY`` = 10 times the number of distinct labels present, e.g. the
    labels ``0, 1, 10**7``: 10,000,001 network outputs for 3 classes) are refused unless ``classes`` selects
    and relabels them. The existing labels (what ``classes`` may select) are those present in ``y_train`` or
    ``y_test``. Samples keep their shape ``x.shape[1:]`` when ``flatten=False`` (give image data as
    ``[N, C, H, W]`` for convolutional nets and for ``augment``).

    Args:
        x_train: training inputs ``[N, ...]``.
        y_train: training labels ``[N]``.
        x_test: optional test inputs with the same sample shape.
        y_test: optional test labels.
        class_names: a name per label ``0..max_label``; default ``"0"``, ``"1"``, ...
        value_range: the nominal ``(low, high)`` of the inputs for ``scaling="unit"``; default: the min and
            max of the training split.
        scaling: ``None`` by default here (the arrays are used as given); ``"unit"`` or ``"standardize"`` as
            in :class:`ClassificationDataModule`.
        batch_size, eval_batch_size, classes, samples_per_class, val_split, flatten, augment, seed,
            device_resident, drop_last, num_workers, pin_memory, allow_nonfinite: see
            :class:`ClassificationDataModule`.

    Raises:
        ValueError, TypeError: arrays of mismatched lengths or shapes, non-integer labels, label values that
            make an absurd number of classes (without ``classes``), invalid options.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(100, 3)), np.repeat([0, 1, 2, 3], 25)
        >>> dm = ArrayDataModule(x, y, classes=[3, 1], batch_size=10, scaling="standardize")
        >>> dm.setup()
        >>> xb, yb = next(iter(dm.train_dataloader()))
        >>> dm.num_classes, tuple(xb.shape), sorted(set(dm.tensors("train")[1].tolist()))
        (2, (10, 3), [0, 1])
    """

    def __init__(
        self,
        x_train: Any,
        y_train: Any,
        x_test: Any | None = None,
        y_test: Any | None = None,
        *,
        class_names: Sequence[str] | None = None,
        value_range: tuple[float, float] | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        classes: Sequence[int] | None = None,
        samples_per_class: int | None = None,
        val_split: int | float | str = 0.0,
        scaling: Scaling | None = None,
        flatten: bool = True,
        augment: AugmentSpec | None = None,
        seed: int = 0,
        device_resident: bool | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        allow_nonfinite: bool = False,
    ) -> None:
        if (x_test is None) != (y_test is None):
            raise ValueError("Pass both `x_test` and `y_test`, or neither")
        self._arrays = (
            _as_array("x_train", x_train),
            _labels("y_train", y_train),
            None if x_test is None else _as_array("x_test", x_test),
            None if y_test is None else _labels("y_test", y_test),
        )
        x_tr, y_tr, _, y_te = self._arrays
        _check_pairs(self._arrays)
        sample_shape = tuple(int(d) for d in x_tr.shape[1:])
        present = np.unique(np.concatenate([y_tr] + ([y_te] if y_te is not None else [])))
        if present.min() < 0:
            raise ValueError(f"Labels must be >= 0, got {int(present.min())}")
        if classes is None:
            _check_label_density(present)
        names = _class_names(class_names, int(present.max()) + 1)
        value_range = _value_range(value_range)
        info = DatasetInfo(
            "ArrayDataModule", sample_shape, names, tuple(int(c) for c in present), value_range
        )
        super().__init__(
            info,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            classes=classes,
            samples_per_class=samples_per_class,
            val_split=val_split,
            scaling=scaling,
            flatten=flatten,
            augment=augment,
            seed=seed,
            device_resident=device_resident,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=pin_memory,
            allow_nonfinite=allow_nonfinite,
        )
        self.save_hyperparameters(ignore=["x_train", "y_train", "x_test", "y_test", "augment"])

    def load_arrays(self) -> tuple[Any, Any, Any | None, Any | None]:
        """The arrays given to the constructor."""
        return self._arrays


def _as_array(name: str, x: Any) -> Tensor | np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a numpy array or a torch tensor, got {type(x).__name__}") from err
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise TypeError(f"`{name}` must hold numbers, got dtype {array.dtype}")
    return array


def _labels(name: str, y: Any) -> np.ndarray:
    y_np = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if y_np.ndim != 1:
        raise ValueError(f"`{name}` must be a vector of labels [N], got shape {y_np.shape}")
    if not np.issubdtype(y_np.dtype, np.integer):
        if not np.issubdtype(y_np.dtype, np.floating) or not np.all(np.mod(y_np, 1) == 0):
            raise TypeError(f"`{name}` must hold integer class labels, got dtype {y_np.dtype}")
    return y_np.astype(np.int64)


def _check_pairs(arrays: tuple[Any, Any, Any, Any]) -> None:
    """Check each (x, y) pair: [N, ...] samples, as many labels as samples, not empty, same sample shapes."""
    x_tr, y_tr, x_te, y_te = arrays
    for x_name, x, y_name, y in (("x_train", x_tr, "y_train", y_tr), ("x_test", x_te, "y_test", y_te)):
        if x is None or y is None:
            continue
        if x.ndim < 2:
            raise ValueError(
                f"`{x_name}` must be shaped [N, ...features], got a {x.ndim}-d array of shape "
                f"{tuple(x.shape)}; reshape a single feature to [N, 1]"
            )
        if len(x) != len(y):
            raise ValueError(f"`{x_name}` has {len(x)} samples but `{y_name}` has {len(y)} labels")
        if len(x) == 0:
            raise ValueError(f"`{x_name}` is empty")
    if x_te is not None and tuple(x_te.shape[1:]) != tuple(x_tr.shape[1:]):
        raise ValueError(
            f"`x_test` samples have shape {tuple(x_te.shape[1:])}, but `x_train` samples have "
            f"shape {tuple(int(d) for d in x_tr.shape[1:])}"
        )


def _check_label_density(present: np.ndarray) -> None:
    """Refuse labels whose largest value implies far more classes than there are distinct labels."""
    implied = int(present.max()) + 1
    if implied > MAX_SPARSE_CLASSES and implied > MAX_LABEL_SPARSITY * len(present):
        shown = present[:10].tolist()
        raise ValueError(
            f"The labels of `y_train`/`y_test` go up to {implied - 1}, which makes {implied} classes (one network "
            f"output per label 0..{implied - 1}), but only {len(present)} distinct labels are present: "
            f"{shown}{' ...' if len(present) > 10 else ''}. Relabel them 0..{len(present) - 1}, or pass "
            f"classes={shown if len(present) <= 10 else '[...]'} to select them and relabel them 0..k-1 in that "
            "order."
        )


def _class_names(class_names: Sequence[str] | None, size: int) -> tuple[str, ...]:
    if class_names is None:
        return tuple(str(i) for i in range(size))
    if isinstance(class_names, str) or len(class_names) < size:
        raise ValueError(f"`class_names` must name every label 0..{size - 1} ({size} names), got {class_names!r}")
    return tuple(str(n) for n in class_names)


def _value_range(value_range: tuple[float, float] | None) -> tuple[float, float] | None:
    if value_range is None:
        return None
    if len(value_range) != 2 or not float(value_range[0]) < float(value_range[1]):
        raise ValueError(f"`value_range` must be (low, high) with low < high, got {value_range!r}")
    return (float(value_range[0]), float(value_range[1]))
