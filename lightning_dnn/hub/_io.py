"""File-level helpers for Hub-format folders: names, atomic writes, safetensors, config.json, hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The index of a sharded checkpoint: ``{"weight_map": {tensor name: shard file}}``.
INDEX_NAME = "model.safetensors.index.json"
CARD_NAME = "README.md"
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
LIBRARY_NAME = "lightning-dnn"
#: The largest config.json accepted: a config holds constructor arguments and a little metadata.
MAX_CONFIG_BYTES = 1 << 20
# Files that hold pickled weights: loading them can run arbitrary code, so we refuse them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def find_pickle_files(names: Iterable[str]) -> list[str]:
    """The names that look like pickled weight files, sorted."""
    return sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))


def unsafe_weights_message(where: str, pickles: list[str]) -> str:
    return (
        f"{where} has no {WEIGHTS_NAME}, only pickle weight files {pickles}. lightning-dnn never unpickles "
        "weights (a pickle can run arbitrary code when loaded); ask the publisher for safetensors, or convert "
        "a file you trust yourself with torch.load(...) and safetensors.torch.save_file(...)."
    )


def tensors_for_saving(net: nn.Module) -> dict[str, Tensor]:
    """``net.state_dict()`` as detached, contiguous CPU tensors that safetensors accepts.

    safetensors refuses tensors that share memory (tied weights, views of one buffer); each name gets its own
    copy here, so every name loads back by itself.
    """
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, value in net.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen or storage.nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
            storage = tensor.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
        if tensor.numel() > 0:
            seen.add(key)
        out[name] = tensor
    return out


def write_safetensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    save_file(dict(tensors), str(path), metadata={"format": "pt", "library": LIBRARY_NAME})
    _fsync_path(path)


def write_text(text: str, path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_folder_atomically(directory: Path, writers: Mapping[str, Callable[[Path], None]]) -> Path:
    """Write files into ``directory`` so that a crash never leaves a half-written folder that loads.

    Everything is written into a fresh folder next to ``directory`` first. A missing or empty ``directory`` is
    then replaced by that folder in one rename. Otherwise ``config.json`` (which every load needs) is removed
    first and moved in last, so a folder caught in the middle does not load; other files in ``directory`` are
    kept. The files are moved in the order of ``writers`` with ``config.json`` last.
    """
    directory = Path(directory).absolute()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"`directory` {str(directory)!r} exists and is not a directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()  # default permissions (mkdtemp would make it private)
    try:
        for name, write in writers.items():
            write(staging / name)
        if not directory.exists() or not any(directory.iterdir()):
            try:
                os.replace(staging, directory)
                _fsync_dir(directory.parent)
                return directory
            except OSError:
                pass  # e.g. created concurrently: fall back to moving file by file
        (directory / CONFIG_NAME).unlink(missing_ok=True)
        order = [n for n in writers if n != CONFIG_NAME] + [n for n in writers if n == CONFIG_NAME]
        for name in order:
            os.replace(staging / name, directory / name)
        _fsync_dir(directory)
        return directory
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object of at most :data:`MAX_CONFIG_BYTES` (any library's ``config.json``).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for a file that is too big, not UTF-8, not JSON, nested too deeply or not an object.
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{str(path)!r} not found: a lightning-dnn folder holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME} "
            "(written by lightning_dnn.hub.save_pretrained)"
        ) from None
    if size > MAX_CONFIG_BYTES:
        raise ValueError(
            f"{str(path)!r} is {size} bytes; a lightning-dnn {CONFIG_NAME} holds a few KB (the limit is "
            f"{MAX_CONFIG_BYTES} bytes). Is it the right file?"
        )
    try:
        document = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{str(path)!r} is not UTF-8 text, so not a JSON config: {err}") from None
    except RecursionError:
        raise ValueError(f"{str(path)!r} is nested too deeply to be a lightning-dnn config") from None
    except ValueError as err:  # json.JSONDecodeError, and integers too long to convert
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(document).__name__}")
    return document


def is_ours(document: Mapping[str, Any]) -> bool:
    """Whether a config document was written by lightning-dnn (its ``library`` key)."""
    return document.get("library") == LIBRARY_NAME


def read_config(path: Path) -> dict[str, Any]:
    """Read and check a lightning-dnn ``config.json`` (at most :data:`MAX_CONFIG_BYTES`, UTF-8 JSON, its keys).

    Two kinds: a registered architecture (``architecture`` + ``config``) or any network (``class_path``, a
    dotted class path or null, + ``init_args``, a JSON object or null).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for a file that is too big, not UTF-8, not JSON, nested too deeply, or lacks what a
            lightning-dnn config holds; the message names the file.
    """
    document = read_json(path)
    library = document.get("library")
    if library != LIBRARY_NAME:
        raise ValueError(
            f"{str(path)!r} is not a lightning-dnn config (its 'library' is {library!r:.100}, expected {LIBRARY_NAME!r})"
        )
    kinds: tuple[tuple[str, type | tuple[type, ...]], ...] = (("architecture", str), ("config", dict))
    if "class_path" in document:
        kinds = (("architecture", str), ("class_path", (str, type(None))), ("init_args", (dict, type(None))))
    for key, kind in kinds:
        if not isinstance(document.get(key), kind):
            expected = kind.__name__ if isinstance(kind, type) else f"{kind[0].__name__} or null"
            raise ValueError(
                f"{str(path)!r} must have {key!r} as a JSON {expected}, got {document.get(key)!r:.200}"
            )
    metadata = document.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{str(path)!r} must have 'metadata' as a JSON object, got {metadata!r:.200}")
    return document


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def device_of(map_location: str | torch.device) -> torch.device:
    if not isinstance(map_location, str | torch.device):
        raise TypeError(
            f"`map_location` must be a device string or torch.device, got {type(map_location).__name__} "
            f"{map_location!r}"
        )
    try:
        return torch.device(map_location)
    except RuntimeError as err:
        raise ValueError(f"`map_location`={map_location!r} is not a valid device: {err}") from None


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    try:
        _fsync_path(path)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the renames are still atomic
