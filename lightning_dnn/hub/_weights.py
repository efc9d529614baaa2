"""Where a source's tensors live: one ``model.safetensors``, a sharded index, or a single ``.safetensors`` file.

Package-internal. :func:`weight_files` names the files (an index's ``weight_map`` is read and checked: shard
names are plain file names next to the index, never paths); :func:`read_headers` and :func:`load_all` check and
read them through :mod:`~lightning_dnn.hub._safetensors` (never pickle).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightning_dnn.hub._io import INDEX_NAME, MAX_CONFIG_BYTES, WEIGHTS_NAME
from lightning_dnn.hub._safetensors import SafetensorsHeader, load_weights, read_header
from lightning_dnn.hub.errors import WeightsFileError

__all__ = ["load_all", "read_headers", "read_index", "weight_files"]

SUFFIX = ".safetensors"


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of ``path``: the file itself, a folder's ``model.safetensors``, or its index's shards.

    Raises:
        FileNotFoundError: if the folder has neither ``model.safetensors`` nor ``model.safetensors.index.json``.
        WeightsFileError: for an index that is not valid (see :func:`read_index`).
    """
    if path.is_file():
        return [path]
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    if (path / INDEX_NAME).is_file():
        return [path / name for name in read_index(path / INDEX_NAME)]
    raise FileNotFoundError(f"Folder {str(path)!r} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")


def read_index(path: Path) -> list[str]:
    """The shard file names of a ``model.safetensors.index.json``, in first-use order.

    Raises:
        WeightsFileError: for a file that is too big, not JSON, lacks ``weight_map`` (name -> shard file), or
            names a shard that is not a plain ``*.safetensors`` file name in the same folder.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     index = Path(tmp) / "model.safetensors.index.json"
        ...     _ = index.write_text('{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}')
        ...     read_index(index)
        ['m-1.safetensors', 'm-2.safetensors']
    """
    fix = "Write it as huggingface_hub's save_torch_state_dict does, or load one shard as a single file."
    if path.stat().st_size > MAX_CONFIG_BYTES * 64:
        raise WeightsFileError(
            f"Index {str(path)!r} is {path.stat().st_size} bytes, too big for an index. {fix}", str(path)
        )
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise WeightsFileError(f"Index {str(path)!r} is not valid JSON ({err}). {fix}", str(path)) from None
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsFileError(
            f"Index {str(path)!r} must hold a non-empty 'weight_map' object (tensor name -> shard file), "
            f"got {weight_map!r:.200}. {fix}",
            str(path),
        )
    shards: list[str] = []
    for name, shard in weight_map.items():
        if (
            not isinstance(shard, str)
            or Path(shard).name != shard
            or shard in ("", ".", "..")
            or not shard.endswith(SUFFIX)
        ):
            raise WeightsFileError(
                f"Index {str(path)!r}: tensor {name!r} maps to {shard!r:.200}; expected a plain '*{SUFFIX}' file "
                f"name in the index's folder. {fix}",
                str(path),
            )
        if shard not in shards:
            shards.append(shard)
    return shards


def read_headers(files: Sequence[Path], source: str | None) -> SafetensorsHeader:
    """Check every file's header; return one header describing all of them together.

    Raises:
        FileNotFoundError: for a missing shard.
        WeightsFileError: for a name held by two files, and see :func:`~lightning_dnn.hub._safetensors.read_header`.
    """
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    numel = data_bytes = 0
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(
                f"Shard {str(path)!r} named by {INDEX_NAME} does not exist (source: {source})"
            )
        header = read_header(path, source)
        twice = sorted(set(header.tensors) & set(tensors))
        if twice:
            raise WeightsFileError(
                f"{str(path)!r} holds tensor(s) {twice[:5]} that an earlier shard holds too; each name must live in "
                "one shard.",
                str(path),
            )
        tensors.update(header.tensors)
        numel += header.numel
        data_bytes += header.data_bytes
    return SafetensorsHeader(tensors, numel, data_bytes)


def load_all(files: Sequence[Path], device: torch.device, source: str | None) -> dict[str, Tensor]:
    """Read every tensor of ``files`` onto ``device`` (headers checked first, by :func:`read_headers`)."""
    read_headers(files, source)
    out: dict[str, Tensor] = {}
    for path in files:
        out.update(load_weights(path, device, source))
    return out
