"""A LayerFreezer + FeatureCache fit, run by ``test_feature_cache_ddp.py`` on 2 CPU processes (DDP, gloo).

``python _feature_cache_ddp_script.py OUT_DIR 2`` runs ``strategy="ddp"`` (Lightning re-launches this script for
rank 1) with the cache on disk under ``OUT_DIR/fc``; ``run(out_dir, devices=1, cached=False)`` is the
single-process live reference with the same global batch. Each process saves ``{mode}-devices{D}-rank{R}.pt``:
the final parameters, the samples its trunk layers processed, and the boundary in use.

60 samples: each rank builds 30 in chunks of 8 (the last chunk is padded for the all_gather), and trains on
batches of 8 + 8 = the single process's 16 (the DeviceBatchLoader gives rank r the positions r, r + 2, ... of
the epoch's permutation, so the two halves of a global batch are the single-process batch).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy

from lightning_dnn.callbacks import LayerFreezer
from lightning_dnn.callbacks.feature_cache import FeatureCache
from lightning_dnn.data import ArrayDataModule
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP

N, D, C, GLOBAL_BATCH = 60, 10, 3, 16
TRUNK = ("net.hidden1.linear", "net.hidden2.linear")


def make_model() -> DNNClassifier:
    torch.manual_seed(0)
    return DNNClassifier(MLP(D, (12, 12, 12), C), optimizer="adam", lr=1e-2)


def make_data(devices: int) -> ArrayDataModule:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, D, generator=gen), torch.randint(0, C, (N,), generator=gen)
    return ArrayDataModule(x, y, batch_size=GLOBAL_BATCH // devices, seed=3)


def run(out_dir: str | Path, devices: int, *, cached: bool = True) -> None:
    out = Path(out_dir)
    model = make_model()
    counts = dict.fromkeys(TRUNK, 0)

    def counter(name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            counts[name] += len(output)

        return hook

    for name in TRUNK:
        model.get_submodule(name).register_forward_hook(counter(name))
    cache = FeatureCache(storage="disk", cache_dir=out / "fc", batch_size=8)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=DDPStrategy(find_unused_parameters=False) if devices > 1 else "auto",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=out / f"root{devices}",
        callbacks=[LayerFreezer("hidden[12]"), *([cache] if cached else [])],
    )
    trainer.fit(model, make_data(devices))
    result = {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "counts": counts,
        "boundary": cache.current_boundary,
        "storage": cache.current_storage,
        "world_size": trainer.world_size,
    }
    mode = "cached" if cached else "live"
    torch.save(result, out / f"{mode}-devices{devices}-rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], int(sys.argv[2]))
