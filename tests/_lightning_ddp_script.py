"""DNNClassifier + MaxNorm + LayerFreezer in a ``lightning.pytorch`` Trainer, run by ``test_lightning_packages.py``.

``python _lightning_ddp_script.py OUT_DIR 2`` runs ``strategy="ddp"`` on 2 CPU processes (Lightning re-launches this
script for rank 1); ``run(out_dir, devices=1)`` is the single-process reference with the same global batch. Each
rank saves ``rank{R}.pt``: the Trainer's module name and the final weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_dnn import DNNClassifier
from lightning_dnn._lightning import LightningDataModule
from lightning_dnn.callbacks import LayerFreezer, MaxNorm
from lightning_dnn.nn import MLP
from tests.trainer_utils import quiet_trainer_kwargs

GLOBAL_BATCH = 8


class Data(LightningDataModule):
    """Rank r of R gets samples r, r+R, ... (no shuffling): each global batch holds the single-process batch."""

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(64, 6, generator=gen)
        dataset = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=GLOBAL_BATCH // world, sampler=sampler)


def run(out_dir: str | Path, devices: int) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(
        **quiet_trainer_kwargs(
            out,
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            max_epochs=3,
            use_distributed_sampler=False,
            callbacks=[MaxNorm(1.0, pattern="hidden.*"), LayerFreezer("hidden1", unfreeze={1: "hidden1"})],
        )
    )
    torch.manual_seed(0)
    model = DNNClassifier(MLP(6, (16, 16), 3), optimizer="momentum", lr=0.05)
    trainer.fit(model, datamodule=Data())
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"trainer": type(trainer).__module__, "weights": weights}, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], int(sys.argv[2]))
