"""A LayerFreezer + EarlyStopping fit, run by ``test_freezing_ddp.py`` on 2 CPU processes (DDP, gloo) and in-process.

``python _freezing_ddp_script.py OUT_DIR 2`` runs ``strategy="ddp"`` (Lightning re-launches this script for rank 1);
``run(out_dir, devices=1)`` is the single-process reference with the same global batch. Each rank saves
``rank{R}.pt``: the parameters and buffers at the end of every epoch and after the fit (EarlyStopping restores the
best epoch's weights), and the optimizer's param group names.

The schedule exercises what DDP gets wrong without LayerFreezer's own gradient sync: hidden1 (with batch norm) is
frozen throughout, hidden2 and hidden3 are frozen when DDP wraps the model (so DDP does not register them) and are
unfrozen at epochs 1 and 2. Gradient accumulation over 2 micro-batches checks the ``no_sync`` path.
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

from lightning_dnn.callbacks.early_stopping import EarlyStopping
from lightning_dnn.callbacks.freezing import LayerFreezer

GLOBAL_BATCH = 8
SCORES = [3.0, 1.0, 2.0]  # the validation metric by epoch: the best is epoch 1, restored at the end


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
        self.log("score", self.score())

    def score(self) -> float:
        """The scripted validation metric of this epoch."""
        return SCORES[self.current_epoch]

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
    """Fixed data; under DDP rank r of R gets samples r, r+R, r+2R, ... (a DistributedSampler without shuffling:
    Lightning's automatic one always shuffles training data), so each global batch of 8 is split into two halves
    of 4: the same 8 samples as the single-process batch."""

    def __init__(self, train_size: int = 64, val_size: int = 16) -> None:
        super().__init__()
        self.sizes = train_size, val_size

    def _loader(self, n: int) -> DataLoader:
        gen = torch.Generator().manual_seed(0)
        dataset = TensorDataset(torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen))
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.sizes[0])

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.sizes[1])


def run(out_dir: str | Path, devices: int) -> None:
    out = Path(out_dir)
    record = Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=DDPStrategy(find_unused_parameters=False) if devices > 1 else "auto",
        max_epochs=len(SCORES),
        accumulate_grad_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=out / f"root{devices}",
        callbacks=[
            LayerFreezer("hidden[1-3]", unfreeze={1: "hidden3", 2: "hidden2"}, unfrozen_lr=0.05),
            record,
            EarlyStopping("score", patience=5, store="disk"),
        ],
    )
    model = Net()
    trainer.fit(model, datamodule=Data())
    result = {
        "epochs": record.epochs,
        "final": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "groups": [g.get("name") for g in trainer.optimizers[0].param_groups],
        "world_size": trainer.world_size,
    }
    torch.save(result, out / f"devices{devices}-rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], int(sys.argv[2]))
