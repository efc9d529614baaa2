"""The order of one epoch for one rank: :class:`EpochSampler`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from lightning_dnn._checks import check_bool, check_int

__all__ = ["EpochSampler", "resume_position", "sequence_seed"]


class EpochSampler(DistributedSampler[int]):
    """The order of one epoch: a permutation seeded by ``(seed, epoch)``, sharded across ranks.

    Sharding follows :class:`torch.utils.data.DistributedSampler` exactly: the permutation of all
    ``data_size`` indices is padded by wrapping around to a multiple of ``world_size`` and rank ``r`` takes
    every ``world_size``-th index starting at ``r``. All ranks draw the same permutation, so their slices are
    disjoint (up to the wrapped padding) and together cover every index. Unlike ``DistributedSampler``, whose
    generator is seeded with ``seed + epoch`` (so seed 1 replays seed 0 shifted by one epoch), the generator
    seed mixes the two numbers (:meth:`epoch_seed`).

    It is a ``DistributedSampler`` subclass so that Lightning, which injects its own distributed sampler into
    a plain ``DataLoader`` under DDP, keeps this one, and it has ``set_epoch``, which Lightning calls on
    ``dataloader.sampler`` before every epoch.

    Args:
        data_size: number of samples in the split.
        shuffle: permute (True) or keep the natural order (False, for evaluation).
        seed: base seed, the same on all ranks.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes that share the data.

    Example:
        >>> sampler = EpochSampler(5, shuffle=False, rank=1, world_size=2)
        >>> list(sampler), len(sampler)
        ([1, 3, 0], 3)
        >>> sampler = EpochSampler(5, seed=0)
        >>> sorted(sampler.indices(epoch=3).tolist())
        [0, 1, 2, 3, 4]
    """

    def __init__(
        self,
        data_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_int("data_size", data_size, low=1)
        check_int("seed", seed, low=0)
        check_int("world_size", world_size, low=1)
        check_int("rank", rank, low=0, high=world_size - 1)
        check_bool("shuffle", shuffle)
        super().__init__(
            cast("Dataset[int]", range(data_size)),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.data_size = data_size

    @staticmethod
    def epoch_seed(seed: int, epoch: int) -> int:
        """The generator seed of an epoch: a 63-bit mix of ``(seed, epoch)`` (numpy's ``SeedSequence``).

        Example:
            >>> EpochSampler.epoch_seed(0, 1) != EpochSampler.epoch_seed(1, 0)
            True
        """
        return sequence_seed(seed, epoch)

    def indices(self, epoch: int | None = None) -> Tensor:
        """This rank's indices for ``epoch`` (default: the current one) as an int64 CPU tensor.

        Example:
            >>> EpochSampler(4, shuffle=False, world_size=2).indices().tolist()
            [0, 2]
        """
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.epoch_seed(self.seed, epoch))
            order = torch.randperm(self.data_size, generator=generator)
        else:
            order = torch.arange(self.data_size)
        padding = self.total_size - self.data_size
        if padding > 0:
            order = torch.cat([order, order.repeat(math.ceil(padding / self.data_size))[:padding]])
        return order[self.rank : self.total_size : self.num_replicas].contiguous()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


def resume_position(state_dict: Mapping[str, Any], num_batches: int) -> tuple[int, int]:
    """Where a resumable loader continues from its ``state_dict``: ``(epoch, batches already served)``.

    A state saved after the last batch of an epoch resumes at the start of the next epoch.

    Args:
        state_dict: the loader's ``{"epoch": ..., "batches_served": ...}`` (missing keys: 0).
        num_batches: the loader's batches per epoch.

    Example:
        >>> resume_position({"epoch": 2, "batches_served": 3}, 10), resume_position({"epoch": 2, "batches_served": 10}, 10)
        ((2, 3), (3, 0))
    """
    epoch = int(state_dict.get("epoch", 0))
    served = int(state_dict.get("batches_served", 0))
    if served >= num_batches:
        epoch, served = epoch + 1, 0
    return epoch, served


def sequence_seed(*numbers: int) -> int:
    """A 63-bit generator seed mixed from ``numbers`` (numpy's ``SeedSequence``): nearby tuples, unrelated seeds.

    Example:
        >>> sequence_seed(0, 1) != sequence_seed(1, 0), sequence_seed(7, 2) == sequence_seed(7, 2)
        (True, True)
    """
    low, high = np.random.SeedSequence(list(numbers)).generate_state(2, dtype=np.uint32)
    return ((int(high) << 32) | int(low)) & ((1 << 63) - 1)
