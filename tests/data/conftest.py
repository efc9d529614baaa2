"""Fixtures for the data tests: IDX files and MNIST-like folders written into tmp_path."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

IDX_TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX (independently of the library's reader): magic, big-endian dims, data."""
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    code = IDX_TYPE_CODES[np.dtype(big.dtype)]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + big.tobytes(order="C")


def write_idx(path: Path, array: np.ndarray, *, gz: bool | None = None) -> Path:
    """Write ``array`` to ``path`` as IDX; gzip-compressed when ``gz`` (default: when the name ends in .gz)."""
    data = idx_bytes(array)
    if gz if gz is not None else path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def fake_mnist(n_train: int = 60, n_test: int = 20, *, seed: int = 0, offset: int = 0):
    """Random uint8 images [N, 28, 28] and balanced labels 0..9 (pixel (0, 0) holds `offset` to tag a layout)."""
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    x_train[:, 0, 0] = offset
    x_test[:, 0, 0] = offset
    y_train = (np.arange(n_train) % 10).astype(np.uint8)
    y_test = (np.arange(n_test) % 10).astype(np.uint8)
    return x_train, y_train, x_test, y_test


def write_mnist_folder(folder: Path, arrays, *, gz: bool = True) -> Path:
    """Write the four MNIST files into ``folder`` (flat), compressed or not."""
    for name, array in zip(MNIST_NAMES, arrays, strict=True):
        write_idx(folder / (name + (".gz" if gz else "")), array, gz=gz)
    return folder


@pytest.fixture(name="idx_bytes")
def idx_bytes_fixture() -> Callable[[np.ndarray], bytes]:
    return idx_bytes


@pytest.fixture
def idx_writer() -> Callable[..., Path]:
    return write_idx


@pytest.fixture
def mnist_writer() -> Callable[..., Path]:
    return write_mnist_folder


@pytest.fixture
def mnist_arrays() -> Callable[..., tuple[np.ndarray, ...]]:
    return fake_mnist


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP oversubscription on the shared 2-core test machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
