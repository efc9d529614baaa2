"""Device-resident batches: :class:`DeviceBatchLoader` moves the tensors once, then serves batches by indexing.

A ``DataLoader`` over a ``TensorDataset`` fetches every sample with Python, collates the batch on the CPU and
copies it to the device at every step; for MNIST-sized data that costs more than the network.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from lightning_dnn._checks import check_bool, check_int
from lightning_dnn.loading.sampler import EpochSampler, resume_position

__all__ = ["DeviceBatchLoader"]


class DeviceBatchLoader:
    """Iterate shuffled mini-batches of tensors that live on the training device.

    The tensors are moved to ``device`` once, in the constructor. Each epoch draws this rank's order from an
    :class:`EpochSampler` (a permutation seeded by ``(seed, epoch)``; no shuffling for evaluation) and yields
    ``tuple(t[idx] for t in tensors)`` for consecutive slices ``idx`` of it: no per-sample Python, no collate,
    no host-to-device copy per step.

    Epochs: ``set_epoch(e)`` fixes the epoch of the next pass (Lightning calls it on ``loader.sampler`` before
    every epoch, so a run resumed from a checkpoint sees the same order as an uninterrupted one). Each pass
    that starts advances the epoch by one, so a plain ``for epoch ...: for batch in loader`` loop also sees a
    fresh order every epoch. ``state_dict``/``load_state_dict`` record the epoch and the number of batches
    already served, so Lightning resumes a run that stopped mid-epoch at the next unseen batch.

    Distributed training: pass ``rank``/``world_size``; every rank serves a disjoint, equal-size share of the
    samples (the permutation is padded by wrapping, as ``DistributedSampler`` does), so every rank runs the
    same number of steps. Lightning leaves such a loader alone: it only injects samplers into ``DataLoader``s.

    Args:
        *tensors: one or more tensors with the same first dimension, e.g. ``x, y``.
        batch_size: samples per batch.
        shuffle: draw a new permutation every epoch (training) or keep the order (evaluation).
        drop_last: drop the last batch of an epoch when it is smaller than ``batch_size``.
        seed: base seed of the permutations; the same on all ranks.
        device: where the tensors live while serving; ``None`` keeps each where it is.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes sharing the data.

    Example:
        >>> import torch
        >>> x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
        >>> loader = DeviceBatchLoader(x, y, batch_size=4, seed=0)
        >>> len(loader), [len(yb) for _, yb in loader]
        (3, [4, 4, 2])
        >>> loader.set_epoch(0)
        >>> first = torch.cat([yb for _, yb in loader])
        >>> sorted(first.tolist()) == list(range(10))
        True
        >>> second = torch.cat([yb for _, yb in loader])  # the next epoch: another order
        >>> bool((first != second).any())
        True
    """

    batch_sampler: None = None  # read by Lightning's helpers, which expect the DataLoader attributes

    def __init__(
        self,
        *tensors: Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not tensors:
            raise ValueError("DeviceBatchLoader needs at least one tensor, e.g. DeviceBatchLoader(x, y, ...)")
        for i, t in enumerate(tensors):
            if not isinstance(t, Tensor):
                raise TypeError(f"`tensors[{i}]` must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() == 0:
                raise ValueError(f"`tensors[{i}]` must have a first (sample) dimension, got a 0-d tensor")
        sizes = [len(t) for t in tensors]
        if len(set(sizes)) != 1:
            raise ValueError(f"All tensors must have the same first dimension, got sizes {sizes}")
        if sizes[0] == 0:
            raise ValueError("DeviceBatchLoader got empty tensors (0 samples)")
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.drop_last = check_bool("drop_last", drop_last)
        self.sampler = EpochSampler(sizes[0], shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
        self.device = None if device is None else torch.device(device)
        self.tensors: tuple[Tensor, ...] = tuple(t if device is None else t.to(device) for t in tensors)
        self._iter_epoch: int | None = None  # epoch of the pass in progress (or last started)
        self._served = 0  # batches served in that pass
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip) from load_state_dict

    @property
    def shuffle(self) -> bool:
        """Whether each epoch is a new permutation."""
        return bool(self.sampler.shuffle)

    @property
    def seed(self) -> int:
        """The base seed of the permutations."""
        return int(self.sampler.seed)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch whose order the next pass serves (also reachable as ``loader.sampler.set_epoch``)."""
        self.sampler.set_epoch(check_int("epoch", epoch, low=0))

    def __len__(self) -> int:
        """Number of batches per epoch on this rank."""
        per_rank = self.sampler.num_samples
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        # A generator: nothing runs until the first batch is requested, so a `set_epoch` call made after
        # `iter(loader)` (Lightning creates the iterator before it sets the epoch) still takes effect.
        epoch = self.sampler.epoch
        skip = 0
        if self._resume is not None:
            if self._resume[0] == epoch:
                skip = self._resume[1]
            self._resume = None
        self.sampler.set_epoch(epoch + 1)
        self._iter_epoch, self._served = epoch, skip
        order = self.sampler.indices(epoch)
        device = self.tensors[0].device
        if order.device != device:
            order = order.to(device, non_blocking=True)
        for start in range(skip * self.batch_size, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            self._served += 1
            yield tuple(t.index_select(0, idx) for t in self.tensors)

    def state_dict(self) -> dict[str, Any]:
        """The position in the data stream: ``{"epoch": e, "batches_served": k, "seed": s}``.

        Example:
            >>> import torch
            >>> loader = DeviceBatchLoader(torch.arange(6), batch_size=2)
            >>> it = iter(loader); _ = next(it)
            >>> loader.state_dict()
            {'epoch': 0, 'batches_served': 1, 'seed': 0}
        """
        if self._iter_epoch is None:
            return {"epoch": int(self.sampler.epoch), "batches_served": 0, "seed": self.seed}
        return {"epoch": self._iter_epoch, "batches_served": self._served, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next pass serves the rest of the saved epoch.

        A state saved after the last batch of an epoch continues with the next epoch.

        Example:
            >>> import torch
            >>> a = DeviceBatchLoader(torch.arange(6), batch_size=2, seed=3)
            >>> it = iter(a); _ = next(it); state = a.state_dict(); rest = [b[0].tolist() for b in it]
            >>> b = DeviceBatchLoader(torch.arange(6), batch_size=2, seed=3)
            >>> b.load_state_dict(state)
            >>> [batch[0].tolist() for batch in b] == rest
            True
        """
        epoch, served = resume_position(state_dict, len(self))
        self.sampler.set_epoch(epoch)
        self._iter_epoch, self._served = None, 0
        self._resume = (epoch, served) if served > 0 else None
