"""NoOpProfiler: Lightning's do-nothing profiler without the per-call cost; the CLI's default."""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning.profilers import PassThroughProfiler, SimpleProfiler

from lightning_dnn import DNNClassifier
from lightning_dnn.cli import DNNCLI
from lightning_dnn.data import ArrayDataModule
from lightning_dnn.profiler import NoOpProfiler
from tests.trainer_utils import quiet_trainer


def _fit(profiler: object, tmp_path: Path) -> DNNClassifier:
    torch.manual_seed(0)
    model = DNNClassifier(torch.nn.Linear(6, 3), num_classes=3, optimizer="adam", lr=0.05)
    data = ArrayDataModule(torch.randn(96, 6), torch.randint(0, 3, (96,)), batch_size=16)
    quiet_trainer(tmp_path, max_epochs=2, profiler=profiler).fit(model, datamodule=data)
    return model


def test_training_is_unchanged_and_nothing_is_built_per_call(tmp_path: Path) -> None:
    profiler = NoOpProfiler()
    contexts = {id(profiler.profile(f"action {i}")) for i in range(5)}
    assert len(contexts) == 1 and isinstance(profiler, PassThroughProfiler)
    a, b = _fit(profiler, tmp_path), _fit(None, tmp_path)  # describe() and teardown() at the end work as well
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_cli_uses_it_unless_the_config_names_a_profiler(tmp_path: Path) -> None:
    common = [
        "--model.net", "torch.nn.Linear", "--model.net.in_features", "64", "--model.net.out_features", "10",
        "--data", "lightning_dnn.data.DigitsDataModule", "--trainer.default_root_dir", str(tmp_path),
    ]
    assert type(DNNCLI(args=common, run=False).trainer.profiler) is NoOpProfiler
    chosen = DNNCLI(args=[*common, "--trainer.profiler", "simple"], run=False).trainer.profiler
    assert isinstance(chosen, SimpleProfiler)
