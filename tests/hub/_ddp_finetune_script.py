"""One rank of the 2-process DDP fine-tune (run by test_ddp_finetune.py; not collected by pytest).

Usage: LOCAL_RANK=R NODE_RANK=0 python _ddp_finetune_script.py SOURCE ENDPOINT CACHE WORKDIR

Lightning sees ``LOCAL_RANK`` and joins the process group the launcher set up (``MASTER_ADDR``/``MASTER_PORT``)
instead of spawning ranks itself. Inside the LightningModule's ``setup`` hook (the process group exists by then)
every rank calls ``load_pretrained(SOURCE, include="hidden[12]", into=self.net)`` with one cache shared by both
ranks, so rank 0 downloads and rank 1 reads the cache. ``LayerFreezer("hidden[0-9]+")`` freezes the loaded layers
and the new 5-way head trains for 2 epochs on digits 5-9.

Each rank writes ``<WORKDIR>/rank<R>-initial.safetensors`` (the network right after the load, before training),
``rank<R>-final.safetensors`` (after training) and ``rank<R>-report.json`` (the load report).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from safetensors.torch import save_file

from lightning_dnn.callbacks import LayerFreezer
from lightning_dnn.data import DigitsDataModule
from lightning_dnn.hub import load_pretrained
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP


def _save(net: torch.nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}, str(path))


class FineTune(DNNClassifier):
    """A DNNClassifier that pulls its pretrained hidden layers from the Hub in ``setup``."""

    def __init__(self, net: MLP, source: str, endpoint: str, cache: Path, workdir: Path) -> None:
        super().__init__(net, optimizer="adam", lr=1e-2)
        self._source, self._endpoint, self._cache, self._workdir = source, endpoint, cache, workdir

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        assert torch.distributed.is_initialized(), "setup must run after the process group exists"
        _, report = load_pretrained(
            self._source, endpoint=self._endpoint, cache_dir=self._cache, include="hidden[12]", into=self.net
        )
        rank = self.global_rank
        (self._workdir / f"rank{rank}-report.json").write_text(json.dumps(dataclasses.asdict(report)))
        _save(self.net, self._workdir / f"rank{rank}-initial.safetensors")


def main() -> None:
    source, endpoint, cache, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    pl.seed_everything(0, verbose=False)
    net = MLP(64, (100, 50), 5, activation="elu", init="he_normal", norm="batch")
    model = FineTune(net, source, endpoint, cache, workdir)
    data = DigitsDataModule(classes=[5, 6, 7, 8, 9], batch_size=32, seed=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        num_nodes=1,
        strategy="ddp",
        max_epochs=2,
        callbacks=[LayerFreezer("hidden[0-9]+")],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    _save(model.net, workdir / f"rank{trainer.global_rank}-final.safetensors")
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
