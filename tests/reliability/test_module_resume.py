"""Resuming DNNClassifier mid-epoch: the epoch's logged train metrics equal those of the uninterrupted run.

``python test_module_resume.py OUT_DIR 2`` runs the same check as a 2-process CPU DDP job (gloo); the ``ddp``
test below launches it and compares what each rank saved.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_dnn.data import ArrayDataModule
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP
from tests.ddp_utils import run_ddp_script
from tests.trainer_utils import quiet_trainer

EPOCHS, SAMPLES, BATCH = 2, 240, 32  # one process: 7 full batches and a ragged one of 16 per epoch
TRAIN_KEYS = ("train_loss", "train_acc", "train_penalty")


class _EpochMetrics(pl.Callback):
    """The train metrics each epoch logs, by epoch (a plain callback's epoch-end hook sees them)."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, dict[str, float]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.by_epoch[trainer.current_epoch] = {k: float(metrics[k]) for k in TRAIN_KEYS if k in metrics}


def _data() -> ArrayDataModule:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(SAMPLES) % 3
    x = torch.randn(SAMPLES, 6, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 6).float()
    return ArrayDataModule(x, y, batch_size=BATCH, seed=1)


def _fit(root: Path, ckpt_path: Path | None = None, save: bool = False, **kwargs: Any) -> dict[int, Any]:
    """Fit 2 epochs (saving a checkpoint after every step with ``save``); the train metrics of each epoch."""
    recorder = _EpochMetrics()
    callbacks: list[pl.Callback] = [recorder]
    if save:
        saver = ModelCheckpoint(dirpath=root / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1)
        callbacks.append(saver)
    trainer = quiet_trainer(root, max_epochs=EPOCHS, callbacks=callbacks, enable_checkpointing=save, **kwargs)
    torch.manual_seed(0)
    model = DNNClassifier(MLP(6, (16,), 3), optimizer="sgd", lr=0.2, l2=1e-3)
    trainer.fit(model, datamodule=_data(), ckpt_path=ckpt_path)
    return recorder.by_epoch


def _resume_all(root: Path, steps: list[int], steps_per_epoch: int, **kwargs: Any) -> dict[str, Any]:
    """The uninterrupted run's metrics and, for each step, those of a run resumed from that step's checkpoint."""
    results: dict[str, Any] = {"reference": _fit(root / "full", save=True, **kwargs)}
    for step in steps:
        ckpt = root / "full" / "ckpt" / f"step={step}.ckpt"
        results[f"step{step}"] = _fit(root / f"resume{step}", ckpt_path=ckpt, **kwargs)
    results["steps"], results["steps_per_epoch"] = steps, steps_per_epoch
    return results


def _mismatches(results: dict[str, Any]) -> tuple[list[Any], int]:
    """Every (step, epoch, key, resumed, reference) that differs by more than 1e-6; the number of resumes."""
    reference, out = results["reference"], []
    assert sorted(reference) == list(range(EPOCHS)) and set(reference[0]) == set(TRAIN_KEYS)
    for step in results["steps"]:
        resumed, epoch = results[f"step{step}"], step // results["steps_per_epoch"]
        assert sorted(resumed) == list(range(epoch, EPOCHS)), step  # resumed in epoch `epoch`
        out += [
            (step, e, key, resumed[e][key], reference[e][key])
            for e in range(epoch, EPOCHS)
            for key in TRAIN_KEYS
            if abs(resumed[e][key] - reference[e][key]) > 1e-6
        ]
    return out, len(results["steps"])


def test_mid_epoch_resume_logs_the_uninterrupted_epoch_metrics(tmp_path: Path) -> None:
    """Resume at 6 mid-epoch steps (3 per epoch): every later epoch logs the uninterrupted run's train metrics."""
    results = _resume_all(tmp_path, [2, 4, 7, 10, 13, 15], steps_per_epoch=8)  # not 8, 16: an epoch's end
    mismatches, total = _mismatches(results)
    assert not mismatches, f"{len({m[0] for m in mismatches})}/{total} resumes differ: {mismatches}"


def test_restored_sums_are_only_for_the_resumed_fit(tmp_path: Path) -> None:
    """A mid-epoch checkpoint loaded with load_from_checkpoint, or a fit that crashed mid-epoch, leaves no
    stale sums: the next fresh fit logs what a model with the same weights logs."""
    _fit(tmp_path / "full", save=True)
    loaded = DNNClassifier.load_from_checkpoint(tmp_path / "full" / "ckpt" / "step=3.ckpt")

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == 3:
                raise RuntimeError("crash")

    crashed = DNNClassifier(MLP(6, (16,), 3), optimizer="sgd", lr=0.2, l2=1e-3)
    with pytest.raises(RuntimeError, match="crash"):
        quiet_trainer(tmp_path / "crash", max_epochs=1, callbacks=[Crash()]).fit(crashed, datamodule=_data())
    for model in (loaded, crashed):
        twin = DNNClassifier(MLP(6, (16,), 3), optimizer="sgd", lr=0.2, l2=1e-3)
        twin.load_state_dict(model.state_dict())
        logged = []
        for candidate in (model, twin):
            recorder = _EpochMetrics()
            quiet_trainer(tmp_path / "again", max_epochs=1, callbacks=[recorder]).fit(candidate, datamodule=_data())
            logged.append(recorder.by_epoch[0])
        assert logged[0] == logged[1]


@pytest.mark.ddp
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_mid_epoch_resume_under_ddp_logs_the_global_epoch_metrics(tmp_path: Path) -> None:
    """2 processes: the checkpoint holds the sums of both ranks, so the resumed epoch's global means match."""
    run_ddp_script(Path(__file__), tmp_path)
    for rank in (0, 1):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        mismatches, total = _mismatches(results)
        assert not mismatches, f"rank {rank}: {len({m[0] for m in mismatches})}/{total} differ: {mismatches}"


if __name__ == "__main__":  # the DDP job: python test_module_resume.py OUT_DIR WORLD_SIZE
    out, world_size = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    # each rank serves 120 samples: 3 full batches and a ragged one of 24 per epoch
    ddp = _resume_all(out, [1, 2, 3, 6], steps_per_epoch=4, devices=world_size, strategy="ddp")
    rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
    torch.save(ddp, out / f"rank{rank}.pt")
