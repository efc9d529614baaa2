"""Pretraining fits run by ``test_pairs_ddp.py`` on 2 CPU processes and in-process.

A SiamesePretrainer on PairDataModule, then a layer-wise Autoencoder (``ddp_find_unused_parameters_true``).

``python _pairs_ddp_script.py OUT_DIR 2`` runs ``strategy="ddp"`` (Lightning re-launches this script for rank 1);
``run(out_dir, devices=1)`` is the single-process reference with the same global batch. Each rank saves
``devices{D}-rank{R}.pt``: the batches it trained on and the final weights; the autoencoder's weights at the end
of each epoch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy

from lightning_dnn.data import ArrayDataModule
from lightning_dnn.nn import MLP
from lightning_dnn.pretrain import Autoencoder, PairDataModule, SiamesePretrainer
from tests.trainer_utils import quiet_trainer_kwargs

GLOBAL_BATCH = 16


class Record(Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, ...]] = []
        self.epochs: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int
    ) -> None:
        self.batches.append(tuple(t.detach().clone() for t in batch))


def data(devices: int) -> PairDataModule:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 6, generator=gen), torch.arange(90) % 3
    base = ArrayDataModule(x.numpy(), y.numpy(), scaling=None)
    return PairDataModule(base, pairs_per_epoch=64, batch_size=GLOBAL_BATCH // devices, seed=7)


def trainer(out: Path, devices: int, record: Record, find_unused: bool) -> pl.Trainer:
    return pl.Trainer(
        **quiet_trainer_kwargs(
            out / f"root{devices}",
            devices=devices,
            strategy=DDPStrategy(find_unused_parameters=find_unused) if devices > 1 else "auto",
            max_epochs=2,
            num_sanity_val_steps=0,
            callbacks=[record],
        )
    )


def layerwise_autoencoder() -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(MLP(6, (8, 4), 3), layerwise=True, optimizer="adam", lr=0.05)


def run(out_dir: str | Path, devices: int) -> None:
    out = Path(out_dir)
    record = Record()
    fit = trainer(out, devices, record, find_unused=False)
    torch.manual_seed(0)
    model = SiamesePretrainer(MLP(6, (8, 4), 3), head_hidden=4, optimizer="sgd", lr=0.1)
    fit.fit(model, datamodule=data(devices))

    autoencoder = layerwise_autoencoder()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=gen)
    arrays = ArrayDataModule(
        x.numpy(), (torch.arange(64) % 2).numpy(), scaling=None, batch_size=GLOBAL_BATCH // devices
    )
    layerwise = Record()
    trainer(out, devices, layerwise, find_unused=True).fit(autoencoder, datamodule=arrays)
    result = {
        "batches": record.batches,
        "final": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "world_size": fit.world_size,
        "layerwise": layerwise.epochs,
    }
    torch.save(result, out / f"devices{devices}-rank{fit.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], int(sys.argv[2]))
