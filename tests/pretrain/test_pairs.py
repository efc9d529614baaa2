"""Pair sampling: exact balance, correct labels, seeded, new pairs every epoch, disjoint DDP shares."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn.data import DigitsDataModule
from lightning_dnn.pretrain import PairDataModule, sample_pairs
from lightning_dnn.pretrain.pairs import _PairLoader


def _epoch(loader: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return tuple(torch.cat([b[k] for b in batches]) for k in range(3))  # type: ignore[return-value]


@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.9])
def test_sample_pairs_is_exactly_balanced_and_labelled(fraction: float) -> None:
    labels = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(1))
    labels[labels == 6] = 5  # uneven class sizes
    i, j, same = sample_pairs(
        labels, 1001, positive_fraction=fraction, generator=torch.Generator().manual_seed(0)
    )
    assert int(same.sum()) == round(1001 * fraction)
    assert torch.equal(same, (labels[i] == labels[j]).float())  # same iff the classes are equal
    assert bool((i != j).all())  # a sample is never paired with itself
    # every class appears as a positive anchor, roughly by its size
    positives = labels[i[same == 1]]
    for c in labels.unique():
        share = (positives == c).float().mean().item()
        assert abs(share - (labels == c).float().mean().item()) < 0.08


def test_sample_pairs_partner_is_uniform_within_class() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    i, j, same = sample_pairs(
        labels, 30000, positive_fraction=1.0, generator=torch.Generator().manual_seed(0)
    )
    anchors0 = i == 0
    partners = j[anchors0]
    assert set(partners.tolist()) == {1, 2}  # sample 0's class mates, never itself
    assert abs((partners == 1).float().mean().item() - 0.5) < 0.03
    assert not bool(((labels[i] == 2) & (same == 1)).any())  # class 2 has one sample: never a positive anchor
    i, j, _ = sample_pairs(labels, 30000, positive_fraction=0.0, generator=torch.Generator().manual_seed(0))
    partners = j[i == 5]
    counts = torch.bincount(partners, minlength=6)[:5].float()
    assert bool((counts / counts.sum() - 0.2).abs().max() < 0.03)  # uniform over the other classes' samples


def test_sample_pairs_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="two classes"):
        sample_pairs(torch.zeros(5, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="class with two samples"):
        sample_pairs(torch.arange(5), 4)
    with pytest.raises(ValueError, match=r"`positive_fraction` must be <= 1\.0"):
        sample_pairs(torch.arange(5), 4, positive_fraction=1.5)


def _pairs(**kwargs: Any) -> PairDataModule:
    options: dict[str, Any] = {"pairs_per_epoch": 400, "seed": 0}
    options.update(kwargs)
    module = PairDataModule(DigitsDataModule(batch_size=50, val_split=0.1), **options)
    module.setup("fit")
    return module


def test_pair_module_is_seeded_new_every_epoch_and_fixed_for_validation() -> None:
    a, b, c = _pairs(), _pairs(), _pairs(seed=1)
    la, lb, lc = a.train_dataloader(), b.train_dataloader(), c.train_dataloader()
    first_a, first_b, first_c = _epoch(la), _epoch(lb), _epoch(lc)
    assert all(torch.equal(u, v) for u, v in zip(first_a, first_b, strict=True))  # same seed: same pairs
    assert not torch.equal(first_a[0], first_c[0])  # another seed: other pairs
    second = _epoch(la)  # the next epoch: other pairs
    assert not torch.equal(first_a[0], second[0])
    la.set_epoch(0)  # what Lightning does on resume: replay epoch 0
    assert torch.equal(_epoch(la)[0], first_a[0])
    assert int(first_a[2].sum()) == 200 and int(second[2].sum()) == 200  # exactly balanced every epoch
    v1, v2 = _epoch(a.val_dataloader()), _epoch(a.val_dataloader())
    assert torch.equal(v1[0], v2[0]) and len(v1[2]) == len(a.base.tensors("val")[1])  # type: ignore[operator]


def test_pair_module_labels_match_the_classes() -> None:
    module = _pairs()
    x, y = module.base.tensors("train")  # type: ignore[operator]
    x1, x2, same = _epoch(module.train_dataloader())
    # the served rows are those of the drawn index pairs, whose labels decide `same`
    loader = module.train_dataloader()
    i, j, same_idx = loader.pairs(0)
    assert torch.equal(same_idx, (y[i] == y[j]).float())
    assert torch.equal(x1, x[i]) and torch.equal(x2, x[j]) and torch.equal(same, same_idx)


def test_ddp_shares_are_disjoint_and_cover_the_epoch() -> None:
    x, y = torch.randn(300, 4), torch.arange(300) % 3
    common = dict(num_pairs=301, positive_fraction=0.5, seed=5, stream=0, batch_size=32, train=True)
    single = _PairLoader(x, y, rank=0, world_size=1, **common)  # type: ignore[arg-type]
    i_all, j_all, _ = single.pairs(3)
    shares = [_PairLoader(x, y, rank=r, world_size=2, **common).pairs(3) for r in range(2)]  # type: ignore[arg-type]
    assert len(shares[0][0]) == len(shares[1][0]) == 151  # equal shares, padded by wrapping
    merged = torch.stack([torch.stack([s[0] for s in shares]), torch.stack([s[1] for s in shares])])
    interleaved_i = merged[0].t().reshape(-1)[:301]
    interleaved_j = merged[1].t().reshape(-1)[:301]
    assert torch.equal(interleaved_i, i_all) and torch.equal(interleaved_j, j_all)


def test_a_users_data_module_is_read_through_its_loaders() -> None:
    class UserData(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader[Any]:
            x = torch.arange(40.0).reshape(20, 2)
            return DataLoader(TensorDataset(x, torch.arange(20) % 2), batch_size=6, shuffle=True)

    module = PairDataModule(UserData(), pairs_per_epoch=10, batch_size=4)
    module.setup("fit")
    x1, x2, same = _epoch(module.train_dataloader())
    assert len(same) == 10 and int(same.sum()) == 5
    # the label of a row of arange is (row[0] / 2) % 2
    assert torch.equal(same, (((x1[:, 0] / 2) % 2) == ((x2[:, 0] / 2) % 2)).float())
    assert module.val_dataloader() == []


def test_pair_module_refusals() -> None:
    with pytest.raises(TypeError, match="`base` must be a LightningDataModule"):
        PairDataModule(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`positive_fraction` must be < 1\.0"):
        PairDataModule(DigitsDataModule(), positive_fraction=1.0)
    with pytest.raises(ValueError, match="`pairs_per_epoch` must be >= 1"):
        PairDataModule(DigitsDataModule(), pairs_per_epoch=0)
    single = PairDataModule(DigitsDataModule(classes=[3]))
    with pytest.raises(ValueError, match="fewer than two classes"):
        single.setup("fit")
