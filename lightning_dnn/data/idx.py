"""A small, strict reader for the IDX format of the original MNIST / Fashion-MNIST files.

An IDX file is a 4-byte magic number ``00 00 TT DD`` (``TT``: element type, ``DD``: number of dimensions), the
``DD`` dimension sizes as big-endian uint32, then the elements in C order, big-endian
(http://yann.lecun.com/exdb/mnist/). Files may be gzip-compressed; compression is detected from the content
(the gzip magic ``1f 8b``), not from the file name.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDXFormatError", "read_idx"]

# IDX element type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class IDXFormatError(ValueError):
    """Raised when a file is not a well-formed IDX file (wrong magic number, bad header, wrong length).

    Example:
        >>> issubclass(IDXFormatError, ValueError)
        True
    """


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into a numpy array.

    The reader is strict: the first two bytes must be zero, the type code must be one of the six IDX types
    (uint8, int8, int16, int32, float32, float64) and the file must hold exactly the number of elements its
    header announces, so a truncated download or a file of another format fails loudly instead of producing
    garbage images.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz`` or its decompressed form.

    Returns:
        An array of the shape given in the header, in native byte order (``uint8`` for MNIST images and labels).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IDXFormatError: the content is not a valid IDX file (the message says what is wrong).

    Example:
        >>> import struct, tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "labels-idx1-ubyte"
        ...     _ = path.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 3) + bytes([7, 2, 1]))
        ...     read_idx(path)
        array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: '{path}'")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise IDXFormatError(
                f"'{path}' looks gzip-compressed but cannot be decompressed ({err}); "
                "the file is probably truncated or corrupt: download it again"
            ) from err
    if len(data) < 4:
        raise IDXFormatError(
            f"'{path}' is not an IDX file: it has only {len(data)} bytes, "
            "shorter than the 4-byte magic number"
        )
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise IDXFormatError(
            f"'{path}' is not an IDX file: magic number {data[:4].hex(' ')} does not have the form "
            f"00 00 TT DD with an element type TT in {{{valid}}}"
        )
    if ndim == 0:
        raise IDXFormatError(f"'{path}' is not a valid IDX file: its header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IDXFormatError(
            f"'{path}' is truncated: the header announces {ndim} dimensions "
            f"({header_size} header bytes) but the file has only {len(data)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise IDXFormatError(
            f"'{path}' is {problem}: a {dtype.name} array of shape {shape} needs {expected} bytes "
            f"(after decompression), found {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)
