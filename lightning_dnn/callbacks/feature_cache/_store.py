"""The cache's storage, :class:`FeatureStore`, and :func:`tensor_digest`, the hash behind its fingerprints.

Features live in device memory, page-locked host memory or ``.npy`` memory maps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FORMAT_VERSION",
    "FeatureStore",
    "StorageKind",
    "choose_storage",
    "host_memory_available",
    "tensor_digest",
]

log = logging.getLogger(__name__)

StorageKind = Literal["device", "pinned", "disk"]
FORMAT_VERSION = 1
_CHUNK = 1 << 20  # 32-bit words per hashed chunk
_MIX = 0x5851F42D4C957F2D  # odd multiplier chaining the chunk sums
_WEIGHTS: dict[str, Tensor] = {}
_NUMPY_SAME_SIZE = {torch.bfloat16: np.uint16}  # torch dtypes numpy lacks: stored bit for bit


def tensor_digest(named: Iterable[tuple[str, Tensor]]) -> str:
    """A hex digest of names, dtypes, shapes and contents; computed on each tensor's own device.

    Per tensor, a 128-bit modular hash computed where the tensor lives (two odd-weighted int64 sums of its
    32-bit words per 1 MiB chunk, chained across chunks), so checking a GPU trunk's weights needs no host copy.
    Changing any single word always changes it.

    Example:
        >>> a = torch.arange(6.0)
        >>> tensor_digest([("a", a)]) == tensor_digest([("a", a.clone())])
        True
        >>> b = a.clone(); b[3] = 3.0000002
        >>> tensor_digest([("a", a)]) == tensor_digest([("a", b)])
        False
    """
    h = hashlib.sha256()
    for name, t in named:
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_content_hash(t.detach()))
    return h.hexdigest()


def _content_hash(t: Tensor) -> bytes:
    if t.numel() == 0:
        return b""
    raw = t.reshape(-1).contiguous().view(torch.uint8)
    if raw.numel() % 4:
        raw = torch.cat([raw, raw.new_zeros(4 - raw.numel() % 4)])
    words = raw.view(torch.int32)
    key = str(t.device)
    weights = _WEIGHTS.get(key)
    if weights is None:
        gen = torch.Generator().manual_seed(0x1F2E3D4C)
        weights = (torch.randint(1, 2**62, (2, _CHUNK), generator=gen, dtype=torch.int64) | 1).to(t.device)
        _WEIGHTS[key] = weights
    acc = torch.zeros(2, dtype=torch.int64, device=t.device)
    for start in range(0, words.numel(), _CHUNK):
        chunk = words[start : start + _CHUNK].to(torch.int64)
        acc = acc * _MIX + (weights[:, : chunk.numel()] * chunk).sum(dim=1)  # int64 arithmetic wraps mod 2^64
    return bytes(acc.cpu().numpy().tobytes())


def host_memory_available() -> int:
    """Bytes of host memory available for new allocations (``MemAvailable``), or a very large number if unknown.

    Example:
        >>> host_memory_available() > 0
        True
    """
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return 1 << 62


def choose_storage(requested: str, nbytes: int, budget: int | None, device: torch.device) -> StorageKind:
    """Where a cache of ``nbytes`` goes: ``requested`` unless ``"auto"`` (device, else pinned on GPUs, else disk).

    ``budget`` caps device and host memory; ``None`` means half of the free device memory / available host memory.

    Example:
        >>> choose_storage("auto", 10**6, 10**5, torch.device("cpu")), choose_storage("auto", 10, None, torch.device("cpu"))
        ('disk', 'device')
    """
    if requested != "auto":
        if requested != "disk" and budget is not None and nbytes > budget:
            raise ValueError(
                f"FeatureCache: the cache needs {nbytes} bytes, over `memory_budget`={budget}; "
                "use storage='disk' or 'auto', or raise the budget."
            )
        return requested  # type: ignore[return-value]
    host = budget if budget is not None else host_memory_available() // 2
    if device.type == "cuda":
        free = budget if budget is not None else torch.cuda.mem_get_info(device)[0] // 2
        return "device" if nbytes <= free else "pinned" if nbytes <= host else "disk"
    return "device" if nbytes <= host else "disk"


class FeatureStore:
    """``K`` views x ``N`` samples of features and other per-sample tensors, served by index.

    The features are held as ``[K, N, *F]`` and the batch's other tensors (labels, ...) as ``[K, N, *R]``; a
    batch of sample indices is one ``index_select`` per tensor. Kinds of storage:

    * ``"device"``: tensors on the training device (plain memory on a CPU run).
    * ``"pinned"``: page-locked host memory; a batch is gathered into a pinned buffer and copied to the GPU
      asynchronously (PyTorch's caching host allocator keeps the buffer alive until the copy is done).
    * ``"disk"``: ``.npy`` files opened as memory maps. An entry is a directory written under a temporary name,
      completed by ``manifest.json`` (the fingerprint, the arrays' shapes and dtypes) and then renamed into
      place (``os.rename`` of a directory is atomic on POSIX). A reader trusts a directory only when its
      manifest is there, names the expected fingerprint and matches the files; a crash mid-build leaves at most
      a ``.tmp-*`` directory, which is never read.

    Use :meth:`allocate` to create one to fill with :meth:`write`, :meth:`open` to read a committed disk entry.

    Args:
        kind: ``"device"``, ``"pinned"`` or ``"disk"``.
        arrays: the features first, then the other tensors, each shaped ``[K, N, ...]`` (tensors, or numpy
            memory maps for ``"disk"``; empty on a process that only reads a disk entry another one writes).
        dtypes: the torch dtype of each array.
        device: the training device batches are served to.

    Example:
        >>> store = FeatureStore.allocate("device", 2, 5, [torch.zeros(3), torch.zeros((), dtype=torch.long)],
        ...                               torch.device("cpu"))
        >>> store.write(1, 0, [torch.ones(5, 3), torch.arange(5)])
        >>> f, y = store.batch(1, torch.tensor([4, 0]))
        >>> f.shape, y.tolist()
        (torch.Size([2, 3]), [4, 0])
    """

    def __init__(
        self,
        kind: StorageKind,
        arrays: Sequence[Tensor | np.ndarray],
        dtypes: Sequence[torch.dtype],
        device: torch.device,
        *,
        directory: Path | None = None,
        writer: _DiskWriter | None = None,
    ) -> None:
        self.kind: StorageKind = kind
        self.arrays = list(arrays)
        self.dtypes = list(dtypes)
        self.device = device
        self.directory = directory
        self.manifest: dict[str, Any] = {}
        self._writer = writer

    # ------------------------------------------------------------------------------------------- creation --
    @classmethod
    def allocate(
        cls,
        kind: StorageKind,
        views: int,
        num_samples: int,
        rows: Sequence[Tensor],
        device: torch.device,
        *,
        directory: Path | None = None,
        write: bool = True,
    ) -> FeatureStore:
        """An empty store for ``views`` x ``num_samples`` rows shaped and typed like each of ``rows``.

        For ``"disk"``, ``directory`` is the entry's final path; the arrays are created in a temporary sibling
        directory (only when ``write``: a process that does not write gets an empty store to :meth:`reopen`).
        """
        dtypes = [r.dtype for r in rows]
        shapes = [(views, num_samples, *r.shape) for r in rows]
        if kind == "disk":
            if directory is None:
                raise ValueError("a disk store needs a directory")
            if not write:
                return cls(kind, [], dtypes, device, directory=directory)
            writer = _DiskWriter(directory)
            try:
                arrays: list[Any] = [
                    writer.create(f"array{i}.npy", shape, dtype)
                    for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True))
                ]
            except BaseException:
                writer.abort()
                raise
            return cls(kind, arrays, dtypes, device, directory=directory, writer=writer)
        pin = kind == "pinned" and device.type == "cuda"
        where = device if kind == "device" else torch.device("cpu")
        arrays = [
            torch.empty(shape, dtype=dtype, device=where, pin_memory=pin)
            for shape, dtype in zip(shapes, dtypes, strict=True)
        ]
        return cls(kind, arrays, dtypes, device)

    @classmethod
    def open(cls, directory: Path, fingerprint: str, device: torch.device) -> FeatureStore | None:
        """Open a committed disk entry read-only, or return ``None`` unless it is complete and matches."""
        manifest = _read_manifest(directory)
        if manifest is None or manifest.get("fingerprint") != fingerprint or not manifest.get("complete"):
            return None
        arrays: list[np.ndarray] = []
        dtypes: list[torch.dtype] = []
        try:
            for spec in manifest["arrays"]:
                array = np.load(directory / spec["file"], mmap_mode="r")
                if list(array.shape) != spec["shape"] or str(array.dtype) != spec["numpy_dtype"]:
                    return None
                arrays.append(array)
                dtypes.append(getattr(torch, spec["dtype"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        store = cls("disk", arrays, dtypes, device, directory=directory)
        store.manifest = manifest
        return store

    def commit(self, fingerprint: str, extra: dict[str, Any]) -> None:
        """Finish a disk entry this process wrote: flush, write the manifest, rename into place."""
        if self._writer is None:
            return
        specs = [
            {
                "file": f"array{i}.npy",
                "shape": list(a.shape),
                "numpy_dtype": str(a.dtype),
                "dtype": str(d).removeprefix("torch."),
            }
            for i, (a, d) in enumerate(zip(self.arrays, self.dtypes, strict=True))
        ]
        manifest = {"format": FORMAT_VERSION, "fingerprint": fingerprint, "arrays": specs, **extra}
        self.arrays = []  # drop the writable maps before the rename
        self._writer.commit({**manifest, "complete": True}, fingerprint)
        self._writer = None

    def abort(self) -> None:
        """Remove a disk entry this process was writing (nothing is left that a later run could trust)."""
        if self._writer is not None:
            self.arrays = []
            self._writer.abort()
            self._writer = None

    # -------------------------------------------------------------------------------------------- access --
    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (0 for a store that only reads another process's entry)."""
        return sum(int(a.nbytes) for a in self.arrays)

    @property
    def index_device(self) -> torch.device:
        """Where :meth:`batch` wants its indices."""
        return self.device if self.kind == "device" else torch.device("cpu")

    def write(self, view: int, start: int, values: Sequence[Tensor], *, first: int = 0) -> None:
        """Store rows ``start ... start + len(values[i])`` of view ``view`` of the arrays ``first, first + 1, ...``."""
        if not self.arrays:
            return
        for array, value in zip(self.arrays[first : first + len(values)], values, strict=True):
            stop = start + len(value)
            if isinstance(array, Tensor):
                array[view, start:stop].copy_(value)
            else:
                array[view, start:stop] = _to_numpy(value)

    def batch(self, view: int, idx: Tensor) -> list[Tensor]:
        """The rows ``idx`` of view ``view`` of every array, on the training device."""
        out = []
        for array, dtype in zip(self.arrays, self.dtypes, strict=True):
            if self.kind == "device":
                out.append(array[view].index_select(0, idx))  # type: ignore[union-attr]
            elif self.kind == "pinned":
                src = array[view]
                buf = torch.empty((len(idx), *src.shape[1:]), dtype=dtype, pin_memory=src.is_pinned())
                torch.index_select(src, 0, idx, out=buf)  # type: ignore[arg-type]
                out.append(buf.to(self.device, non_blocking=True))
            else:
                rows = torch.from_numpy(np.ascontiguousarray(array[view][idx.numpy()]))
                if rows.dtype != dtype:
                    rows = rows.view(dtype)
                out.append(rows.to(self.device))
        return out


def _to_numpy(value: Tensor) -> np.ndarray:
    value = value.detach().cpu()
    if value.dtype in _NUMPY_SAME_SIZE:
        value = value.view(getattr(torch, np.dtype(_NUMPY_SAME_SIZE[value.dtype]).name))
    return value.numpy()


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    if dtype in _NUMPY_SAME_SIZE:
        return np.dtype(_NUMPY_SAME_SIZE[dtype])
    return torch.empty((), dtype=dtype).numpy().dtype


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        with open(directory / "manifest.json", encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        return None
    return manifest


class _DiskWriter:
    """A temporary directory beside ``final`` that becomes ``final`` on commit, or disappears on abort."""

    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:12]}"
        self.tmp.mkdir()

    def create(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
        array: np.ndarray = np.lib.format.open_memmap(
            self.tmp / name, mode="w+", dtype=_numpy_dtype(dtype), shape=shape
        )
        return array

    def commit(self, manifest: dict[str, Any], fingerprint: str) -> None:
        for path in self.tmp.iterdir():
            _fsync(path)
        with open(self.tmp / "manifest.json", "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            # `final` exists: another process finished the same entry first, or an untrusted leftover is there.
            if FeatureStore.open(self.final, fingerprint, torch.device("cpu")) is None:
                shutil.rmtree(self.final, ignore_errors=True)
                os.rename(self.tmp, self.final)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        _fsync(self.final.parent)
        log.info("FeatureCache: wrote %s", self.final)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
