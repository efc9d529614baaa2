"""Bad input and configuration: each mistake ends in an error that names it, or a warning, never silence.

Data that does not fit the network (features, channels, labels), classes that cannot be learned, absurd label
values, and a plateau schedule without a validation loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn.data import ArrayDataModule
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP
from tests.trainer_utils import quiet_trainer


def _fit(tmp_path: Path, model: DNNClassifier, data: Any, **trainer_kwargs: Any) -> Any:
    trainer = quiet_trainer(tmp_path, **{"max_epochs": 1, **trainer_kwargs})
    if isinstance(data, ArrayDataModule):
        trainer.fit(model, datamodule=data)
    else:
        trainer.fit(model, data)
    return trainer


def _blobs(n: int = 60, features: int = 8, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, features, generator=g), torch.arange(n) % classes


# --------------------------------------------------------------------------------- data/network mismatch
def test_feature_count_mismatch_names_network_shapes_and_classes(tmp_path: Path) -> None:
    x, y = _blobs(features=64)
    model = DNNClassifier(MLP(784, (16,), 3))
    with pytest.raises(ValueError, match=r"MLP.*\[32, 64\].*784.*num_classes=3") as info:
        _fit(tmp_path, model, ArrayDataModule(x, y, batch_size=32))
    assert "mat1 and mat2" in str(info.value)  # torch's own words are kept, at the end


def test_conv_channel_mismatch_names_the_first_conv(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    x, y = torch.rand(20, 1, 8, 8), torch.arange(20) % 2
    model = DNNClassifier(net, num_classes=2)
    with pytest.raises(ValueError, match=r"Sequential.*\[10, 1, 8, 8\].*in_channels=3"):
        _fit(tmp_path, model, DataLoader(TensorDataset(x, y), batch_size=10))


def test_label_out_of_range_names_the_first_offending_label(tmp_path: Path) -> None:
    x, y = _blobs(classes=5)
    y[0:3] = torch.tensor([0, 1, 4])
    model = DNNClassifier(MLP(8, (16,), 3))
    loader = DataLoader(TensorDataset(x, y), batch_size=20)
    with pytest.raises(ValueError, match=r"label 4 .*index 2.*num_classes=3"):
        _fit(tmp_path, model, loader)


def test_negative_label_is_named(tmp_path: Path) -> None:
    x, y = _blobs()
    y[5] = -1
    with pytest.raises(ValueError, match=r"label -1 .*index 5"):
        _fit(tmp_path, DNNClassifier(MLP(8, (16,), 3)), DataLoader(TensorDataset(x, y), batch_size=20))


def test_float_labels_are_refused(tmp_path: Path) -> None:
    x, y = _blobs()
    loader = DataLoader(TensorDataset(x, y.float()), batch_size=20)
    with pytest.raises(ValueError, match=r"integer class labels.*float32"):
        _fit(tmp_path, DNNClassifier(MLP(8, (16,), 3)), loader)


def test_data_module_with_more_classes_than_the_network_is_refused_at_fit_start(tmp_path: Path) -> None:
    x, y = _blobs(classes=5)
    with pytest.raises(ValueError, match=r"ArrayDataModule has 5 classes.*num_classes=3"):
        _fit(tmp_path, DNNClassifier(MLP(8, (16,), 3)), ArrayDataModule(x, y, batch_size=20))


def test_network_wider_than_the_data_is_refused_at_fit_start(tmp_path: Path) -> None:
    """The issue's case: torchvision's resnet18() without num_classes has 1000 outputs for 10 classes."""
    x, y = _blobs(classes=3)
    with pytest.raises(ValueError, match=r"ArrayDataModule has 3 classes.*num_classes=10.*never be a target"):
        _fit(tmp_path, DNNClassifier(MLP(8, (16,), 10)), ArrayDataModule(x, y, batch_size=20))


def test_mismatch_in_the_validation_sanity_check_is_named_too(tmp_path: Path) -> None:
    x, y = _blobs(features=64)
    data = ArrayDataModule(x, y, batch_size=20, val_split=0.2)
    with pytest.raises(ValueError, match=r"validation batch.*\[12, 64\].*784"):
        _fit(tmp_path, DNNClassifier(MLP(784, (16,), 3)), data)


# ------------------------------------------------------------------------------------------ labels/classes
def test_selected_class_without_training_samples_is_refused() -> None:
    x, y = _blobs(n=60)
    x_test, y_test = _blobs(n=12, classes=4)  # label 3 exists only in the test split
    data = ArrayDataModule(x, y, x_test, y_test, classes=[0, 1, 3])
    with pytest.raises(ValueError, match=r"class 2 \(label 3.*no training samples.*test split has 3"):
        data.setup("fit")


def test_class_emptied_by_the_validation_split_is_refused() -> None:
    x, y = _blobs(n=31)
    y[30] = 3  # a single sample of label 3; the stratified validation split takes it
    data = ArrayDataModule(x, y, val_split=0.5)
    with pytest.raises(ValueError, match=r"label 3.*no training samples.*validation split has 1"):
        data.setup("fit")


def test_label_gap_warns(caplog: pytest.LogCaptureFixture) -> None:
    x, y = _blobs(n=30)
    y[y == 2] = 3  # labels 0, 1, 3: label 2 has no sample anywhere, the network gets an output for it
    data = ArrayDataModule(x, y)
    with pytest.warns(UserWarning, match=r"label 2 has no samples"):
        data.setup("fit")
    assert data.num_classes == 4


def test_absurd_label_values_are_refused_with_a_hint() -> None:
    x, y = _blobs(n=30)
    y[0] = 10**7
    with pytest.raises(ValueError, match=r"10000001 classes.*4 distinct labels.*classes="):
        ArrayDataModule(x, y)
    with pytest.warns(UserWarning, match="no samples"):  # 1,000 classes: at the threshold, allowed (with a warning)
        data = ArrayDataModule(x.numpy(), np.array([0, 500, 999] * 10))
        data.setup("fit")
    assert data.num_classes == 1000


def test_absurd_label_values_pass_with_classes() -> None:
    x, y = _blobs(n=30)
    y[y == 2] = 10**5  # (names are built for every label up to the largest: 10**7 would cost ~0.7 GB)
    data = ArrayDataModule(x, y, classes=[0, 1, 10**5])
    data.setup("fit")
    assert data.num_classes == 3 and sorted(set(data.tensors("train")[1].tolist())) == [0, 1, 2]


# --------------------------------------------------------------------------------------- configuration
def test_performance_schedule_without_validation_monitors_train_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 9: val_split=0 gives no validation loop; the plateau schedule falls back to train_loss and says so."""
    x, y = _blobs()
    model = DNNClassifier(MLP(8, (16,), 3), lr_schedule="performance")
    with caplog.at_level(logging.INFO):
        trainer = _fit(tmp_path, model, ArrayDataModule(x, y, batch_size=20, val_split=0), max_epochs=2)
    assert trainer.lr_scheduler_configs[0].monitor == "train_loss"
    assert trainer.current_epoch == 2
    assert any("monitors train_loss" in r.getMessage() for r in caplog.records)


def test_performance_schedule_with_validation_monitors_val_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    x, y = _blobs()
    model = DNNClassifier(MLP(8, (16,), 3), lr_schedule="performance")
    with caplog.at_level(logging.INFO):
        trainer = _fit(tmp_path, model, ArrayDataModule(x, y, batch_size=20, val_split=0.2))
    assert trainer.lr_scheduler_configs[0].monitor == "val_loss"
    assert any("monitors val_loss" in r.getMessage() for r in caplog.records)


def test_label_out_of_range_in_a_later_batch_is_named(tmp_path: Path) -> None:
    x, y = _blobs()
    y[47] = 3  # the third batch of 20
    loader = DataLoader(TensorDataset(x, y), batch_size=20)
    with pytest.raises(ValueError, match=r"label 3 \(at index 7 of a training batch\).*num_classes=3"):
        _fit(tmp_path, DNNClassifier(MLP(8, (16,), 3)), loader)


def test_performance_schedule_with_validation_switched_off_monitors_train_loss(tmp_path: Path) -> None:
    x, y = _blobs()
    model = DNNClassifier(MLP(8, (16,), 3), lr_schedule="performance")
    data = ArrayDataModule(x, y, batch_size=20, val_split=0.2)
    trainer = _fit(tmp_path, model, data, max_epochs=2, limit_val_batches=0)
    assert trainer.lr_scheduler_configs[0].monitor == "train_loss" and trainer.current_epoch == 2
