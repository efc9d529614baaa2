"""Data plumbing of the cache: read the training data once for the build, then serve the cache in its order.

* :class:`TensorData` / :class:`DatasetData` read a rank's share of the samples in fixed order for the build.
* :class:`DeviceOrder` / :class:`SamplerOrder` reproduce the batch order of the wrapped loader.
* :class:`CachedLoader` is what the fit loop iterates: cached batches, or the wrapped loader's own.
"""

from __future__ import annotations

import functools
import itertools
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_dnn.callbacks.feature_cache._store import FeatureStore, tensor_digest
from lightning_dnn.loading import DeviceBatchLoader, TransformDataset
from lightning_dnn.loading.sampler import resume_position

__all__ = [
    "BatchKind",
    "CachedLoader",
    "Data",
    "DatasetData",
    "DeviceOrder",
    "SamplerOrder",
    "Served",
    "Server",
    "StatefulCachedLoader",
    "TensorData",
    "access",
    "cached_loader",
    "random_transforms",
    "rebuilder",
    "split_batch",
]

Prepare = Callable[[Any], Any]
Rebuild = Callable[[list[Tensor]], Any]
BatchKind = str | type
Chunks = Iterator[tuple[Tensor | None, list[Tensor] | None]]
_RANDOM = re.compile(r"Random|Jitter|Augment|AugMix|Elastic|Blur|Noise|Erasing|MixUp|CutMix")


def split_batch(batch: Any) -> tuple[Tensor, list[Tensor], BatchKind]:
    """``(inputs, other per-sample tensors, the batch's kind)``; :func:`rebuilder` makes batches of that kind.

    Example:
        >>> x, rest, kind = split_batch([torch.zeros(2, 3), torch.tensor([1, 0])])
        >>> kind, rebuilder(kind)([torch.ones(1), torch.tensor([7])])
        ('list', [tensor([1.]), tensor([7])])
    """
    if isinstance(batch, Tensor):
        return batch, [], "tensor"
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], Tensor):
        x, rest = batch[0], list(batch[1:])
        bad = [r for r in rest if not isinstance(r, Tensor) or r.dim() == 0 or len(r) != len(x)]
        if not bad:
            if hasattr(batch, "_fields"):  # a namedtuple
                return x, rest, type(batch)
            return x, rest, "list" if isinstance(batch, list) else "tuple"
    raise TypeError(
        "FeatureCache needs batches shaped `(inputs, *per_sample_tensors)` (e.g. `(x, y)`) or a bare inputs "
        f"tensor, got {_describe(batch)}; the network must be called with the batch's first element."
    )


def rebuilder(kind: BatchKind) -> Rebuild:
    """A function turning ``[features, *other tensors]`` into a batch of ``kind`` (see :func:`split_batch`)."""
    if kind == "tensor":
        return lambda values: values[0]
    if kind == "list":
        return list
    if kind == "tuple":
        return tuple
    if isinstance(kind, type):
        return lambda values: kind(*values)
    raise ValueError(f"unknown batch kind {kind!r}")


def _describe(batch: Any) -> str:
    if isinstance(batch, list | tuple):
        return f"a {type(batch).__name__} of ({', '.join(_describe(b) for b in batch[:4])})"
    if isinstance(batch, Tensor):
        return f"Tensor{tuple(batch.shape)}"
    return type(batch).__name__


# ----------------------------------------------------------------------------------------------- build data --
class TensorData:
    """The tensors of a :class:`DeviceBatchLoader`: inputs read by slice, other tensors taken whole."""

    random_reason: str | None = None

    def __init__(self, loader: DeviceBatchLoader) -> None:
        self.x, *others = loader.tensors
        self.rest_full: list[Tensor] | None = list(others)
        self.num_samples = len(self.x)
        self.batch_size = loader.batch_size
        self.kind: BatchKind | None = "tuple"

    def chunks(self, rank: int, world: int, size: int, steps: int, seed: int, prepare: Prepare) -> Chunks:
        """``steps`` chunks ``(inputs, None)`` of samples ``rank, rank + world, ...``; ``(None, None)`` past the end."""
        shard = len(range(rank, self.num_samples, world))
        for step in range(steps):
            start, stop = step * size, min(step * size + size, shard)
            if start >= stop:
                yield None, None
            elif world == 1:
                yield prepare(self.x[start:stop]), None
            else:
                idx = torch.arange(start, stop, device=self.x.device) * world + rank
                yield prepare(self.x.index_select(0, idx)), None

    def local_key(self) -> tuple[Any, ...]:
        """Identifies the tensors in this process (identity, storage, version): cheap, for reuse checks."""
        return tuple(_tensor_key(t) for t in (self.x, *(self.rest_full or [])))

    def content_key(self) -> str | None:
        """The content hash of the tensors (for the disk cache's data fingerprint)."""
        return tensor_digest(enumerate_named([self.x, *(self.rest_full or [])]))


class DatasetData:
    """A map-style dataset read through a ``DataLoader`` like the training one (same workers and collate)."""

    def __init__(self, loader: DataLoader[Any], random_reason: str | None = None) -> None:
        self.loader = loader
        self.dataset = loader.dataset
        self.num_samples = len(self.dataset)  # type: ignore[arg-type]
        self.batch_size = int(loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 256)
        self.rest_full: list[Tensor] | None = None
        self.kind: BatchKind | None = None  # known after the first batch
        self.random_reason = random_reason

    def chunks(self, rank: int, world: int, size: int, steps: int, seed: int, prepare: Prepare) -> Chunks:
        """``steps`` chunks ``(inputs, other tensors)`` of samples ``rank, rank + world, ...``, then ``(None, None)``.

        The dataset is read through a ``DataLoader`` like the training one; ``seed`` seeds its workers.
        """
        src = self.loader
        workers = src.num_workers
        reader = DataLoader(
            self.dataset,
            batch_size=size,
            sampler=list(range(rank, self.num_samples, world)),
            num_workers=workers,
            collate_fn=src.collate_fn,
            pin_memory=src.pin_memory,
            worker_init_fn=src.worker_init_fn,
            multiprocessing_context=src.multiprocessing_context if workers else None,
            generator=torch.Generator().manual_seed(seed),  # worker seeds; the global RNG is not drawn
            timeout=src.timeout,
            prefetch_factor=src.prefetch_factor if workers else None,
        )
        done = 0
        for batch in reader:
            x, rest, self.kind = split_batch(prepare(batch))
            done += 1
            yield x, rest
        for _ in range(done, steps):
            yield None, None

    def local_key(self) -> tuple[Any, ...]:
        """Identifies the dataset in this process."""
        return (id(self.dataset), self.num_samples)

    def content_key(self) -> str | None:
        """The content hash of a dataset of a known type (``None`` for any other: it cannot be hashed)."""
        tensors = _dataset_tensors(self.dataset)
        if tensors is None:
            return None
        extra = ""
        if isinstance(self.dataset, TransformDataset):
            extra = f"|{self.dataset.transform!r}|flatten={self.dataset.flatten}"
        return tensor_digest(enumerate_named(tensors)) + extra


def enumerate_named(tensors: list[Tensor]) -> list[tuple[str, Tensor]]:
    """``[("0", t0), ("1", t1), ...]``, as :func:`tensor_digest` wants them."""
    return [(str(i), t) for i, t in enumerate(tensors)]


def _tensor_key(t: Tensor) -> tuple[Any, ...]:
    return (id(t), t.data_ptr(), t._version, tuple(t.shape), str(t.dtype), str(t.device))


def _dataset_tensors(dataset: Any) -> list[Tensor] | None:
    """The tensors that fully determine the samples of a known dataset type; ``None`` for any other dataset.

    Any other dataset's ``__getitem__`` may be arbitrary code, whose changes a content hash would miss.
    """
    if isinstance(dataset, TensorDataset) and type(dataset).__getitem__ is TensorDataset.__getitem__:
        return list(dataset.tensors)
    if type(dataset) is TransformDataset:
        return [dataset.x, dataset.y]
    return None


def random_transforms(dataset: Any) -> list[str]:
    """Names of random-looking transforms held anywhere in ``dataset``, outermost first.

    Walks the dataset's attributes (any name, not only ``transform``), containers (lists, tuples, dicts,
    ``Compose``), wrapped datasets (``Subset``, ``ConcatDataset``, a ``.dataset`` of a user wrapper), modules
    (torchvision v2 transforms) and functions (their closures and the names they call: a lambda that calls
    ``torch.rand`` is random), with a depth and visited guard; tensors and arrays are not looked into.

    Example:
        >>> from torchvision.transforms import v2
        >>> ds = torch.utils.data.TensorDataset(torch.zeros(2)); ds.t = v2.Compose([v2.RandomCrop(2)])
        >>> random_transforms(ds)
        ['RandomCrop']
    """
    found: list[str] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if depth > _DEPTH or id(obj) in seen or isinstance(obj, _OPAQUE) or type(obj).__module__ == "numpy":
            return
        seen.add(id(obj))
        for child in _children(obj, found):
            walk(child, depth + 1)

    walk(dataset, 0)
    return found


_DEPTH = 8
_OPAQUE = (type(None), str, bytes, int, float, bool, complex, Tensor, type)
_RANDOM_CALLS = frozenset(
    "rand randn randint randperm rand_like randn_like randint_like random random_ uniform uniform_ normal "
    "normal_ shuffle choice choices bernoulli multinomial integers".split()
)


def _children(obj: Any, found: list[str]) -> list[Any]:
    """The objects ``obj`` holds (at most 64 items of a container); random transforms found are appended."""
    if isinstance(obj, list | tuple | set | frozenset):
        return list(itertools.islice(obj, 64))
    if isinstance(obj, dict):
        return list(itertools.islice(obj.values(), 64))
    if isinstance(obj, types.FunctionType | types.MethodType | functools.partial):
        return _function_children(obj, found)
    name = type(obj).__name__
    if _RANDOM.search(name):
        found.append(name)
    attrs = getattr(obj, "__dict__", None)
    return list(itertools.islice(attrs.values(), 64)) if isinstance(attrs, dict) else []


def _function_children(obj: Any, found: list[str]) -> list[Any]:
    if isinstance(obj, functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values()]
    if isinstance(obj, types.MethodType):
        return [obj.__func__, obj.__self__]
    code = obj.__code__
    names = [n for n in code.co_names if n in _RANDOM_CALLS]
    if names:
        found.append(f"{obj.__qualname__} (calls {names[0]})")
    cells = [c.cell_contents for c in obj.__closure__ or () if _filled(c)]
    globals_used = [obj.__globals__[n] for n in code.co_names if n in obj.__globals__]
    return cells + [g for g in globals_used if not isinstance(g, types.ModuleType)]


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - raises ValueError on an empty cell
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------- batch order --
class DeviceOrder:
    """The batch order of a :class:`DeviceBatchLoader`, epoch by epoch, as index tensors."""

    def __init__(self, loader: DeviceBatchLoader) -> None:
        self.loader = loader
        self._iter_epoch: int | None = None
        self._served = 0
        self._resume: tuple[int, int] | None = None

    def batches(self, device: torch.device) -> Iterator[Tensor]:
        """This epoch's index batches on ``device``; advances the loader's epoch, as a pass over it would."""
        sampler, size = self.loader.sampler, self.loader.batch_size
        epoch = int(sampler.epoch)
        skip = 0
        if self._resume is not None:
            skip = self._resume[1] if self._resume[0] == epoch else 0
            self._resume = None
        sampler.set_epoch(epoch + 1)  # as DeviceBatchLoader: each pass advances the epoch
        self._iter_epoch, self._served = epoch, skip
        order = sampler.indices(epoch)
        if order.device != device:
            order = order.to(device, non_blocking=True)
        for start in range(skip * size, len(self.loader) * size, size):
            self._served += 1
            yield order[start : start + size]

    def state_dict(self) -> dict[str, Any]:
        """The position in the data stream, in :meth:`DeviceBatchLoader.state_dict`'s format."""
        if self._iter_epoch is None:
            return {"epoch": int(self.loader.sampler.epoch), "batches_served": 0, "seed": self.loader.seed}
        return {"epoch": self._iter_epoch, "batches_served": self._served, "seed": self.loader.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next pass serves the rest of the saved epoch."""
        epoch, served = resume_position(state_dict, len(self.loader))
        self._iter_epoch, self._served = None, 0
        self._resume = (epoch, served) if served > 0 else None


class SamplerOrder:
    """The batch order of a ``DataLoader`` over a map-style dataset: its batch sampler's index lists."""

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = loader
        self._drawn = False

    def batches(self, device: torch.device) -> Iterator[Tensor]:
        """The batch sampler's index lists on ``device``, after drawing the base seed as a live pass would."""
        loader = self.loader
        if not (loader.persistent_workers and loader.num_workers > 0 and self._drawn):
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)  # DataLoader's base seed
        self._drawn = True
        assert loader.batch_sampler is not None
        for indices in loader.batch_sampler:
            yield torch.as_tensor(indices, dtype=torch.long).to(device, non_blocking=True)


Data = TensorData | DatasetData
Order = DeviceOrder | SamplerOrder


def access(loader: object, augmented: str | None = None) -> tuple[Data, Order]:
    """The build-time reader and the batch order of a supported loader.

    Args:
        loader: a :class:`~lightning_dnn.loading.DeviceBatchLoader` or a ``DataLoader`` over a map-style dataset.
        augmented: why the data is known to be randomly augmented (e.g. by its data module), if it is.

    Raises:
        TypeError: any other loader.
    """
    if isinstance(loader, DeviceBatchLoader):
        return TensorData(loader), DeviceOrder(loader)
    if isinstance(loader, DataLoader):
        if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
            raise TypeError(
                "FeatureCache needs a DataLoader over a map-style dataset with a batch size (samples are "
                "cached by index); got "
                + ("an IterableDataset" if isinstance(loader.dataset, IterableDataset) else "batch_size=None")
            )
        found = random_transforms(loader.dataset)
        reason = augmented or (f"its dataset applies {', '.join(found)}" if found else None)
        return DatasetData(loader, reason), SamplerOrder(loader)
    raise TypeError(
        "FeatureCache serves cached features in place of a lightning_dnn.loading.DeviceBatchLoader or a "
        f"torch DataLoader over a map-style dataset; got a {type(loader).__name__}."
    )


# ------------------------------------------------------------------------------------------------- serving --
@dataclass
class Served:
    """An epoch's cache: the store, the view this epoch uses and the batch type to rebuild."""

    store: FeatureStore
    view: int
    rebuild: Rebuild

    def batch(self, idx: Tensor) -> Any:
        """The cached batch of the samples ``idx``."""
        return self.rebuild(self.store.batch(self.view, idx))


class Server(Protocol):
    """Decides, at the start of each pass over a loader, which cache it serves (the per-fit session)."""

    def serve(self, key: str, data: Data) -> Served | None:
        """The cache of the pass over the loader ``key`` (``"train"``, ``"val0"``, ...), or ``None``: live."""
        ...


class CachedLoader:
    """Iterates like ``inner``; each pass serves the cache when the server returns one, else ``inner``'s batches.

    ``sampler``/``batch_sampler`` are ``inner``'s, so Lightning's ``set_epoch`` calls reach them.
    """

    def __init__(self, inner: Any, order: Order, server: Server, key: str, data: Data) -> None:
        self.inner = inner
        self.order = order
        self._server, self._key, self._data = server, key, data
        self._live = True

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def sampler(self) -> Any:
        """The wrapped loader's sampler."""
        return getattr(self.inner, "sampler", None)

    @property
    def batch_sampler(self) -> Any:
        """The wrapped loader's batch sampler."""
        return getattr(self.inner, "batch_sampler", None)

    def __iter__(self) -> Iterator[Any]:
        # A generator: `serve` runs at the first `next()`, after the epoch-start hooks (a LayerFreezer milestone).
        served = self._server.serve(self._key, self._data)
        self._live = served is None
        if served is None:
            yield from self.inner
            return
        for idx in self.order.batches(served.store.index_device):
            yield served.batch(idx)


class StatefulCachedLoader(CachedLoader):
    """A :class:`CachedLoader` whose position in the data stream is saved in checkpoints (mid-epoch resume)."""

    order: DeviceOrder

    def state_dict(self) -> dict[str, Any]:
        """The wrapped loader's state after a live pass, the cache's position after a cached one."""
        return dict(self.inner.state_dict()) if self._live else self.order.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume both the wrapped loader and the cached order."""
        self.inner.load_state_dict(state_dict)
        self.order.load_state_dict(state_dict)


def cached_loader(inner: Any, order: Order, server: Server, key: str, data: Data) -> CachedLoader:
    """Wrap ``inner``: a stateful wrapper for a :class:`DeviceBatchLoader`, whose position Lightning saves."""
    wrapper = StatefulCachedLoader if isinstance(order, DeviceOrder) else CachedLoader
    return wrapper(inner, order, server, key, data)
