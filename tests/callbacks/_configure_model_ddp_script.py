"""A LayerFreezer fit of a LightningModule that builds its layers in ``configure_model``, under DDP and in-process.

``python _configure_model_ddp_script.py OUT_DIR 2`` runs ``strategy="ddp"`` without ``find_unused_parameters``
(Lightning re-launches this script for rank 1); ``run(out_dir, devices=1)`` is the single-process reference with the
same global batch. The backbone is frozen when DDP wraps the model (so DDP must not register it: a registered
parameter that gets no gradient is DDP's unused-parameter error); its linear layers are unfrozen at epoch 1 (its
batch norm stays frozen, in eval mode: in training mode each rank would normalize with its own half-batch). Each rank saves
``devices{D}-rank{R}.pt``: the parameters and buffers at the end of every epoch, the ``requires_grad`` flags at
fit start and the optimizer's param group names.

:class:`LazyNet` is also the model of ``test_configure_model.py``.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_dnn.callbacks.freezing import LayerFreezer

GLOBAL_BATCH = 8
EPOCHS = 2


class LazyNet(pl.LightningModule):
    """``backbone`` (Linear, BatchNorm, ReLU, Linear, ReLU) and ``head`` created in ``configure_model``."""

    def __init__(self, scale: float = 0.5) -> None:
        super().__init__()
        self.scale = scale
        self.backbone: nn.Module | None = None
        self.head: nn.Module | None = None
        self.configure_calls = 0

    def configure_model(self) -> None:
        self.configure_calls += 1
        if self.backbone is not None:  # Lightning calls this hook for every fit/validate/test: build once
            return
        gen = torch.Generator().manual_seed(0)
        self.backbone = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(6, 8), bn=nn.BatchNorm1d(8), act1=nn.ReLU(), fc2=nn.Linear(8, 8), act2=nn.ReLU()
            )
        )
        self.head = nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * self.scale)

    def forward(self, x: Tensor) -> Tensor:
        assert self.backbone is not None and self.head is not None
        return self.head(self.backbone(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)


class Record(Callback):
    """The ``requires_grad`` flags at fit start (after the strategy's wrap) and the state after every epoch."""

    def __init__(self) -> None:
        self.requires_grad: dict[str, bool] = {}
        self.epochs: list[dict[str, Tensor]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.requires_grad = {n: p.requires_grad for n, p in pl_module.named_parameters()}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def loader(n: int, world: int = 1, rank: int = 0) -> DataLoader:
    """Fixed data; rank r of R gets samples r, r+R, ... so each global batch holds the single-process samples."""
    gen = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen))
    sampler: DistributedSampler[tuple[Tensor, ...]] = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=False
    )
    return DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler)


class Data(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        assert self.trainer is not None
        return loader(32, self.trainer.world_size, self.trainer.global_rank)


def run(out_dir: str | Path, devices: int) -> None:
    out = Path(out_dir)
    record = Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=DDPStrategy(find_unused_parameters=False) if devices > 1 else "auto",
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=out / f"root{devices}",
        callbacks=[LayerFreezer("backbone", unfreeze={1: r"backbone\.fc[12]"}, unfrozen_lr=0.05), record],
    )
    model = LazyNet()
    trainer.fit(model, datamodule=Data())
    result = {
        "requires_grad": record.requires_grad,
        "epochs": record.epochs,
        "groups": [g.get("name") for g in trainer.optimizers[0].param_groups],
        "world_size": trainer.world_size,
    }
    torch.save(result, out / f"devices{devices}-rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], int(sys.argv[2]))
