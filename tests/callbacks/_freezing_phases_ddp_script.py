"""A metric-driven LayerFreezer fit with restore-best, run by ``test_freezing_phases_ddp.py`` on 2 CPU processes.

``python _freezing_phases_ddp_script.py OUT_DIR 2`` runs ``strategy="ddp"`` (Lightning re-launches this script for
rank 1); ``run(out_dir, devices=1)`` is the single-process reference with the same global batch. Each rank logs its
own score (``sync_dist=False``): rank 0's plateaus at epochs 3 and 6, rank 1's keeps improving, so ranks that
decided alone would disagree. Each rank saves ``devices{D}-rank{R}.pt``: the state at the end of every epoch
(after validation, so after a restore), the param group names and the epochs the steps ran at.
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
SCORES = {
    0: [
        3.0,
        1.0,
        2.0,
        2.5,
        0.5,
        0.6,
        0.7,
        0.8,
    ],  # plateaus: steps due at epochs 4 and 7 (best: epochs 1 and 4)
    1: [3.0, 1.0, 0.9, 0.8, 0.4, 0.3, 0.2, 0.1],  # never plateaus
}


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(
            OrderedDict(
                hidden1=nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()),
                hidden2=nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
                hidden3=nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
                output=nn.Linear(8, 3),
            )
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("score", SCORES[self.global_rank][self.current_epoch])

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.97**t)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Record(Callback):
    def __init__(self) -> None:
        self.epochs: list[dict[str, Tensor]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


class Data(pl.LightningDataModule):
    """Rank r of R gets samples r, r+R, ... so each global batch of 8 is the single-process batch, split in two."""

    def _loader(self, n: int) -> DataLoader:
        gen = torch.Generator().manual_seed(0)
        dataset = TensorDataset(torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen))
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader(32)

    def val_dataloader(self) -> DataLoader:
        return self._loader(8)


def run(out_dir: str | Path, devices: int) -> None:
    out = Path(out_dir)
    record = Record()
    freezer = LayerFreezer(
        "hidden[1-3]",
        unfreeze=["hidden3", {"pattern": "hidden2", "lr": 0.05}],
        milestones="metric",
        monitor="score",
        patience=2,
        restore_best=True,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=DDPStrategy(find_unused_parameters=False) if devices > 1 else "auto",
        max_epochs=len(SCORES[0]),
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=out / f"root{devices}",
        callbacks=[freezer, record],
    )
    model = Net()
    trainer.fit(model, datamodule=Data())
    result = {
        "epochs": record.epochs,
        "groups": [g.get("name") for g in trainer.optimizers[0].param_groups],
        "applied": [rec["epoch"] for rec in freezer.state_dict()["unfrozen"]],
        "world_size": trainer.world_size,
    }
    torch.save(result, out / f"devices{devices}-rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], int(sys.argv[2]))
