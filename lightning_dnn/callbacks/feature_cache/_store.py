"""The cache's storage, :class:`FeatureStore`, and :func:`tensor_digest`, the hash behind its fingerprints.

Features live in device memory, page-locked host memory or ``.npy`` memory maps.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_dnn.callbacks.feature_cache._files import FORMAT_VERSION, EntryWriter, read_manifest, verify

__all__ = [
    "FeatureStore",
    "StorageKind",
    "choose_storage",
    "host_memory_available",
    "tensor_digest",
]

log = logging.getLogger(__name__)

StorageKind = Literal["device", "pinned", "disk"]
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
      completed by ``manifest.json`` (the fingerprint, the arrays' shapes and dtypes, each file's size and a
      SHA-256 per 4 MiB chunk of it) and then renamed into place (``os.rename`` of a directory is atomic on
      POSIX). A reader trusts a directory only when its manifest is there, names the expected fingerprint and
      matches the files, contents included; a crash mid-build leaves at most a ``.tmp-*`` directory, which is
      never read and which the next run on the same root removes once its owner is gone (see ``_files``).

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
        writer: EntryWriter | None = None,
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
            writer = EntryWriter(directory)
            try:
                arrays: list[Any] = [
                    np.lib.format.open_memmap(
                        writer.path(f"array{i}.npy"), mode="w+", dtype=_numpy_dtype(dtype), shape=shape
                    )
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
    def open(
        cls, directory: Path, fingerprint: str, device: torch.device, *, verify_contents: bool = True
    ) -> FeatureStore | None:
        """Open a committed disk entry read-only, or return ``None`` unless it is complete and matches.

        With ``verify_contents``, every file is read once and checked against the content hashes of the
        manifest before it is used (about 1 s per GB of cache on one core).

        Raises:
            CorruptEntry: the entry is complete and has the fingerprint, but a file's contents do not match
                their hashes (the message names the file and the chunk).
        """
        manifest = read_manifest(directory)
        if manifest is None or manifest.get("fingerprint") != fingerprint or not manifest.get("complete"):
            return None
        if verify_contents:
            verify(directory, manifest)
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
        self._writer.commit(manifest, [f"array{i}.npy" for i in range(len(specs))])
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
        if self._writer is not None:
            self._writer.beat()
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
