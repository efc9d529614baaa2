"""EarlyStopping with restore_best_weights: the fit ends holding exactly the best epoch's weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn.callbacks.early_stopping import EarlyStopping, content_sha256
from tests.trainer_utils import quiet_trainer


class Scripted(pl.LightningModule):
    """Trains a small BN network; the validation metric ``score`` is ``script[epoch]``, whatever the weights."""

    def __init__(
        self, script: Sequence[float], *, seed: int = 0, features: int = 4, hidden: int = 6, classes: int = 2
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.script = list(script)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("score", self.script[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 16) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=gen), torch.randint(0, 2, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)


class EpochStates(Callback):
    """The model's state dict when each epoch's early-stopping check runs (place it before EarlyStopping)."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, Tensor]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.states[trainer.current_epoch] = {
            k: v.detach().clone() for k, v in pl_module.state_dict().items()
        }


def fit(
    tmp_path: Path,
    script: Sequence[float],
    stopper: EarlyStopping,
    *,
    max_epochs: int | None = None,
    ckpt_path: Path | None = None,
    checkpoint: ModelCheckpoint | None = None,
) -> tuple[Scripted, EpochStates, pl.Trainer]:
    model, states = Scripted(script), EpochStates()
    callbacks: list[Callback] = [states, stopper] + ([checkpoint] if checkpoint else [])
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=max_epochs or len(script),
        enable_checkpointing=checkpoint is not None,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    trainer.fit(model, loader(), loader(8), ckpt_path=ckpt_path)
    return model, states, trainer


def assert_state_equal(got: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key in got:
        assert torch.equal(got[key], expected[key]), key


def assert_state_differs(got: dict[str, Tensor], other: dict[str, Tensor]) -> None:
    assert any(not torch.equal(got[k], other[k]) for k in got)


MIN_SCRIPT = [0.9, 0.5, 0.3, 0.6, 0.7, 0.1]  # best 0.3 at epoch 2; patience 2 stops at epoch 4


@pytest.mark.parametrize("store", ["memory", "disk"])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_stopped_run_ends_with_the_best_epochs_weights(tmp_path: Path, store: str, mode: str) -> None:
    script = MIN_SCRIPT if mode == "min" else [-v for v in MIN_SCRIPT]
    stopper = EarlyStopping("score", mode=mode, patience=2, store=store)  # type: ignore[arg-type]
    model, states, trainer = fit(tmp_path, script, stopper)
    assert trainer.current_epoch == 5 and stopper.stopped_epoch == 4  # stopped before the last (best) value
    assert stopper.best_epoch == 2
    assert_state_equal(model.state_dict(), states.states[2])  # BN running statistics included
    assert_state_differs(model.state_dict(), states.states[4])


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_run_to_max_epochs_also_restores_the_best(tmp_path: Path, store: str) -> None:
    stopper = EarlyStopping("score", patience=10, store=store, check_on_train_epoch_end=False)  # type: ignore[arg-type]
    model, states, trainer = fit(tmp_path, [0.5, 0.2, 0.4, 0.6], stopper)
    assert not stopper.stopped_epoch and trainer.current_epoch == 4
    assert stopper.best_epoch == 1
    assert_state_equal(model.state_dict(), states.states[1])


def test_without_restore_behaves_like_lightning(tmp_path: Path) -> None:
    stopper = EarlyStopping("score", patience=2, restore_best_weights=False)
    model, states, _ = fit(tmp_path, MIN_SCRIPT, stopper)
    assert stopper.stopped_epoch == 4
    assert_state_equal(model.state_dict(), states.states[4])
    assert "best_weights" not in {k for k, v in stopper.state_dict().items() if v is not None}
    assert isinstance(stopper, pl.callbacks.EarlyStopping)


def test_disk_store_writes_an_atomic_safetensors_file_tied_to_the_run(tmp_path: Path) -> None:
    stopper = EarlyStopping("score", patience=2, store="disk")
    _, states, _ = fit(tmp_path, MIN_SCRIPT, stopper)
    state = stopper.state_dict()
    run_id = state["run_id"]
    path = tmp_path / f"best-weights-score-min-{run_id}.safetensors"
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".safetensors", ".tmp")] == [path.name]
    assert_state_equal(load_file(path), states.states[2])
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    sha256 = content_sha256(states.states[2])
    assert meta == {"epoch": "2", "step": str(3 * 4), "run_id": run_id, "sha256": sha256}
    assert (state["best_epoch"], state["best_weights_path"], state["store"]) == (2, str(path), "disk")
    assert state["best_weights_sha256"] == sha256


def test_disk_store_refuses_a_missing_or_corrupted_file_at_the_end(tmp_path: Path) -> None:
    class Corrupt(Callback):
        """Flips one byte of the best weights file (same size) just before the restore."""

        def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            path = Path(stopper.state_dict()["best_weights_path"])
            data = bytearray(path.read_bytes())
            data[-1] ^= 0xFF
            path.write_bytes(bytes(data))

    stopper = EarlyStopping("score", patience=2, store="disk")
    model, states = Scripted(MIN_SCRIPT), EpochStates()
    trainer = quiet_trainer(
        tmp_path, max_epochs=len(MIN_SCRIPT), num_sanity_val_steps=0, callbacks=[states, Corrupt(), stopper]
    )
    with pytest.raises(RuntimeError, match=r"cannot restore the best weights \(epoch 2.*content hash"):
        trainer.fit(model, loader(), loader(8))
    assert_state_equal(model.state_dict(), states.states[4])  # the last weights, not a corrupted best


def test_memory_store_keeps_the_weights_in_the_checkpoint_state(tmp_path: Path) -> None:
    stopper = EarlyStopping("score", patience=2)
    _, states, _ = fit(tmp_path, MIN_SCRIPT, stopper)
    state = stopper.state_dict()
    assert state["best_epoch"] == 2 and state["store"] == "memory"
    assert_state_equal(state["best_weights"], states.states[2])
    assert all(t.device.type == "cpu" for t in state["best_weights"].values())


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_resume_after_the_best_epoch_restores_it(tmp_path: Path, store: str) -> None:
    script = [0.9, 0.3, 0.5, 0.6, 0.7, 0.8]  # best at epoch 1, never stops (patience 10)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full, states, _ = fit(tmp_path, script, EarlyStopping("score", patience=10, store=store), checkpoint=ckpt)  # type: ignore[arg-type]
    assert_state_equal(full.state_dict(), states.states[1])

    stopper = EarlyStopping("score", patience=10, store=store)  # type: ignore[arg-type]
    resumed, _, _ = fit(tmp_path, script, stopper, ckpt_path=tmp_path / "ckpt" / "epoch=2.ckpt")
    assert stopper.best_epoch == 1
    assert_state_equal(resumed.state_dict(), states.states[1])


class WithExtraState(Scripted):
    def get_extra_state(self) -> Any:
        return {"note": "not a tensor"}

    def set_extra_state(self, state: Any) -> None:
        pass


def test_disk_store_rejects_non_tensor_state(tmp_path: Path) -> None:
    model = WithExtraState(MIN_SCRIPT)
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, num_sanity_val_steps=0, callbacks=[EarlyStopping("score", store="disk")]
    )
    with pytest.raises(TypeError, match=r"saves tensors only.*_extra_state.*use store='memory'"):
        trainer.fit(model, loader(), loader(8))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(store="cloud"), ValueError, "`store` must be one of \\['memory', 'disk'\\]"),
        (dict(store=None), TypeError, "`store` must be a string"),
        (dict(restore_best_weights="yes"), TypeError, "`restore_best_weights` must be a bool"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        EarlyStopping("score", **kwargs)
