"""The same behaviour on every device this machine has: the CPU always, CUDA when a GPU is present.

CI has no GPU, so the ``cuda`` cases skip there; ``bench/gpu_check.sh`` runs them on a lent GPU. On CUDA the
mixed-precision case is ``16-mixed`` (a GradScaler: gradient clipping must see unscaled gradients), on the CPU
``bf16-mixed``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from lightning_dnn import DNNClassifier
from lightning_dnn.callbacks import FeatureCache, GradientClipping, LayerFreezer, MaxNorm
from lightning_dnn.data import ArrayDataModule
from lightning_dnn.nn import MLP
from tests.trainer_utils import quiet_trainer

DEVICES = [
    pytest.param("cpu"),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


def _data(seed: int = 0, n: int = 256) -> ArrayDataModule:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=gen)
    y = (x[:, :4].argmax(dim=1) + (x[:, 4] > 1).long()) % 4  # learnable
    return ArrayDataModule(x, y, batch_size=32, seed=seed)


def _model(seed: int = 0, lr: float = 1e-2) -> DNNClassifier:
    torch.manual_seed(seed)
    return DNNClassifier(MLP(20, (32, 32, 16), 4, activation="elu", norm="batch"), optimizer="adam", lr=lr)


def _fit(device: str, model: pl.LightningModule, data: Any, callbacks: list[Callback], tmp_path: Path,
         **kwargs: Any) -> pl.Trainer:
    accelerator = "gpu" if device == "cuda" else "cpu"
    options = {"accelerator": accelerator, "max_epochs": 3, "num_sanity_val_steps": 0, **kwargs}
    trainer = quiet_trainer(tmp_path, callbacks=callbacks, **options)
    trainer.fit(model, datamodule=data)
    return trainer


class _Batches(Callback):
    """The device of every training batch and the training loss of every epoch."""

    def __init__(self) -> None:
        self.devices: set[str] = set()
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.devices.update(t.device.type for t in batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.losses.append(float(trainer.callback_metrics["train_loss"]))


class _ClippedNorms(Callback):
    """The global 2-norm of the gradients each optimizer step sees (placed after GradientClipping)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


@pytest.mark.parametrize("device", DEVICES)
def test_batches_live_on_the_device_and_the_model_learns(device: str, tmp_path: Path) -> None:
    data, batches = _data(), _Batches()
    trainer = _fit(device, _model(), data, [batches], tmp_path, max_epochs=4)
    assert batches.devices == {device}  # the data module moved its tensors once; no per-batch host copy
    assert trainer.train_dataloader.tensors[0].device.type == device
    assert batches.losses[-1] < 0.7 * batches.losses[0]


@pytest.mark.parametrize("device", DEVICES)
def test_max_norm_and_clipping_hold_under_mixed_precision(device: str, tmp_path: Path) -> None:
    recorder = _ClippedNorms()
    model = _model(lr=5e-2)
    precision = "16-mixed" if device == "cuda" else "bf16-mixed"
    _fit(device, model, _data(1), [GradientClipping(norm=0.1), recorder, MaxNorm(0.5)], tmp_path,
         precision=precision)
    finite = [n for n in recorder.norms if math.isfinite(n)]  # a GradScaler's overflow steps are its to skip
    assert len(finite) >= 0.8 * len(recorder.norms) and finite
    assert max(finite) <= 0.1 * (1 + 1e-4)  # clipped after unscaling, not 2**16 times too large
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            assert module.weight.norm(dim=1).max().item() <= 0.5 + 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_frozen_layers_keep_their_bits(device: str, tmp_path: Path) -> None:
    model = _model(2)
    before = {k: v.clone() for k, v in model.net.hidden1.state_dict().items()}
    _fit(device, model, _data(2), [LayerFreezer("hidden1")], tmp_path)
    after = model.net.hidden1.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key].cpu(), value), key  # weights and batch-norm statistics alike
    assert not torch.equal(model.net.hidden2.linear.weight.cpu(), _model(2).net.hidden2.linear.weight)


@pytest.mark.parametrize("storage", ["device", "pinned", "disk"])
@pytest.mark.parametrize("device", DEVICES)
def test_feature_cache_trains_like_live_in_every_storage(device: str, storage: str, tmp_path: Path) -> None:
    live = _model(3)
    _fit(device, live, _data(3), [LayerFreezer("hidden[12]")], tmp_path)
    cached, cache = _model(3), FeatureCache(storage=storage, cache_dir=tmp_path / "fc")  # type: ignore[arg-type]
    batches = _Batches()
    _fit(device, cached, _data(3), [LayerFreezer("hidden[12]"), cache, batches], tmp_path)
    assert cache.current_storage == storage
    assert cache.current_boundary is not None
    assert batches.devices == {device}  # pinned and disk caches are served to the device batch by batch
    tolerance = 1e-6 if device == "cpu" else 1e-4  # on a GPU the trunk's batch size changes the matmul kernels
    for (key, a), b in zip(cached.state_dict().items(), live.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance, msg=key)
