"""MNIST and Fashion-MNIST from the files a user already has, or through torchvision's download."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lightning_dnn._checks import check_bool
from lightning_dnn.data._augment import AugmentSpec
from lightning_dnn.data.base import ClassificationDataModule, DatasetInfo, Scaling
from lightning_dnn.data.idx import IDXFormatError, read_idx

__all__ = ["FashionMNISTDataModule", "MNISTDataModule"]

log = logging.getLogger(__name__)

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IMAGE_SIZE = 28


class MNISTDataModule(ClassificationDataModule):
    """MNIST handwritten digits (60,000 training and 10,000 test images, 28x28, pixel values 0..255).

    The files are looked for under ``root`` in this order; the first complete set wins:

    1. the four original IDX files directly in ``root`` (``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte``,
       each gzip-compressed ``.gz`` or already decompressed), the layout of Debian's dataset packages;
    2. torchvision's layout ``root/MNIST/raw/`` with the same four files;
    3. the chapter's ``root/mnist-original.mat`` (or ``root/mldata/mnist-original.mat``, scikit-learn's old
       ``fetch_mldata`` cache): ``data`` ``[784, 70000]`` and ``label`` ``[1, 70000]``, the first 60,000
       columns being the training set and the rest the test set (read with scipy);
    4. with ``download=True``, ``torchvision.datasets.MNIST(root, download=True)`` fetches the files into
       layout 2 (in ``prepare_data``, which Lightning runs on one process per node).

    Args:
        root: the folder to search (and to download into); default ``./data``.
        download: download with torchvision when no files are found.
        batch_size, eval_batch_size, classes, samples_per_class, val_split, scaling, flatten, augment, seed,
            device_resident, drop_last, num_workers, pin_memory, allow_nonfinite: see
            :class:`ClassificationDataModule`
            (``scaling="unit"`` divides by 255; ``flatten=False`` serves ``[N, 1, 28, 28]``).

    Raises:
        FileNotFoundError: (in ``setup``) no files found and ``download=False``; the message lists the paths
            looked for and how to get the files.
        IDXFormatError: a file is not valid IDX, is truncated, or images and labels disagree.

    Example:
        >>> dm = MNISTDataModule(root="no/such/folder", download=False, classes=[5, 6, 7, 8, 9])
        >>> dm.num_classes, dm.class_names, dm.input_shape
        (5, ['5', '6', '7', '8', '9'], (784,))
    """

    INFO: ClassVar[DatasetInfo] = DatasetInfo(
        name="MNIST",
        sample_shape=(1, _IMAGE_SIZE, _IMAGE_SIZE),
        class_names=tuple(str(d) for d in range(10)),
        labels=tuple(range(10)),
        value_range=(0.0, 255.0),
    )
    TORCHVISION_FOLDER: ClassVar[str] = "MNIST"
    MAT_FILES: ClassVar[tuple[str, ...]] = ("mnist-original.mat", "mldata/mnist-original.mat")
    MAT_TRAIN_SIZE: ClassVar[int] = 60_000
    SYSTEM_ROOT: ClassVar[str | None] = None
    INSTALL_HINT: ClassVar[str] = ""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        download: bool = True,
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
            self.INFO,
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
        if root is not None and not isinstance(root, str | os.PathLike):
            raise TypeError(f"`root` must be a path, got {type(root).__name__} {root!r}")
        check_bool("download", download)
        self.root = Path(root) if root is not None else self.default_root()
        self.download = download
        self.save_hyperparameters()

    @classmethod
    def default_root(cls) -> Path:
        """``SYSTEM_ROOT`` (a system-wide copy, e.g. Debian's) when that folder exists, else ``./data``.

        Example:
            >>> MNISTDataModule.default_root()
            PosixPath('data')
        """
        if cls.SYSTEM_ROOT is not None and Path(cls.SYSTEM_ROOT).is_dir():
            return Path(cls.SYSTEM_ROOT)
        return Path("data")

    # ------------------------------------------------------------------------------------------- discovery
    def _idx_folders(self) -> list[Path]:
        return [self.root, self.root / self.TORCHVISION_FOLDER / "raw"]

    def locate(self) -> tuple[str, tuple[Path, ...]] | None:
        """The files that :meth:`setup` will read: ``("idx", four paths)`` or ``("mat", (path,))``, or ``None``.

        Example:
            >>> MNISTDataModule(root="no/such/folder").locate() is None
            True
        """
        for folder in self._idx_folders():
            found = []
            for name in IDX_FILES:
                candidates = [folder / name, folder / f"{name}.gz"]
                hit = next((p for p in candidates if p.is_file()), None)
                if hit is None:
                    break
                found.append(hit)
            else:
                return "idx", tuple(found)
        for name in self.MAT_FILES:
            if (self.root / name).is_file():
                return "mat", (self.root / name,)
        return None

    def _missing_error(self) -> FileNotFoundError:
        names = "{" + ", ".join(IDX_FILES) + "}[.gz]"
        looked = [f"{folder}/{names}" for folder in self._idx_folders()]
        looked += [str(self.root / name) for name in self.MAT_FILES]
        state = "" if self.root.is_dir() else " (the folder does not exist)"
        hints = [self.INSTALL_HINT] if self.INSTALL_HINT else []
        hints.append(f"pass download=True to let torchvision download them into '{self.root}'")
        return FileNotFoundError(
            f"No {self.INFO.name} files found under '{self.root}'{state}. Looked for: "
            + "; ".join(looked)
            + ". To get them: "
            + ", or ".join(hints)
            + "."
        )

    # ------------------------------------------------------------------------------------------- loading
    def _torchvision_dataset(self) -> Any:
        from torchvision import datasets

        return datasets.MNIST

    def prepare_data(self) -> None:
        """Download with torchvision when ``download=True`` and no files are found (one process per node)."""
        if not self.download or self.locate() is not None:
            return
        dataset_cls = self._torchvision_dataset()
        log.info("No %s files under '%s': downloading with torchvision", self.INFO.name, self.root)
        try:
            dataset_cls(str(self.root), train=True, download=True)
        except (RuntimeError, OSError) as err:
            hint = f" Offline? {self.INSTALL_HINT}." if self.INSTALL_HINT else ""
            raise RuntimeError(
                f"Downloading {self.INFO.name} with torchvision into '{self.root}' failed: {err}.{hint} "
                f"Or put the four IDX files into '{self.root}' and pass download=False."
            ) from err

    def load_arrays(self) -> tuple[Any, Any, Any | None, Any | None]:
        """Find the files (downloading them if allowed) and read the training and test splits."""
        found = self.locate()
        if found is None and self.download:
            self.prepare_data()
            found = self.locate()
        if found is None:
            raise self._missing_error()
        kind, paths = found
        log.info("Reading %s from %s", self.INFO.name, ", ".join(str(p) for p in paths))
        if kind == "mat":
            return self._read_mat(paths[0])
        x_train, y_train = _read_idx_pair(paths[0], paths[1])
        x_test, y_test = _read_idx_pair(paths[2], paths[3])
        return x_train, y_train, x_test, y_test

    def _read_mat(self, path: Path) -> tuple[Any, Any, Any, Any]:
        try:
            from scipy.io import loadmat
        except ImportError as err:  # pragma: no cover - scipy comes with scikit-learn
            raise ImportError(f"Reading '{path}' needs scipy: pip install scipy") from err
        try:
            content = loadmat(str(path))
        except (ValueError, OSError, TypeError) as err:
            raise ValueError(f"'{path}' is not a readable MATLAB file: {err}") from err
        missing = [k for k in ("data", "label") if k not in content]
        if missing:
            found = sorted(k for k in content if not k.startswith("__"))
            raise ValueError(
                f"'{path}' lacks the variable(s) {missing}; a mnist-original.mat holds 'data' "
                f"[784, 70000] and 'label' [1, 70000], this file has {found}"
            )
        data, label = np.asarray(content["data"]), np.asarray(content["label"]).reshape(-1)
        pixels = _IMAGE_SIZE * _IMAGE_SIZE
        if data.ndim != 2 or data.shape[0] != pixels or data.shape[1] != len(label):
            raise ValueError(
                f"'{path}': expected 'data' of shape [{pixels}, N] and 'label' of N values, got "
                f"{data.shape} and {len(label)} labels"
            )
        if data.shape[1] <= self.MAT_TRAIN_SIZE:
            raise ValueError(
                f"'{path}' holds {data.shape[1]} images; expected the first {self.MAT_TRAIN_SIZE} "
                "for training followed by the test images"
            )
        images = np.ascontiguousarray(data.T).reshape(-1, 1, _IMAGE_SIZE, _IMAGE_SIZE)
        cut = self.MAT_TRAIN_SIZE
        return images[:cut], label[:cut], images[cut:], label[cut:]


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: 60,000 training and 10,000 test 28x28 grey images of 10 kinds of clothing.

    Same options and file discovery as :class:`MNISTDataModule` (torchvision layout ``root/FashionMNIST/raw``;
    there is no ``.mat`` form). The default ``root`` is ``/usr/share/datasets/fashion-mnist`` (Debian's
    ``dataset-fashion-mnist`` package) when that folder exists, else ``./data``.

    Example:
        >>> dm = FashionMNISTDataModule(classes=[0, 9], flatten=False)
        >>> dm.class_names, dm.num_classes, dm.input_shape
        (['T-shirt/top', 'Ankle boot'], 2, (1, 28, 28))
    """

    INFO: ClassVar[DatasetInfo] = DatasetInfo(
        name="Fashion-MNIST",
        sample_shape=(1, _IMAGE_SIZE, _IMAGE_SIZE),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        labels=tuple(range(10)),
        value_range=(0.0, 255.0),
    )
    TORCHVISION_FOLDER: ClassVar[str] = "FashionMNIST"
    MAT_FILES: ClassVar[tuple[str, ...]] = ()
    SYSTEM_ROOT: ClassVar[str | None] = "/usr/share/datasets/fashion-mnist"
    INSTALL_HINT: ClassVar[str] = (
        "install Debian's package (`apt-get install dataset-fashion-mnist`, files in "
        "/usr/share/datasets/fashion-mnist)"
    )

    def _torchvision_dataset(self) -> Any:
        from torchvision import datasets

        return datasets.FashionMNIST


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file and its label file and check that they belong together."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (_IMAGE_SIZE, _IMAGE_SIZE) or images.dtype != np.uint8:
        raise IDXFormatError(
            f"'{images_path}' should hold uint8 images [N, 28, 28], got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IDXFormatError(
            f"'{labels_path}' should hold uint8 labels [N], got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise IDXFormatError(
            f"Image/label count mismatch: '{images_path}' has {len(images)} images but "
            f"'{labels_path}' has {len(labels)} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise IDXFormatError(f"'{labels_path}' holds label {int(labels.max())}; MNIST labels are 0..9")
    return images.reshape(-1, 1, _IMAGE_SIZE, _IMAGE_SIZE), labels
