"""Data plumbing of :class:`~lightning_dnn.callbacks.FeatureCache`: read the data once, then serve the cache.

* :class:`TensorData` / :class:`DatasetData` read a rank's share of the samples in fixed order for the build:
  rank ``r`` of ``W`` reads samples ``r, r + W, ...`` in chunks; every rank runs the same number of chunks.
* :class:`DeviceOrder` / :class:`SamplerOrder` reproduce the batch order of the wrapped loader without touching
  its data: a :class:`~lightning_dnn.data.DeviceBatchLoader`'s ``(seed, epoch)`` permutation (with its epoch
  bookkeeping and mid-epoch resume state), or the index lists of a ``DataLoader``'s batch sampler (drawing the
  base seed from ``loader.generator`` first, as ``DataLoader.__iter__`` does, so the global random stream, hence
  a ``RandomSampler``'s order, stays the same as in a live run).
* :class:`CachedLoader` is what the fit loop iterates: at the first ``next()`` of an epoch (after every
  ``on_train_epoch_start`` hook, so after a LayerFreezer milestone) it asks the callback for the epoch's cache;
  it serves cached batches, or the wrapped loader's own batches when there is nothing to cache.
* :class:`CachingSource` stands in for a loop's data source and wraps the loaders it hands out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_dnn.callbacks._feature_store import FeatureStore, tensor_digest
from lightning_dnn.data import DeviceBatchLoader
from lightning_dnn.data._augment import TransformDataset

__all__ = [
    "CachedLoader",
    "CachingSource",
    "DatasetData",
    "DeviceOrder",
    "SamplerOrder",
    "Served",
    "StatefulCachedLoader",
    "TensorData",
    "access",
    "rebuilder",
    "split_batch",
]

Prepare = Callable[[Any], Any]
Rebuild = Callable[[list[Tensor]], Any]
BatchKind = str | type
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

    def chunks(
        self, rank: int, world: int, size: int, steps: int, seed: int, prepare: Prepare
    ) -> Iterator[tuple[Tensor | None, list[Tensor] | None]]:
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
        return tuple(_tensor_key(t) for t in (self.x, *(self.rest_full or [])))

    def content_key(self) -> str | None:
        return tensor_digest(enumerate_named([self.x, *(self.rest_full or [])]))


class DatasetData:
    """A map-style dataset read through a ``DataLoader`` like the training one (same workers and collate)."""

    def __init__(self, loader: DataLoader[Any], random_reason: str | None) -> None:
        self.loader = loader
        self.dataset = loader.dataset
        self.num_samples = len(self.dataset)  # type: ignore[arg-type]
        self.batch_size = int(loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 256)
        self.rest_full: list[Tensor] | None = None
        self.kind: BatchKind | None = None  # known after the first batch
        self.random_reason = random_reason

    def chunks(
        self, rank: int, world: int, size: int, steps: int, seed: int, prepare: Prepare
    ) -> Iterator[tuple[Tensor | None, list[Tensor] | None]]:
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
        return (id(self.dataset), self.num_samples)

    def content_key(self) -> str | None:
        tensors = _dataset_tensors(self.dataset)
        if tensors is None:
            return None
        extra = ""
        if isinstance(self.dataset, TransformDataset):
            extra = f"|{self.dataset.transform!r}|flatten={self.dataset.flatten}"
        return tensor_digest(enumerate_named(tensors)) + extra


def enumerate_named(tensors: list[Tensor]) -> list[tuple[str, Tensor]]:
    return [(str(i), t) for i, t in enumerate(tensors)]


def _tensor_key(t: Tensor) -> tuple[Any, ...]:
    return (id(t), t.data_ptr(), t._version, tuple(t.shape), str(t.dtype), str(t.device))


def _dataset_tensors(dataset: Any) -> list[Tensor] | None:
    """The tensors that fully determine the samples of a known dataset type; ``None`` for any other dataset
    (its ``__getitem__`` may be arbitrary code, whose changes a content hash of its attributes would miss)."""
    if isinstance(dataset, TensorDataset) and type(dataset).__getitem__ is TensorDataset.__getitem__:
        return list(dataset.tensors)
    if type(dataset) is TransformDataset:
        return [dataset.x, dataset.y]
    return None


def random_transforms(dataset: Any) -> list[str]:
    """Class names of random-looking transforms attached to ``dataset`` (torchvision style), outermost first.

    Example:
        >>> from torchvision.transforms import v2
        >>> ds = torch.utils.data.TensorDataset(torch.zeros(2)); ds.transform = v2.Compose([v2.RandomCrop(2)])
        >>> random_transforms(ds)
        ['RandomCrop']
    """
    found: list[str] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if obj is None or depth > 6 or id(obj) in seen or isinstance(obj, str | bytes | Tensor):
            return
        seen.add(id(obj))
        if isinstance(obj, list | tuple):
            for item in obj:
                walk(item, depth + 1)
            return
        name = type(obj).__name__
        if _RANDOM.search(name):
            found.append(name)
        for attr in ("transform", "transforms", "target_transform", "dataset", "datasets"):
            walk(getattr(obj, attr, None), depth + 1)

    walk(dataset, 0)
    return found


# ----------------------------------------------------------------------------------------------- batch order --
class DeviceOrder:
    """The batch order of a :class:`DeviceBatchLoader`, epoch by epoch, as index tensors."""

    def __init__(self, loader: DeviceBatchLoader) -> None:
        self.loader = loader
        self._iter_epoch: int | None = None
        self._served = 0
        self._resume: tuple[int, int] | None = None

    def batches(self, device: torch.device) -> Iterator[Tensor]:
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
        if self._iter_epoch is None:
            return {"epoch": int(self.loader.sampler.epoch), "batches_served": 0, "seed": self.loader.seed}
        return {"epoch": self._iter_epoch, "batches_served": self._served, "seed": self.loader.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        epoch = int(state_dict.get("epoch", 0))
        served = int(state_dict.get("batches_served", 0))
        if served >= len(self.loader):
            epoch, served = epoch + 1, 0
        self._iter_epoch, self._served = None, 0
        self._resume = (epoch, served) if served > 0 else None


class SamplerOrder:
    """The batch order of a ``DataLoader`` over a map-style dataset: its batch sampler's index lists."""

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = loader
        self._drawn = False

    def batches(self, device: torch.device) -> Iterator[Tensor]:
        loader = self.loader
        if not (loader.persistent_workers and loader.num_workers > 0 and self._drawn):
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)  # DataLoader's base seed
        self._drawn = True
        assert loader.batch_sampler is not None
        for indices in loader.batch_sampler:
            yield torch.as_tensor(indices, dtype=torch.long).to(device, non_blocking=True)


def access(
    loader: object, random_reason: Callable[[object], str | None]
) -> tuple[TensorData | DatasetData, DeviceOrder | SamplerOrder]:
    """The build-time reader and the batch order of a supported loader; TypeError for any other."""
    if isinstance(loader, DeviceBatchLoader):
        return TensorData(loader), DeviceOrder(loader)
    if isinstance(loader, DataLoader):
        if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
            raise TypeError(
                "FeatureCache needs a DataLoader over a map-style dataset with a batch size (samples are "
                "cached by index); got "
                + ("an IterableDataset" if isinstance(loader.dataset, IterableDataset) else "batch_size=None")
            )
        return DatasetData(loader, random_reason(loader)), SamplerOrder(loader)
    raise TypeError(
        "FeatureCache serves cached features in place of a lightning_dnn.data.DeviceBatchLoader or a "
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
        return self.rebuild(self.store.batch(self.view, idx))


class CachedLoader:
    """Iterates like ``inner``; each pass serves the cache when ``serve()`` returns one, else ``inner``.

    ``sampler``/``batch_sampler`` are ``inner``'s, so Lightning's ``set_epoch`` calls reach them.
    """

    def __init__(
        self, inner: Any, order: DeviceOrder | SamplerOrder, serve: Callable[[], Served | None]
    ) -> None:
        self.inner = inner
        self.order = order
        self._serve = serve
        self._live = True

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def sampler(self) -> Any:
        return getattr(self.inner, "sampler", None)

    @property
    def batch_sampler(self) -> Any:
        return getattr(self.inner, "batch_sampler", None)

    def __iter__(self) -> Iterator[Any]:
        # A generator: `serve()` runs at the first `next()`, after the epoch-start hooks.
        served = self._serve()
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
        return dict(self.inner.state_dict()) if self._live else self.order.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)
        self.order.load_state_dict(state_dict)


class CachingSource:
    """A loop's data source whose loaders come out wrapped by ``wrap(loader, index)``."""

    def __init__(self, original: Any, wrap: Callable[[object, int], object]) -> None:
        self.original = original
        self._wrap = wrap

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)

    def dataloader(self) -> Any:
        loaders = self.original.dataloader()
        if isinstance(loaders, list | tuple):
            return type(loaders)(self._wrap(dl, i) for i, dl in enumerate(loaders))
        if isinstance(loaders, dict):
            return {k: self._wrap(dl, i) for i, (k, dl) in enumerate(loaders.items())}
        return self._wrap(loaders, 0)
