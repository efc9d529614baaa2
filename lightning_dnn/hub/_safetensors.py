"""Read ``model.safetensors`` defensively: the header is checked before any tensor is read, nothing is unpickled.

:func:`read_header` reads the 8-byte length and the JSON header only (at most :data:`MAX_HEADER_BYTES`), and checks
every tensor's dtype, shape and byte range against the file's size, so an empty, truncated or foreign file, or a
header that claims gigabytes the file does not hold, is refused without reading the data. A pickle or a
``torch.save`` archive saved under the name is recognised by its first bytes and refused as unsafe.
:func:`load_weights` then reads the tensors through safetensors, with its errors turned into ours.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from lightning_dnn.hub.errors import UnsafeWeightsError, WeightsFileError

__all__ = ["MAX_HEADER_BYTES", "SafetensorsHeader", "load_weights", "read_header"]

#: The largest header accepted (safetensors' own limit): a header lists names, dtypes, shapes and offsets.
MAX_HEADER_BYTES = 100_000_000
# Bits per element of each dtype the safetensors format defines.
_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}
_FIX = "Save the network again with lightning_dnn.hub.save_pretrained, or fetch the file again from where it came from."


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a checked header says, before any tensor is read.

    Attributes:
        tensors: name -> ``(dtype, shape)``, the dtype as the format spells it (``"F32"``, ``"I64"``).
        numel: the number of elements of all tensors together.
        data_bytes: the bytes of tensor data the header describes.
    """

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    numel: int
    data_bytes: int


def read_header(path: Path, source: str | None = None) -> SafetensorsHeader:
    """Read and check the header of the safetensors file ``path``; the tensors are not read.

    Args:
        path: the file.
        source: where the file comes from, for messages (e.g. ``"hf://org/name@main"``).

    Returns:
        the :class:`SafetensorsHeader`.

    Raises:
        UnsafeWeightsError: if the file is a pickle or a ``torch.save`` archive under the safetensors name.
        WeightsFileError: if it is empty, truncated, or its header is not a valid safetensors header.

    Example:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_file({"w": torch.zeros(2, 3), "n": torch.zeros((), dtype=torch.int64)}, f"{tmp}/m.safetensors")
        ...     header = read_header(Path(tmp) / "m.safetensors")
        >>> header.tensors["w"], header.numel, header.data_bytes
        (('F32', (2, 3)), 7, 32)
    """
    where = _where(path, source)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
        if head[8:9] != b"{":  # a safetensors header is a JSON object right after the 8-byte length
            _refuse_pickles(head, where, path)
        f.seek(8)
        head = head[:8]
        if size == 0:
            raise WeightsFileError(
                f"{where} is empty (0 bytes); expected a safetensors file. {_FIX}", str(path)
            )
        if size < 8:
            raise WeightsFileError(
                f"{where} is {size} bytes, shorter than the 8-byte header length a safetensors file starts with. "
                f"{_FIX}",
                str(path),
            )
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise WeightsFileError(
                f"{where} is truncated or not a safetensors file: its header length field says {length} bytes, "
                f"but only {size - 8} bytes follow it. {_FIX}",
                str(path),
            )
        if length > MAX_HEADER_BYTES:
            raise WeightsFileError(
                f"{where} claims a header of {length} bytes, over the {MAX_HEADER_BYTES} byte limit of the "
                f"safetensors format (a header only lists names, dtypes, shapes and offsets). {_FIX}",
                str(path),
            )
        raw = f.read(length)
    header = _parse(raw, where, path)
    tensors, numel, data_bytes = _check_entries(header, where, path)
    available = size - 8 - length
    if data_bytes > available:
        raise WeightsFileError(
            f"{where} is truncated: its header describes {data_bytes} bytes of tensor data, but the file holds "
            f"{available} bytes after the header. {_FIX}",
            str(path),
        )
    return SafetensorsHeader(tensors, numel, data_bytes)


def load_weights(path: Path, device: torch.device, source: str | None = None) -> dict[str, Tensor]:
    """Check the header (:func:`read_header`), then read every tensor onto ``device``.

    Raises:
        UnsafeWeightsError, WeightsFileError: see :func:`read_header`; a file safetensors still refuses raises
            WeightsFileError with safetensors' reason.
    """
    read_header(path, source)
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise WeightsFileError(
            f"{_where(path, source)} is not a valid safetensors file: {err}. {_FIX}", str(path)
        ) from err


def _where(path: Path, source: str | None) -> str:
    return f"Weights file {str(path)!r}" + (f" from {source}" if source else "")


def _refuse_pickles(head: bytes, where: str, path: Path) -> None:
    if head.startswith(b"PK\x03\x04"):
        kind = "a zip archive (what torch.save writes)"
    elif len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        kind = "a pickle (what legacy torch.save and pickle.dump write)"
    else:
        return
    raise UnsafeWeightsError(
        f"{where} is named like a safetensors file but is {kind}. lightning-dnn never unpickles weights (a pickle "
        "can run arbitrary code when loaded). If you trust the file, convert it yourself: "
        "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors').",
        [path.name],
    )


def _parse(raw: bytes, where: str, path: Path) -> dict[str, object]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise WeightsFileError(
            f"{where} is not a safetensors file: its header is not valid JSON ({type(err).__name__}: {err}). {_FIX}",
            str(path),
        ) from None
    if not isinstance(header, dict):
        raise WeightsFileError(
            f"{where} is not a safetensors file: its header must be a JSON object, got {type(header).__name__}. "
            f"{_FIX}",
            str(path),
        )
    return header


def _check_entries(
    header: dict[str, object], where: str, path: Path
) -> tuple[dict[str, tuple[str, tuple[int, ...]]], int, int]:
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    numel = data_bytes = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _entry_fields(name, entry, where, path)
        count = math.prod(shape)
        needed = count * _BITS[dtype]
        if needed % 8 or end - begin != needed // 8:
            raise WeightsFileError(
                f"{where}: tensor {name!r} ({dtype}, shape {list(shape)}) needs {needed / 8:g} bytes, but its "
                f"data_offsets [{begin}, {end}] hold {end - begin}. {_FIX}",
                str(path),
            )
        tensors[name] = (dtype, shape)
        numel += count
        data_bytes = max(data_bytes, end)
    return tensors, numel, data_bytes


def _entry_fields(name: str, entry: object, where: str, path: Path) -> tuple[str, tuple[int, ...], int, int]:
    def bad(what: str) -> WeightsFileError:
        return WeightsFileError(
            f"{where}: header entry {name!r} {what}; got {entry!r:.200}. {_FIX}", str(path)
        )

    if not isinstance(entry, dict):
        raise bad("must be an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _BITS:
        raise bad(f"has an unknown dtype (known: {', '.join(_BITS)})")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise bad("must have a shape that is a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_natural(o) for o in offsets)):
        raise bad("must have data_offsets [begin, end] of non-negative integers")
    begin, end = offsets
    if begin > end:
        raise bad("has data_offsets that end before they begin")
    return dtype, tuple(shape), begin, end


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
