"""scikit-learn's 8x8 handwritten digits: the embedded, always-offline data set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_dnn.data._augment import AugmentSpec
from lightning_dnn.data._splits import stratified_holdout
from lightning_dnn.data.base import ClassificationDataModule, DatasetInfo, Scaling

__all__ = ["DigitsDataModule"]

TEST_FRACTION = 0.2
_TEST_SPLIT_SEED = 0  # fixed: the test set does not depend on `seed`, so runs with different seeds compare

_INFO = DatasetInfo(
    name="digits",
    sample_shape=(1, 8, 8),
    class_names=tuple(str(d) for d in range(10)),
    labels=tuple(range(10)),
    value_range=(0.0, 16.0),
)


class DigitsDataModule(ClassificationDataModule):
    """The 1,797 8x8 digit images of ``sklearn.datasets.load_digits`` (pixel values 0..16).

    It ships with scikit-learn, so it works offline and loads in milliseconds: the default data set for
    examples and tests. The source has no test split; this module holds out a fixed, stratified 20%
    (359 images, always the same ones whatever ``seed`` is) as the test split; the remaining 1,438 form the
    training split, from which ``val_split`` takes the validation set.

    Args:
        batch_size, eval_batch_size, classes, samples_per_class, val_split, scaling, flatten, augment, seed,
            device_resident, drop_last, num_workers, pin_memory, allow_nonfinite: see
            :class:`ClassificationDataModule`
            (``scaling="unit"`` divides by 16).

    Example:
        >>> dm = DigitsDataModule(flatten=False)
        >>> dm.setup()
        >>> x, y = dm.tensors("train")
        >>> tuple(x.shape), dm.input_shape, float(x.max())
        ((1438, 1, 8, 8), (1, 8, 8), 1.0)
    """

    def __init__(
        self,
        *,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        classes: Sequence[int] | None = None,
        samples_per_class: int | None = None,
        val_split: int | float | str = 0.0,
        scaling: Scaling | None = "unit",
        flatten: bool = True,
        augment: AugmentSpec | None = None,
        seed: int = 0,
        device_resident: bool | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        allow_nonfinite: bool = False,
    ) -> None:
        super().__init__(
            _INFO,
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
        self.save_hyperparameters()

    def load_arrays(self) -> tuple[Any, Any, Any | None, Any | None]:
        """``load_digits`` split into the fixed training and test parts."""
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = np.asarray(bunch.data, dtype=np.float32).reshape(-1, *_INFO.sample_shape)
        y = np.asarray(bunch.target, dtype=np.int64)
        n_test = round(TEST_FRACTION * len(y))
        train, test = stratified_holdout(y, n_test, np.random.default_rng(_TEST_SPLIT_SEED))
        return x[train], y[train], x[test], y[test]
