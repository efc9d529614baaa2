"""A user's own LightningModule, importable as ``tests._user_module.MyModule`` by the CLI tests."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn


class MyModule(pl.LightningModule):
    """Not a DNNClassifier: its own arguments (one named like DNNClassifier's ``lr``, with another default)."""

    def __init__(self, hidden: int = 16, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
