"""Bad numerics: NaN/inf in the data and a diverging run are reported, never trained on silently."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn.data import ArrayDataModule, DigitsDataModule
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP
from tests.trainer_utils import quiet_trainer


def _blobs(n: int = 60, features: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    return rng.normal(size=(n, features)) + 3.0 * np.eye(features)[y], y


# ------------------------------------------------------------------------------------------ data at setup
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_training_value_is_refused_with_its_position(bad: float) -> None:
    x, y = _blobs()
    x[17, 5] = bad
    x[40, 0] = bad
    data = ArrayDataModule(x, y)
    with pytest.raises(ValueError, match=r"`x_train`.*2 non-finite.*sample 17.*position \(5,\).*allow_nonfinite"):
        data.setup("fit")


def test_nonfinite_test_value_in_an_image_is_refused() -> None:
    x, y = _blobs(features=16)
    x_test = np.zeros((4, 1, 4, 4), dtype=np.float32)
    x_test[2, 0, 1, 3] = math.nan
    data = ArrayDataModule(x.reshape(-1, 1, 4, 4), y, x_test, np.arange(4) % 3, flatten=False)
    with pytest.raises(ValueError, match=r"`x_test`.*1 non-finite.*1 NaN.*sample 2.*position \(0, 1, 3\)"):
        data.setup("fit")


def test_data_modules_of_files_check_too(monkeypatch: pytest.MonkeyPatch) -> None:
    data = DigitsDataModule()
    x_train, y_train, x_test, y_test = data.load_arrays()
    x_train = x_train.copy()
    x_train[3, 0, 2, 2] = math.inf
    monkeypatch.setattr(data, "load_arrays", lambda: (x_train, y_train, x_test, y_test))
    with pytest.raises(ValueError, match=r"digits `x_train`.*1 non-finite.*1 inf.*sample 3"):
        data.setup("fit")


def test_allow_nonfinite_keeps_them_without_poisoning_the_scaling() -> None:
    """Opted in: the bad values stay bad, but one NaN or inf no longer turns every other value NaN or zero."""
    x, y = _blobs()
    x[17, 5], x[3, 1] = math.nan, math.inf
    finite_only = np.where(np.isfinite(x), x, np.nan)  # the reference: statistics of the finite values
    low, high = np.nanmin(finite_only), np.nanmax(finite_only)
    mean, std = np.nanmean(finite_only, axis=0), np.nanstd(finite_only, axis=0)
    expected = {"unit": (x - low) / (high - low), "standardize": (x - mean) / std}
    for scaling, reference in expected.items():
        data = ArrayDataModule(x, y, scaling=scaling, allow_nonfinite=True)
        data.setup("fit")
        served = data.tensors("train")[0].double()
        assert math.isnan(served[17, 5]) and math.isinf(served[3, 1]), scaling
        finite = np.isfinite(x)
        assert int(torch.isfinite(served).sum()) == x.size - 2, scaling
        assert np.allclose(served.numpy()[finite], reference[finite], atol=1e-5), scaling


def test_allow_nonfinite_must_be_a_bool() -> None:
    x, y = _blobs()
    with pytest.raises(TypeError, match="`allow_nonfinite` must be a bool, got int 1"):
        ArrayDataModule(x, y, allow_nonfinite=1)  # type: ignore[arg-type]


def test_preprocess_refuses_nonfinite_inputs() -> None:
    x, y = _blobs()
    data = ArrayDataModule(x, y, scaling="unit")
    data.setup("fit")
    bad = x[:3].copy()
    bad[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"`x`.*sample 1.*position \(2,\)"):
        data.preprocess(bad)


# --------------------------------------------------------------------------------------- a diverging run
def _diverging_fit(tmp_path: Path, **kwargs: Any) -> tuple[DNNClassifier, Any]:
    x, y = _blobs(n=120)
    torch.manual_seed(0)
    model = DNNClassifier(MLP(8, (32,), 3), optimizer="sgd", lr=1e6, **kwargs)
    trainer = quiet_trainer(tmp_path, max_epochs=3)
    loader = DataLoader(TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)), batch_size=20)
    trainer.fit(model, loader)
    return model, trainer


def test_diverging_training_raises_by_default(tmp_path: Path) -> None:
    """lr=1e6: the weights turn NaN/inf in the first epoch; the fit stops there with an error that says so."""
    with pytest.raises(FloatingPointError, match=r"epoch 0.*non-finite.*train_loss.*net\.\S+.*lr"):
        _diverging_fit(tmp_path)


def test_diverging_training_stops_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"non-finite"):
        _, trainer = _diverging_fit(tmp_path, nonfinite="stop")
    assert trainer.current_epoch == 1  # stopped after the first epoch


def test_diverging_training_warns_and_goes_on(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"non-finite"):
        model, trainer = _diverging_fit(tmp_path, nonfinite="warn")
    assert trainer.current_epoch == 3
    assert not all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_option_is_checked() -> None:
    with pytest.raises(ValueError, match=r"`nonfinite` must be one of \['raise', 'stop', 'warn'\], got 'skip'"):
        DNNClassifier(MLP(8, (32,), 3), nonfinite="skip")  # type: ignore[arg-type]


def test_steps_skipped_by_gradient_clipping_only_warn(tmp_path: Path) -> None:
    """GradientClipping skips the step of a batch with a NaN input: the weights stay finite, so the epoch's
    NaN train_loss gets a warning, not the divergence error (the two checks do not double-handle a step)."""
    from lightning_dnn.callbacks import GradientClipping

    x, y = _blobs(n=120)
    x[30, 2] = math.nan  # in the second batch of 20
    data = ArrayDataModule(x, y, batch_size=20, allow_nonfinite=True)
    torch.manual_seed(0)
    model = DNNClassifier(MLP(8, (32,), 3), optimizer="sgd", lr=0.1)
    clip = GradientClipping(norm=1e3)
    with pytest.warns(UserWarning, match=r"train_loss of epoch 0 is non-finite.*weights are finite"):
        quiet_trainer(tmp_path, max_epochs=1, callbacks=[clip]).fit(model, datamodule=data)
    assert clip.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
