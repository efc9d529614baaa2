"""The data modules inside a Lightning Trainer: learning, batch counts, epoch order sync, resume, DDP sharding."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.nn import functional as F

from lightning_dnn.data import ArrayDataModule, DeviceBatchLoader, DigitsDataModule, EpochSampler
from tests.trainer_utils import quiet_trainer


class TinyClassifier(pl.LightningModule):
    """A linear softmax classifier that records what it is fed."""

    def __init__(self, in_features: int, num_classes: int, lr: float = 0.5) -> None:
        super().__init__()
        self.layer = nn.Linear(in_features, num_classes)
        self.lr = lr
        self.train_tags: dict[int, list[torch.Tensor]] = defaultdict(list)
        self.val_batches: dict[int, int] = defaultdict(int)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.train_tags[self.current_epoch].append(x[:, 0].detach().long().cpu())
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        self.val_batches[self.current_epoch] += 1

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean(), batch_size=len(y))

    def predict_step(self, batch, batch_idx):
        return batch[0][:, 0]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def epoch_orders(self):
        return {e: torch.cat(t) for e, t in sorted(self.train_tags.items())}


def make_trainer(tmp_path, **kwargs):
    return quiet_trainer(tmp_path, **{"num_sanity_val_steps": 0, **kwargs})


def tagged_module(n=40, **kwargs):
    x = np.zeros((n, 2), dtype=np.float32)
    x[:, 0] = np.arange(n)
    return ArrayDataModule(x, np.arange(n) % 2, x_test=x[:10], y_test=np.arange(10) % 2, **kwargs)


def test_fit_digits_learns_with_the_right_batch_counts(tmp_path):
    dm = DigitsDataModule(batch_size=64, val_split=0.1, seed=0)
    model = TinyClassifier(dm.num_features, dm.num_classes, lr=0.5)
    trainer = make_trainer(tmp_path, max_epochs=4)
    trainer.fit(model, datamodule=dm)
    n_train = 1438 - round(0.1 * 1438)
    assert [len(t) for t in model.train_tags.values()] == [math.ceil(n_train / 64)] * 4
    assert sorted(torch.cat(model.train_tags[0]).shape) == [n_train]
    assert dict(model.val_batches) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert trainer.num_training_batches == math.ceil(n_train / 64)
    accuracy = trainer.test(model, datamodule=dm, verbose=False)[0]["test_acc"]
    assert accuracy > 0.8  # chance is 0.1


def test_lightning_keeps_the_epoch_in_sync(tmp_path):
    dm = tagged_module(batch_size=8, seed=4)
    model = TinyClassifier(2, 2, lr=0.0)
    make_trainer(tmp_path, max_epochs=3).fit(model, datamodule=dm)
    orders = model.epoch_orders()
    sampler = EpochSampler(40, seed=4)
    for epoch, order in orders.items():
        assert order.tolist() == sampler.indices(epoch).tolist()
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert model.val_batches == {}  # val_split=0: no validation loader, no validation


def test_dataloader_path_follows_the_same_orders(tmp_path):
    dm = tagged_module(batch_size=8, seed=4, device_resident=False)
    model = TinyClassifier(2, 2, lr=0.0)
    make_trainer(tmp_path, max_epochs=2).fit(model, datamodule=dm)
    sampler = EpochSampler(40, seed=4)
    assert {e: o.tolist() for e, o in model.epoch_orders().items()} == {
        e: sampler.indices(e).tolist() for e in (0, 1)
    }


def test_resume_at_epoch_boundary_sees_the_same_order(tmp_path):
    full = TinyClassifier(2, 2, lr=0.0)
    make_trainer(tmp_path, max_epochs=3).fit(full, datamodule=tagged_module(batch_size=8))

    first = TinyClassifier(2, 2, lr=0.0)
    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(first, datamodule=tagged_module(batch_size=8))
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = TinyClassifier(2, 2, lr=0.0)
    make_trainer(tmp_path, max_epochs=3).fit(
        resumed, datamodule=tagged_module(batch_size=8), ckpt_path=tmp_path / "epoch1.ckpt"
    )
    expected = full.epoch_orders()
    got = {**first.epoch_orders(), **resumed.epoch_orders()}
    assert sorted(resumed.epoch_orders()) == [1, 2]
    assert all(torch.equal(got[e], expected[e]) for e in range(3))


def test_resume_mid_epoch_continues_with_the_next_unseen_batch(tmp_path):
    full = TinyClassifier(2, 2, lr=0.0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=7, save_top_k=-1)
    make_trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        full, datamodule=tagged_module(batch_size=8)
    )  # 5 batches per epoch: step 7 is batch 2 of epoch 1
    resumed = TinyClassifier(2, 2, lr=0.0)
    make_trainer(tmp_path, max_epochs=2).fit(
        resumed, datamodule=tagged_module(batch_size=8), ckpt_path=tmp_path / "epoch=1-step=7.ckpt"
    )
    assert sorted(resumed.train_tags) == [1] and len(resumed.train_tags[1]) == 3
    assert torch.equal(torch.cat(resumed.train_tags[1]), torch.cat(full.train_tags[1][2:]))


def test_predict_returns_the_test_split_in_order(tmp_path):
    dm = tagged_module(eval_batch_size=4)
    outputs = make_trainer(tmp_path).predict(TinyClassifier(2, 2), datamodule=dm)
    assert len(outputs) == 3 and torch.cat(outputs).long().tolist() == list(range(10))


def test_loaders_follow_the_trainers_device_and_rank():
    shards = []
    for rank in range(2):
        dm = tagged_module(n=41, batch_size=8, seed=1)
        dm.setup()
        dm.trainer = SimpleNamespace(
            strategy=SimpleNamespace(root_device=torch.device("cpu")), global_rank=rank, world_size=2
        )
        loader = dm.train_dataloader()
        assert isinstance(loader, DeviceBatchLoader)
        loader.set_epoch(0)
        shards.append(torch.cat([b[0][:, 0] for b in loader]).long().tolist())
        assert len(loader) == math.ceil(21 / 8)
    assert len(shards[0]) == len(shards[1]) == 21
    assert set(shards[0]) | set(shards[1]) == set(range(41))
    assert len(set(shards[0]) & set(shards[1])) <= 1  # one index is repeated as padding
    dm = tagged_module(n=41, batch_size=8)
    dm.setup()
    dm.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("meta")), global_rank=0, world_size=1
    )
    assert dm.train_dataloader().tensors[0].device.type == "meta"
    dm.teardown("fit")  # releases the device copies


@pytest.mark.parametrize("augment", [None, {"degrees": 10, "translate": 0.1}])
def test_image_modules_fit_with_and_without_augmentation(tmp_path, augment):
    dm = DigitsDataModule(batch_size=128, flatten=False, augment=augment, samples_per_class=20)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    class Wrapped(TinyClassifier):
        def __init__(self):
            super().__init__(64, 10)
            self.layer = model

    wrapped = Wrapped()
    make_trainer(tmp_path, max_epochs=1).fit(wrapped, datamodule=dm)
    assert [len(t) for t in wrapped.train_tags.values()] == [math.ceil(200 / 128)]
    assert dm.has_random_augmentation == (augment is not None)
