"""A metric-driven LayerFreezer fit with restore-best, run by ``test_freezing_phases_ddp.py`` on 2 CPU processes.

``python _freezing_phases_ddp_script.py OUT_DIR 2`` runs ``strategy="ddp"`` (Lightning re-launches this script for
rank 1); ``run(out_dir, devices=1)`` is the single-process reference with the same global batch. Each rank logs its
own score (``sync_dist=False``): rank 0's plateaus at epochs 3 and 6, rank 1's keeps improving, so ranks that
decided alone would disagree. Each rank saves ``devices{D}-rank{R}.pt``: the state at the end of every epoch
(after validation, so after a restore), the param group names and the epochs the steps ran at.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from lightning_dnn.callbacks.freezing import LayerFreezer
from tests.callbacks import _freezing_ddp_script as freezing_ddp
from tests.trainer_utils import quiet_trainer_kwargs

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


class Net(freezing_ddp.Net):
    """The network of ``_freezing_ddp_script.py``; each rank logs its own scripted score."""

    def score(self) -> float:
        return SCORES[self.global_rank][self.current_epoch]


def run(out_dir: str | Path, devices: int) -> None:
    out = Path(out_dir)
    record = freezing_ddp.Record()
    freezer = LayerFreezer(
        "hidden[1-3]",
        unfreeze=["hidden3", {"pattern": "hidden2", "lr": 0.05}],
        milestones="metric",
        monitor="score",
        patience=2,
        restore_best=True,
    )
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(
            out / f"root{devices}",
            devices=devices,
            strategy=DDPStrategy(find_unused_parameters=False) if devices > 1 else "auto",
            max_epochs=len(SCORES[0]),
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            callbacks=[freezer, record],
        )
    )
    model = Net()
    trainer.fit(model, datamodule=freezing_ddp.Data(train_size=32, val_size=8))
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
