"""The common machinery of every data module: selection, splits, scaling, shapes, augmentation and loaders."""

from __future__ import annotations

import logging
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lightning_dnn._checks import check_bool, check_choice, check_int, check_number
from lightning_dnn._lightning import LightningDataModule
from lightning_dnn.data._augment import AugmentSpec, build_augmentation
from lightning_dnn.data._splits import remap_classes, sample_per_class, stratified_holdout
from lightning_dnn.data._validate import check_class_coverage, check_finite, finite_statistics
from lightning_dnn.loading import DeviceBatchLoader, EpochSampler, TransformDataset

__all__ = ["ClassificationDataModule", "DatasetInfo", "Split"]

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
Scaling = Literal["unit", "standardize"]
_SCALINGS = ("unit", "standardize")
_VAL_STREAM, _SUBSAMPLE_STREAM = 1, 2  # independent random streams derived from `seed`


@dataclass(frozen=True)
class DatasetInfo:
    """What a data module knows about its source before reading it.

    Args:
        name: human-readable name used in messages, e.g. ``"Fashion-MNIST"``.
        sample_shape: the shape of one sample in the source, e.g. ``(1, 28, 28)``; image sources use
            ``(C, H, W)``.
        class_names: the name of each source label, indexed by label.
        labels: the labels that exist in the source (what ``classes`` may select).
        value_range: the nominal ``(low, high)`` of the raw values (``(0, 255)`` for 8-bit pixels), used by
            ``scaling="unit"``; ``None`` means "the training split's min and max".

    Example:
        >>> info = DatasetInfo("toy", (4,), ("a", "b"), (0, 1), (0.0, 1.0))
        >>> info.num_features
        4
    """

    name: str
    sample_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    labels: tuple[int, ...]
    value_range: tuple[float, float] | None = None

    @property
    def num_features(self) -> int:
        """Number of values in one sample."""
        return math.prod(self.sample_shape)


class ClassificationDataModule(LightningDataModule, ABC):
    """Base class of the data modules: everything except reading the raw arrays.

    A subclass describes its source with a :class:`DatasetInfo` and implements :meth:`load_arrays`. This class
    does the rest, in :meth:`setup`, in this order:

    1. ``classes``: keep only the listed labels and relabel them ``0..k-1`` in the order given.
    2. ``val_split``: hold out a seeded, stratified validation set from the training split.
    3. ``samples_per_class``: keep ``N`` seeded samples of each class from what remains for training.
    4. ``scaling``: statistics from the final training split only, applied to all splits.

    It also checks the data there: NaN or inf values are refused (unless ``allow_nonfinite=True``), and so is
    a class with no training sample that the validation or test split holds (it could never be learned); a
    label with no sample in any split (a gap, as in labels ``0, 1, 3``) gets a warning.

    Loaders: by default every split is served by a :class:`DeviceBatchLoader` holding the tensors on the
    trainer's device (``trainer.strategy.root_device``; the CPU outside a trainer), sharded by
    ``trainer.global_rank``/``trainer.world_size`` under DDP (equal shares; as with ``DistributedSampler``, a
    split that does not divide evenly is padded by wrapping around, so under DDP a few validation/test samples
    may count twice). With ``augment`` the training split is served
    by a ``DataLoader`` whose dataset applies the transform per sample (validation and test stay
    device-resident); ``device_resident=False`` uses ``DataLoader``s for every split. Both paths draw the
    epoch order from the same :class:`EpochSampler`, so a given ``seed`` gives the same order either way.

    Args:
        info: the source's description (supplied by the subclass).
        batch_size: training batch size.
        eval_batch_size: batch size of the validation/test/predict loaders; default ``max(batch_size, 1000)``.
        classes: labels to keep, relabelled to ``0..k-1`` in this order (``[5, 6, 7, 8, 9]`` -> ``0..4``).
        samples_per_class: keep this many training samples of each class (seeded).
        val_split: validation set size, a fraction in ``[0, 1)`` of the training split or a sample count;
            0 means no validation set (``val_dataloader`` returns no loader); ``"test"`` validates on the test
            split without holding anything out (monitoring only, as the TF1 notebook does; don't select models
            on it).
        scaling: ``"unit"`` maps the source's value range (e.g. 0..255) to ``[0, 1]``; ``"standardize"``
            subtracts the per-feature (per-pixel) mean and divides by the per-feature standard deviation of the
            training split (features with zero deviation are divided by 1, as scikit-learn's StandardScaler
            does); ``None`` keeps the raw values.
        flatten: serve samples as vectors ``[N, F]`` (for MLPs); ``False`` keeps the source's shape, e.g.
            ``[N, 1, 28, 28]`` for convolutional nets.
        augment: ``None``, a dict of ``torchvision.transforms.v2.RandomAffine`` arguments (``{"degrees": 10,
            "translate": 0.1}``; a number for ``translate``/``scale`` means ``(t, t)``/``(1 - s, 1 + s)``) or a
            callable applied to each training sample ``[C, H, W]`` after scaling. Training split only.
        seed: seeds the validation split, the per-class sampling and the epoch orders.
        device_resident: ``None`` (automatic): device-resident loaders wherever no augmentation is applied;
            ``True``: the same, but refuse ``augment``; ``False``: ``DataLoader``s for every split.
        drop_last: drop the last incomplete training batch of an epoch (a batch of one breaks batch norm).
        num_workers: ``DataLoader`` worker processes (only for the ``DataLoader`` path).
        pin_memory: ``DataLoader`` pinned memory (only for the ``DataLoader`` path).
        allow_nonfinite: keep NaN/inf input values. By default :meth:`setup` (and :meth:`preprocess`) refuse
            them with an error naming the array (``x_train``, ``x_test``), the count and the first position: one
            NaN turns every weight NaN within a few steps. With ``True`` they are served as they are, and the
            scaling statistics use the finite values only (so they do not spread to the other values).

    Raises:
        ValueError, TypeError: for any invalid argument, naming it; in :meth:`setup`, for non-finite inputs and
            for a class that has no training sample but appears in the validation or test split.

    Example:
        >>> from lightning_dnn.data import DigitsDataModule
        >>> dm = DigitsDataModule(classes=[5, 6, 7, 8, 9], batch_size=32, val_split=0.1)
        >>> dm.num_classes, dm.class_names[:2], dm.input_shape
        (5, ['5', '6'], (64,))
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), sorted(set(y.tolist())) == list(range(5))
        ((32, 64), True)
    """

    def __init__(
        self,
        info: DatasetInfo,
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
        super().__init__()
        self.info = info
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.eval_batch_size = (
            max(batch_size, 1000)
            if eval_batch_size is None
            else check_int("eval_batch_size", eval_batch_size, low=1)
        )
        self.classes = self._check_classes(classes)
        self.samples_per_class = (
            None if samples_per_class is None else check_int("samples_per_class", samples_per_class, low=1)
        )
        self.val_split = self._check_val_split(val_split)
        self.scaling = None if scaling is None else check_choice("scaling", scaling, _SCALINGS)
        self.flatten = check_bool("flatten", flatten)
        self.seed = check_int("seed", seed, low=0)
        if device_resident is not None:
            check_bool("device_resident", device_resident)
        if device_resident is True and augment is not None:
            raise ValueError(
                "`device_resident=True` cannot be combined with `augment`: augmentation runs per sample in a "
                "DataLoader. Leave device_resident=None (validation/test stay device-resident) or drop augment."
            )
        self.device_resident = device_resident
        self.drop_last = check_bool("drop_last", drop_last)
        self.num_workers = check_int("num_workers", num_workers, low=0)
        self.pin_memory = check_bool("pin_memory", pin_memory)
        self.allow_nonfinite = check_bool("allow_nonfinite", allow_nonfinite)
        self.augment = augment
        self._transform = build_augmentation(augment, info.sample_shape)
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None
        self._shift: Tensor | None = None
        self._scale: Tensor | None = None
        self._device_cache: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}

    # ----------------------------------------------------------------------------------------------- metadata
    @property
    def num_classes(self) -> int:
        """Number of classes the model must output (``len(classes)`` after a selection)."""
        if self.classes is not None:
            return len(self.classes)
        return max(self.info.labels) + 1

    @property
    def class_names(self) -> list[str]:
        """Name of each target label ``0..num_classes-1``."""
        if self.classes is not None:
            return [self.info.class_names[c] for c in self.classes]
        return list(self.info.class_names[: self.num_classes])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one served sample: ``(num_features,)`` with ``flatten``, else the source's sample shape."""
        return (self.info.num_features,) if self.flatten else self.info.sample_shape

    @property
    def num_features(self) -> int:
        """Number of input values per sample (784 for MNIST)."""
        return self.info.num_features

    @property
    def has_random_augmentation(self) -> bool:
        """Whether the training pipeline applies random transforms (so a sample's input changes per epoch)."""
        return self._transform is not None

    # ----------------------------------------------------------------------------------------------- loading
    @abstractmethod
    def load_arrays(self) -> tuple[Any, Any, Any | None, Any | None]:
        """Read the raw source: ``(x_train, y_train, x_test, y_test)``.

        ``x`` arrays (numpy or torch) are shaped ``[N, *info.sample_shape]`` (or ``[N, num_features]``) in raw
        units, ``y`` arrays hold integer labels ``[N]``; the test pair may be ``None``.
        """

    @override
    def setup(self, stage: str | None = None) -> None:
        """Read the source once and build the splits (steps 1-4 of the class description)."""
        if self._splits is not None:
            return
        x_train, y_train, x_test, y_test = self.load_arrays()
        x_train, y_train = self._as_tensors("train", x_train, y_train)
        test = None if x_test is None or y_test is None else self._as_tensors("test", x_test, y_test)

        if self.classes is not None:
            keep, y_train = remap_classes(y_train, self.classes)
            x_train = x_train[torch.from_numpy(keep)]
            if test is not None:
                keep, y_new = remap_classes(test[1], self.classes)
                test = (test[0][torch.from_numpy(keep)], y_new)

        splits: dict[str, tuple[Tensor, np.ndarray]] = {}
        n_val = self._val_count(len(y_train))
        if n_val > 0:
            rest, held = stratified_holdout(y_train, n_val, np.random.default_rng([self.seed, _VAL_STREAM]))
            splits["val"] = (x_train[torch.from_numpy(held)], y_train[held])
            x_train, y_train = x_train[torch.from_numpy(rest)], y_train[rest]
        if self.samples_per_class is not None:
            rng = np.random.default_rng([self.seed, _SUBSAMPLE_STREAM])
            keep = sample_per_class(y_train, self.samples_per_class, self.class_names, rng)
            x_train, y_train = x_train[torch.from_numpy(keep)], y_train[keep]
        splits["train"] = (x_train, y_train)
        if test is not None:
            splits["test"] = test
        check_class_coverage(
            self.info.name,
            {name: y for name, (_, y) in splits.items()},
            self.class_names,
            self.classes if self.classes is not None else list(range(self.num_classes)),
            selected=self.classes is not None,
        )

        self._fit_scaling(x_train)
        self._splits = {name: (self._scaled(x), torch.from_numpy(y)) for name, (x, y) in splits.items()}
        log.info(
            "%s: %s", self.info.name, ", ".join(f"{name} {len(y)}" for name, (_, y) in self._splits.items())
        )

    @override
    def teardown(self, stage: str | None = None) -> None:
        """Release the device copies (the CPU splits stay, so a later fit/test does not re-read the source)."""
        self._device_cache.clear()

    def tensors(self, split: Split) -> tuple[Tensor, Tensor]:
        """The processed CPU tensors ``(x, y)`` of a split, in served shape (after :meth:`setup`).

        Example:
            >>> from lightning_dnn.data import DigitsDataModule
            >>> dm = DigitsDataModule(); dm.setup()
            >>> x, y = dm.tensors("test")
            >>> tuple(x.shape), y.dtype
            ((359, 64), torch.int64)
        """
        x, y = self._require(split)
        return self._served(x), y

    def preprocess(self, x: Any) -> Tensor:
        """Apply this module's scaling and shape to new raw inputs (e.g. images to predict on).

        Args:
            x: raw samples in source units, shaped ``[N, *info.sample_shape]`` or ``[N, num_features]``.

        Returns:
            A float32 tensor in served shape (``[N, *input_shape]``).

        Example:
            >>> import numpy as np
            >>> from lightning_dnn.data import DigitsDataModule
            >>> dm = DigitsDataModule(); dm.setup()
            >>> dm.preprocess(np.full((2, 64), 16)).amax().item()
            1.0
        """
        if self._splits is None:
            raise RuntimeError(
                "Call setup() before preprocess(): the scaling statistics come from the training split"
            )
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().cpu()
        if t.dim() < 1 or t[0].numel() != self.info.num_features:
            raise ValueError(
                f"`x` must be shaped [N, *{self.info.sample_shape}] or [N, {self.info.num_features}], "
                f"got {tuple(t.shape)}"
            )
        if not self.allow_nonfinite:
            check_finite("`x`", t)
        return self._served(self._scaled(t.reshape(len(t), *self.info.sample_shape)))

    # ----------------------------------------------------------------------------------------------- loaders
    @override
    def train_dataloader(self) -> DeviceBatchLoader | DataLoader[Any]:
        """Shuffled training batches (device-resident unless augmenting or ``device_resident=False``)."""
        return self._loader("train", train=True)

    @override
    def val_dataloader(self) -> DeviceBatchLoader | DataLoader[Any] | list[Any]:
        """Validation batches in a fixed order, or ``[]`` (no validation) when ``val_split`` is 0.

        With ``val_split="test"`` the validation loop runs on the test split (monitoring only, as the TF1 notebook
        prints test accuracy after every epoch); nothing is held out of training.
        """
        self._require("train")
        if self.val_split == "test":
            return self._loader("test", train=False)
        if self._splits is None or "val" not in self._splits:
            return []
        return self._loader("val", train=False)

    @override
    def test_dataloader(self) -> DeviceBatchLoader | DataLoader[Any]:
        """Test batches in a fixed order."""
        return self._loader("test", train=False)

    @override
    def predict_dataloader(self) -> DeviceBatchLoader | DataLoader[Any]:
        """The test split, in a fixed order (batches are ``(x, y)`` pairs)."""
        return self._loader("test", train=False)

    # ----------------------------------------------------------------------------------------------- internals
    def _check_classes(self, classes: Sequence[int] | None) -> list[int] | None:
        if classes is None:
            return None
        if isinstance(classes, str | bytes) or not isinstance(classes, Iterable):
            raise TypeError(
                f"`classes` must be a list of integer labels, got {type(classes).__name__} {classes!r}"
            )
        items = list(classes)
        if len(items) == 0:
            raise ValueError("`classes` must list at least one label, got an empty list")
        out: list[int] = []
        for c in items:
            if isinstance(c, bool) or not isinstance(c, numbers.Integral):
                raise TypeError(f"`classes` must hold integer labels, got {type(c).__name__} {c!r}")
            out.append(int(c))
        missing = [c for c in out if c not in self.info.labels]
        if missing:
            raise ValueError(
                f"`classes` contains label(s) {missing} that do not exist in {self.info.name}; existing labels: "
                f"{list(self.info.labels)}"
            )
        duplicates = sorted({c for c in out if out.count(c) > 1})
        if duplicates:
            raise ValueError(f"`classes` lists label(s) {duplicates} more than once: {out}")
        return out

    @staticmethod
    def _check_val_split(val_split: int | float | str) -> int | float | str:
        if val_split == "test":
            return "test"
        if isinstance(val_split, bool) or not isinstance(val_split, numbers.Real):
            raise TypeError(
                f"`val_split` must be a fraction in [0, 1), a sample count or 'test', got "
                f"{type(val_split).__name__} {val_split!r}"
            )
        if isinstance(val_split, numbers.Integral):
            return check_int("val_split", int(val_split), low=0)
        value = check_number("val_split", float(val_split))
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"`val_split` as a fraction must be in [0, 1), got {value!r} "
                "(pass an int for a number of samples)"
            )
        return value

    def _val_count(self, total: int) -> int:
        if isinstance(self.val_split, str):  # "test": validate on the test split, hold nothing out
            return 0
        count = round(self.val_split * total) if isinstance(self.val_split, float) else self.val_split
        if count >= total:
            raise ValueError(
                f"`val_split`={self.val_split!r} leaves no training samples: the training split has {total} "
                f"samples{' after class selection' if self.classes is not None else ''}"
            )
        return count

    def _as_tensors(self, split: str, x: Any, y: Any) -> tuple[Tensor, np.ndarray]:
        x_t = x.detach().cpu() if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        y_np = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
        y_np = y_np.reshape(-1) if y_np.ndim == 2 and 1 in y_np.shape else y_np
        if y_np.ndim != 1 or len(y_np) != len(x_t):
            raise ValueError(
                f"{self.info.name} {split}: labels must be a vector with one label per sample; got "
                f"x of shape {tuple(x_t.shape)} and labels of shape {y_np.shape}"
            )
        if x_t.dim() < 2 or x_t[0].numel() != self.info.num_features:
            raise ValueError(
                f"{self.info.name} {split}: samples must be shaped {self.info.sample_shape} "
                f"({self.info.num_features} values), got x of shape {tuple(x_t.shape)}"
            )
        if not np.issubdtype(y_np.dtype, np.integer):
            if not np.issubdtype(y_np.dtype, np.number) or not np.all(np.mod(y_np, 1) == 0):
                raise ValueError(f"{self.info.name} {split}: labels must be integers, got dtype {y_np.dtype}")
        y_np = y_np.astype(np.int64)
        if not self.allow_nonfinite:
            check_finite(f"{self.info.name} `x_{split}`", x_t)
        unknown = np.setdiff1d(np.unique(y_np), np.asarray(self.info.labels))
        if unknown.size:
            raise ValueError(
                f"{self.info.name} {split}: labels {unknown.tolist()[:10]} are not among the "
                f"declared labels {list(self.info.labels)}"
            )
        return x_t.reshape(len(x_t), *self.info.sample_shape), y_np

    def _fit_scaling(self, x_train: Tensor) -> None:
        # with allow_nonfinite, NaN/inf values (if any) are left out of the statistics
        nonfinite = self.allow_nonfinite and x_train.is_floating_point() and not bool(torch.isfinite(x_train).all())
        if self.scaling is None:
            self._shift, self._scale = None, None
        elif self.scaling == "unit":
            if self.info.value_range is not None:
                low, high = self.info.value_range
            elif nonfinite:
                low, high = (float(v) for v in finite_statistics(x_train, "unit"))
            else:
                low, high = float(x_train.min()), float(x_train.max())
            self._shift = torch.tensor(low, dtype=torch.float32)
            self._scale = torch.tensor(high - low if high > low else 1.0, dtype=torch.float32)
        else:
            if nonfinite:
                mean, std = finite_statistics(x_train, "standardize")
            else:
                x64 = x_train.to(torch.float64)
                mean = x64.mean(dim=0)
                std = x64.std(dim=0, correction=0)
            self._shift = mean.to(torch.float32)
            self._scale = torch.where(std > 0, std, torch.ones_like(std)).to(torch.float32)

    def _scaled(self, x: Tensor) -> Tensor:
        # One float32 copy (never the caller's array), then in-place arithmetic: no 2x temporaries.
        x = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        if self._shift is not None and self._scale is not None:
            if self._shift.dim() > 0 or float(self._shift) != 0.0:
                x.sub_(self._shift)
            x.div_(self._scale)
        return x

    def _served(self, x: Tensor) -> Tensor:
        return x.reshape(len(x), -1) if self.flatten else x

    def _require(self, split: str) -> tuple[Tensor, Tensor]:
        if self._splits is None:
            raise RuntimeError(f"{type(self).__name__} is not set up: call setup() first (a Trainer does it)")
        if split not in self._splits:
            if split == "test":
                raise ValueError(f"{self.info.name} has no test split: pass x_test and y_test")
            raise ValueError(f"{self.info.name} has no {split} split (val_split={self.val_split!r})")
        return self._splits[split]

    def _placement(self) -> tuple[torch.device, int, int]:
        trainer = self.trainer
        if trainer is None:
            return torch.device("cpu"), 0, 1
        return trainer.strategy.root_device, int(trainer.global_rank), int(trainer.world_size)

    def _on_device(self, split: str, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (split, str(device))
        if key not in self._device_cache:
            x, y = self._require(split)
            self._device_cache[key] = (self._served(x).to(device), y.to(device))
        return self._device_cache[key]

    def _loader(self, split: str, *, train: bool) -> DeviceBatchLoader | DataLoader[Any]:
        x, y = self._require(split)
        device, rank, world_size = self._placement()
        batch_size = self.batch_size if train else self.eval_batch_size
        drop_last = self.drop_last and train
        dataset: TransformDataset | TensorDataset
        if train and self._transform is not None:
            dataset = TransformDataset(x, y, self._transform, flatten=self.flatten)
        elif self.device_resident is False:
            dataset = TensorDataset(self._served(x), y)
        else:
            xd, yd = self._on_device(split, device)
            return DeviceBatchLoader(
                xd,
                yd,
                batch_size=batch_size,
                shuffle=train,
                drop_last=drop_last,
                seed=self.seed,
                rank=rank,
                world_size=world_size,
            )
        sampler = EpochSampler(len(dataset), shuffle=train, seed=self.seed, rank=rank, world_size=world_size)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
