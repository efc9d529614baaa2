"""Pairs of samples labelled "same class or not", drawn on the fly from any classification data module."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_dnn._checks import check_int, check_number
from lightning_dnn._lightning import LightningDataModule, is_data_module
from lightning_dnn.loading import EpochSampler
from lightning_dnn.loading.sampler import resume_position, sequence_seed

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["PairDataModule", "sample_pairs"]

log = logging.getLogger(__name__)

_STREAMS = {"train": 0, "val": 1, "test": 2}


def sample_pairs(
    labels: Tensor,
    num_pairs: int,
    *,
    positive_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``num_pairs`` index pairs ``(i, j)`` with ``same = labels[i] == labels[j]``, exactly balanced.

    Exactly ``round(num_pairs * positive_fraction)`` pairs are positive (same class, ``i != j``), the rest
    negative (different classes). A positive pair's first sample is uniform over the samples whose class has
    another sample, its partner uniform over the other samples of that class; a negative pair's first sample is
    uniform over all samples, its partner uniform over the samples of the other classes. The pairs come in a
    random order.

    Args:
        labels: the class of each sample, ``[N]`` integers.
        num_pairs: how many pairs, ``>= 1``.
        positive_fraction: the fraction of positive pairs, in ``[0, 1]``.
        generator: the random stream (CPU).

    Returns:
        ``(i, j, same)``: int64 index tensors and a float tensor of 0/1 labels, each ``[num_pairs]``.

    Raises:
        ValueError: when positives are asked for and no class has two samples, or negatives and there is only
            one class.

    Example:
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> i, j, same = sample_pairs(labels, 10, positive_fraction=0.3, generator=torch.Generator().manual_seed(0))
        >>> int(same.sum()), bool(((labels[i] == labels[j]).float() == same).all()), bool((i != j).all())
        (3, True, True)
    """
    num_pairs = check_int("num_pairs", num_pairs, low=1)
    positive_fraction = check_number("positive_fraction", positive_fraction, low=0.0, high=1.0)
    labels = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    cls = torch.searchsorted(classes, labels)  # each sample's class position
    rank_in_class = torch.empty_like(order)
    rank_in_class[order] = torch.arange(len(order)) - starts[cls[order]]
    n_pos = round(num_pairs * positive_fraction)
    n_neg = num_pairs - n_pos
    total = len(labels)

    def uniform_below(limit: Tensor) -> Tensor:  # an integer uniform in [0, limit) per entry
        u = torch.rand(limit.shape, generator=generator, dtype=torch.float64)
        return torch.minimum((u * limit).long(), limit - 1)

    firsts, seconds = [], []
    if n_pos:
        eligible = torch.nonzero(counts[cls] >= 2).reshape(-1)
        if len(eligible) == 0:
            raise ValueError(
                f"positive pairs need a class with two samples, but each of the {len(classes)} classes has one"
            )
        a = eligible[torch.randint(len(eligible), (n_pos,), generator=generator)]
        c = cls[a]
        r = uniform_below(counts[c] - 1)
        r = r + (r >= rank_in_class[a]).long()  # skip the first sample itself
        firsts.append(a)
        seconds.append(order[starts[c] + r])
    if n_neg:
        if len(classes) < 2:
            raise ValueError(
                f"negative pairs need two classes, but the labels hold only class {classes.tolist()}"
            )
        a = torch.randint(total, (n_neg,), generator=generator)
        c = cls[a]
        r = uniform_below(total - counts[c])
        r = r + counts[c] * (r >= starts[c]).long()  # skip the block of the first sample's class
        firsts.append(a)
        seconds.append(order[r])
    i, j = torch.cat(firsts), torch.cat(seconds)
    same = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)])
    perm = torch.randperm(num_pairs, generator=generator)
    return i[perm], j[perm], same[perm]


def _generator(seed: int, stream: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(sequence_seed(seed, stream, epoch))


class _PairLoader:
    """Batches ``(x[i], x[j], same)`` of one split; training draws new pairs every epoch, evaluation fixed ones."""

    batch_sampler: None = None  # read by Lightning's helpers, which expect the DataLoader attributes

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        num_pairs: int,
        positive_fraction: float,
        seed: int,
        stream: int,
        batch_size: int,
        train: bool,
        rank: int,
        world_size: int,
    ) -> None:
        self.x, self.y = x, y
        self.num_pairs, self.positive_fraction = num_pairs, positive_fraction
        self.seed, self.stream, self.batch_size, self.train = seed, stream, batch_size, train
        # the rank's share of the pair positions: every world_size-th pair, padded by wrapping (DistributedSampler)
        self.sampler = EpochSampler(num_pairs, shuffle=False, seed=seed, rank=rank, world_size=world_size)
        self._iter_epoch: int | None = None
        self._served = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(self.sampler.num_samples / self.batch_size)

    def pairs(self, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """This rank's pairs of ``epoch`` (evaluation: always those of epoch 0)."""
        generator = _generator(self.seed, self.stream, epoch if self.train else 0)
        i, j, same = sample_pairs(
            self.y, self.num_pairs, positive_fraction=self.positive_fraction, generator=generator
        )
        mine = self.sampler.indices(epoch)
        return i[mine], j[mine], same[mine]

    def __iter__(self) -> Any:
        epoch = self.sampler.epoch
        skip = 0
        if self._resume is not None:
            skip = self._resume[1] if self._resume[0] == epoch else 0
            self._resume = None
        if self.train:
            self.sampler.set_epoch(epoch + 1)
        self._iter_epoch, self._served = epoch, skip
        i, j, same = (t.to(self.x.device) for t in self.pairs(epoch))
        same = same.to(self.x.dtype if self.x.is_floating_point() else torch.float32)
        for start in range(skip * self.batch_size, len(i), self.batch_size):
            self._served += 1
            a, b = i[start : start + self.batch_size], j[start : start + self.batch_size]
            yield self.x.index_select(0, a), self.x.index_select(0, b), same[start : start + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        if self._iter_epoch is None:
            return {"epoch": int(self.sampler.epoch), "batches_served": 0}
        return {"epoch": self._iter_epoch, "batches_served": self._served}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        epoch, served = resume_position(state_dict, len(self))
        self.sampler.set_epoch(epoch)
        self._iter_epoch, self._served = None, 0
        self._resume = (epoch, served) if served > 0 else None


class PairDataModule(LightningDataModule):
    """Pairs ``(x1, x2, same)`` drawn on the fly from a classification data module, for siamese pretraining.

    ``base`` is any data module whose loaders yield ``(x, y)`` with integer labels: ours (Fashion-MNIST, MNIST,
    digits, arrays), whose processed split tensors are read directly, or a user's, whose loaders are read once in
    :meth:`setup` (their order does not matter). Each split's pairs are drawn from that split only, so test pairs
    never share a sample with training pairs:

    * training: ``pairs_per_epoch`` pairs (default: as many as training samples), exactly
      ``round(pairs_per_epoch * positive_fraction)`` of them positive (:func:`sample_pairs`), new pairs every
      epoch, drawn from ``(seed, epoch)``: reproducible, and a run resumed from a checkpoint sees the pairs of the
      uninterrupted run;
    * validation and test: one fixed set of pairs each (as many as samples in the split), so their metrics are
      comparable from epoch to epoch.

    Under DDP every rank draws the same pairs and takes every ``world_size``-th one (padded by wrapping, as
    ``DistributedSampler`` does): disjoint, equal shares, balanced in total (each share up to sampling noise).
    The pair tensors are served from the trainer's device (the samples are moved there once).

    Args:
        base: the classification data module.
        pairs_per_epoch: training pairs per epoch, ``>= 1``; ``None``: the number of training samples.
        positive_fraction: the fraction of positive ("same class") pairs, in ``(0, 1)``.
        seed: seeds the pairs, ``>= 0``.
        batch_size: pairs per batch; ``None``: ``base.batch_size`` (128 when it has none).

    Raises:
        TypeError: if ``base`` is not a LightningDataModule or an argument has the wrong type.
        ValueError: for a value out of range; in :meth:`setup`, for a split with fewer than two classes.

    Example:
        >>> from lightning_dnn.data import DigitsDataModule
        >>> pairs = PairDataModule(DigitsDataModule(batch_size=64), pairs_per_epoch=1000, seed=0)
        >>> pairs.setup("fit")
        >>> x1, x2, same = next(iter(pairs.train_dataloader()))
        >>> tuple(x1.shape), tuple(x2.shape), tuple(same.shape)
        ((64, 64), (64, 64), (64,))
    """

    def __init__(
        self,
        base: pl.LightningDataModule,
        *,
        pairs_per_epoch: int | None = None,
        positive_fraction: float = 0.5,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if not is_data_module(base):
            raise TypeError(
                f"`base` must be a LightningDataModule yielding (x, y), got {type(base).__name__}"
            )
        self.base = base
        self.pairs_per_epoch = (
            None if pairs_per_epoch is None else check_int("pairs_per_epoch", pairs_per_epoch, low=1)
        )
        self.positive_fraction = check_number(
            "positive_fraction",
            positive_fraction,
            low=0.0,
            high=1.0,
            low_inclusive=False,
            high_inclusive=False,
        )
        self.seed = check_int("seed", seed, low=0)
        self.batch_size = (
            check_int("batch_size", batch_size, low=1)
            if batch_size is not None
            else int(getattr(base, "batch_size", 128))
        )
        self._splits: dict[str, tuple[Tensor, Tensor] | None] = {}
        self._device_cache: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}

    @property
    def info(self) -> Any:
        """The base data module's ``info`` (its source's description), or ``None``."""
        return getattr(self.base, "info", None)

    @override
    def prepare_data(self) -> None:
        """Let the base data module download what it needs."""
        self.base.prepare_data()

    @override
    def setup(self, stage: str | None = None) -> None:
        """Set up the base data module and read the splits the stage needs."""
        self.base.setup(stage)  # type: ignore[arg-type]
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            None: ("train", "val", "test"),
        }
        for split in needed.get(stage, ()):
            if split not in self._splits:
                self._splits[split] = self._read(split)

    @override
    def teardown(self, stage: str | None = None) -> None:
        """Release the device copies."""
        self._device_cache.clear()

    @override
    def train_dataloader(self) -> _PairLoader:
        """Training pairs, new every epoch."""
        return self._loader("train", train=True)

    @override
    def val_dataloader(self) -> _PairLoader | list[Any]:
        """Fixed validation pairs, or ``[]`` when the base has no validation split."""
        return self._loader("val", train=False) if self._split("val") is not None else []

    @override
    def test_dataloader(self) -> _PairLoader:
        """Fixed test pairs."""
        return self._loader("test", train=False)

    # ------------------------------------------------------------------------------------------------ internals
    def _read(self, split: str) -> tuple[Tensor, Tensor] | None:
        tensors = getattr(self.base, "tensors", None)
        if callable(tensors):
            try:
                x, y = tensors(split)
            except ValueError:  # our data modules: no such split
                return None
        else:
            hook = getattr(self.base, f"{split}_dataloader")
            try:
                loader = hook()
            except Exception:  # a user's module without that split
                return None
            batches = [(b[0], b[1]) for b in loader] if loader else []
            if not batches:
                return None
            x = torch.cat([b[0].detach().cpu() for b in batches])
            y = torch.cat([torch.as_tensor(b[1]).detach().cpu() for b in batches])
        y = torch.as_tensor(y).long().reshape(-1)
        if len(torch.unique(y)) < 2:
            raise ValueError(
                f"PairDataModule: the {split} split of {type(self.base).__name__} has fewer than "
                "two classes: no negative pairs can be drawn"
            )
        log.info("PairDataModule: %s split, %d samples", split, len(y))
        return x, y

    def _split(self, split: str) -> tuple[Tensor, Tensor] | None:
        if split not in self._splits:
            self._splits[split] = self._read(split)
        return self._splits[split]

    def _loader(self, split: str, *, train: bool) -> _PairLoader:
        data = self._split(split)
        if data is None:
            raise ValueError(f"PairDataModule: {type(self.base).__name__} has no {split} split")
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        rank, world_size = (
            (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)
        )
        key = (split, str(device))
        if key not in self._device_cache:
            self._device_cache[key] = (data[0].to(device), data[1].to(device))
        x, y = self._device_cache[key]
        num_pairs = (self.pairs_per_epoch or len(y)) if train else len(y)
        return _PairLoader(
            x,
            y.cpu(),
            num_pairs=num_pairs,
            positive_fraction=self.positive_fraction,
            seed=self.seed,
            stream=_STREAMS[split],
            batch_size=self.batch_size if train else max(self.batch_size, 1000),
            train=train,
            rank=rank,
            world_size=world_size,
        )
