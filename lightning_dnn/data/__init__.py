"""Data modules for MNIST, Fashion-MNIST, scikit-learn's digits and in-memory arrays, with device-resident loading.

Every module shares the options of :class:`ClassificationDataModule` (class selection and relabelling, N samples
per class, validation split, scaling, flattening, augmentation) and serves batches with a
:class:`DeviceBatchLoader` that keeps the data on the training device.
"""

from lightning_dnn.data.arrays import ArrayDataModule
from lightning_dnn.data.base import ClassificationDataModule, DatasetInfo
from lightning_dnn.data.digits import DigitsDataModule
from lightning_dnn.data.idx import IDXFormatError, read_idx
from lightning_dnn.data.mnist import FashionMNISTDataModule, MNISTDataModule
from lightning_dnn.loading import DeviceBatchLoader, EpochSampler

__all__ = [
    "ArrayDataModule",
    "ClassificationDataModule",
    "DatasetInfo",
    "DeviceBatchLoader",
    "DigitsDataModule",
    "EpochSampler",
    "FashionMNISTDataModule",
    "IDXFormatError",
    "MNISTDataModule",
    "read_idx",
]
