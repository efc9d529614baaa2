"""The strict IDX reader against files written by an independent encoder (conftest.idx_bytes)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from lightning_dnn.data import IDXFormatError, read_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 7], dtype=np.int8),
        np.array([[-300, 2], [5, 30000]], dtype=np.int16),
        np.array([1 << 20, -5], dtype=np.int32),
        np.array([0.5, -1.25, 3e8], dtype=np.float32),
        np.array([[np.pi]], dtype=np.float64),
    ],
    ids=["uint8-3d", "int8", "int16", "int32", "float32", "float64"],
)
def test_round_trip_every_idx_type(tmp_path, idx_writer, array, gz):
    path = idx_writer(tmp_path / "file-idx", array, gz=gz)
    out = read_idx(path)
    assert out.shape == array.shape
    assert out.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_compression_is_detected_from_content_not_name(tmp_path, idx_writer):
    array = np.arange(10, dtype=np.uint8)
    compressed_without_suffix = idx_writer(tmp_path / "labels-idx1-ubyte", array, gz=True)
    raw_with_suffix = idx_writer(tmp_path / "labels-idx1-ubyte.gz", array, gz=False)
    np.testing.assert_array_equal(read_idx(compressed_without_suffix), array)
    np.testing.assert_array_equal(read_idx(raw_with_suffix), array)


def test_known_header_bytes(tmp_path):
    # MNIST label file header: 0x00000801, then the count; written by hand, not by the fixture encoder.
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">II", 0x00000801, 4) + bytes([7, 2, 1, 0]))
    np.testing.assert_array_equal(read_idx(path), [7, 2, 1, 0])


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic number 01 00 08 01"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "element type"),
        (b"PK\x03\x04" + b"\x00" * 20, "not an IDX file"),
        (b"\x00\x00", "only 2 bytes"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "header announces 3 dimensions"),
    ],
    ids=["nonzero-first-byte", "unknown-type", "zip-file", "too-short", "zero-dims", "truncated-header"],
)
def test_malformed_headers_raise(tmp_path, content, match):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(IDXFormatError, match=match):
        read_idx(path)


def test_truncated_data_raises_with_sizes(tmp_path, idx_bytes):
    data = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data[:-10])
    with pytest.raises(
        IDXFormatError, match=r"truncated: a uint8 array of shape \(3, 28, 28\) needs 2368 bytes"
    ):
        read_idx(path)
    path.write_bytes(data + b"\x00")
    with pytest.raises(IDXFormatError, match="longer than its header says"):
        read_idx(path)


def test_truncated_gzip_raises(tmp_path, idx_bytes):
    compressed = gzip.compress(idx_bytes(np.arange(5000, dtype=np.int32)))
    path = tmp_path / "file.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(IDXFormatError, match="gzip-compressed but cannot be decompressed"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")
