"""Keras 3 files written by Keras itself (torch backend): ``.keras`` archives and ``.weights.h5`` files.

The arrays come back under the layer names the user gave in Keras (mapped from Keras's automatic storage names
through the model's config), equal bit for bit to Keras's own variables, and load into an MLP whose outputs match
Keras's predictions. Broken archives and configs that do not match are refused with messages that say why.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lightning_dnn.hub import StrictLoadError, load_foreign_arrays, read_foreign_arrays
from lightning_dnn.nn import MLP

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - another test imported keras with another backend
    pytest.skip("keras was imported with another backend", allow_module_level=True)

# Keras layer name -> our MLP tensor, for Dense(use_bias=False) -> BatchNormalization -> ReLU blocks.
NAME_MAP = {
    "my_hidden1/kernel": "hidden1.linear.weight",
    "my_bn1/gamma": "hidden1.bn.weight",
    "my_bn1/beta": "hidden1.bn.bias",
    "my_bn1/moving_mean": "hidden1.bn.running_mean",
    "my_bn1/moving_variance": "hidden1.bn.running_var",
    "my_hidden2/kernel": "hidden2.linear.weight",
    "my_bn2/gamma": "hidden2.bn.weight",
    "my_bn2/beta": "hidden2.bn.bias",
    "my_bn2/moving_mean": "hidden2.bn.running_mean",
    "my_bn2/moving_variance": "hidden2.bn.running_var",
    "my_out/kernel": "output.linear.weight",
    "my_out/bias": "output.linear.bias",
}


def keras_mlp() -> Any:
    """A Keras Sequential like MLP(6, (5, 4), 3, norm="batch", activation="relu"), with random weights and stats."""
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((6,)),
            layers.Dense(5, use_bias=False, name="my_hidden1"),
            layers.BatchNormalization(name="my_bn1"),
            layers.ReLU(name="act1"),
            layers.Dense(4, use_bias=False, name="my_hidden2"),
            layers.BatchNormalization(name="my_bn2"),
            layers.ReLU(name="act2"),
            layers.Dense(3, name="my_out"),
        ],
        name="user_model",
    )
    rng = np.random.default_rng(0)
    for weight in model.weights:
        value = rng.standard_normal(weight.shape).astype(np.float32)
        weight.assign(np.abs(value) + 0.5 if weight.name == "moving_variance" else value)
    return model


def keras_weights(model: Any, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """``(layer path/variable name, value)`` of every variable, walking nested models by their layer names."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from keras_weights(layer, f"{prefix}{layer.name}/")
        else:
            for weight in layer.weights:
                yield f"{prefix}{layer.name}/{weight.name}", np.asarray(weight.numpy())


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("keras3")
    model = keras_mlp()
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    (folder / "m.json").write_text(model.to_json())
    return {
        "model": model,
        "keras": folder / "m.keras",
        "h5": folder / "m.weights.h5",
        "json": folder / "m.json",
    }


def bn_mlp() -> MLP:
    net = MLP(6, (5, 4), 3, norm="batch", activation="relu").eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.eps = 1e-3  # Keras's default epsilon
    return net


def test_keras_archive_names_are_the_users_and_values_are_keras_variables(saved: dict[str, Any]) -> None:
    arrays = read_foreign_arrays(saved["keras"])
    expected = dict(keras_weights(saved["model"]))
    assert sorted(arrays) == sorted(expected) == sorted(NAME_MAP)
    for name, value in expected.items():
        assert arrays[name].dtype == value.dtype and np.array_equal(arrays[name], value), name


def test_keras_archive_loads_into_an_mlp_that_predicts_like_keras(saved: dict[str, Any]) -> None:
    net = bn_mlp()
    report = load_foreign_arrays(net, saved["keras"], NAME_MAP)
    assert report.ok and report.loaded == list(NAME_MAP.values()) and report.skipped == []
    weights = dict(keras_weights(saved["model"]))
    state = net.state_dict()
    assert torch.equal(state["hidden1.linear.weight"], torch.from_numpy(weights["my_hidden1/kernel"]).t())
    assert torch.equal(state["output.linear.bias"], torch.from_numpy(weights["my_out/bias"]))
    assert torch.equal(state["hidden2.bn.running_var"], torch.from_numpy(weights["my_bn2/moving_variance"]))
    x = np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32)
    want = np.asarray(saved["model"].predict(x, verbose=0))
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weights_h5_keeps_storage_names_unless_a_config_maps_them(saved: dict[str, Any]) -> None:
    stored = read_foreign_arrays(saved["h5"])
    assert sorted(stored) == sorted(
        [f"layers/dense/vars/{i}" for i in (0,)]
        + [f"layers/dense_1/vars/{i}" for i in (0,)]
        + [f"layers/dense_2/vars/{i}" for i in (0, 1)]
        + [f"layers/batch_normalization/vars/{i}" for i in range(4)]
        + [f"layers/batch_normalization_1/vars/{i}" for i in range(4)]
    )
    archive = read_foreign_arrays(saved["keras"])
    # dense_1 is the second Dense in the model (my_hidden2); variables in creation order
    assert np.array_equal(stored["layers/dense_1/vars/0"], archive["my_hidden2/kernel"])
    assert np.array_equal(stored["layers/batch_normalization/vars/2"], archive["my_bn1/moving_mean"])
    for config in (saved["keras"], saved["json"], json.loads(saved["json"].read_text())):
        mapped = read_foreign_arrays(saved["h5"], config=config)
        assert sorted(mapped) == sorted(archive)
        assert all(np.array_equal(mapped[n], archive[n]) for n in archive)
    net = bn_mlp()
    assert load_foreign_arrays(net, saved["h5"], NAME_MAP, config=saved["keras"]).ok
    with pytest.raises(StrictLoadError, match=r"Keras 3's automatic storage names .* pass config="):
        load_foreign_arrays(bn_mlp(), saved["h5"], NAME_MAP)


def test_a_config_of_another_model_is_refused(saved: dict[str, Any], tmp_path: Path) -> None:
    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(7, name="wide")])
    other.save(tmp_path / "other.keras")
    with pytest.raises(ValueError, match="does not match the weights"):
        read_foreign_arrays(saved["h5"], config=tmp_path / "other.keras")
    with pytest.raises(ValueError, match=r"`config` names the layers of a Keras 3 \.weights\.h5 file"):
        read_foreign_arrays(saved["keras"], config=saved["json"])
    with pytest.raises(ValueError, match="not a Keras model config"):
        read_foreign_arrays(saved["h5"], config={"layers": []})


def test_nested_functional_model_with_conv_and_unknown_layer(tmp_path: Path) -> None:
    @keras.saving.register_keras_serializable(package="h3test")
    class Scale(keras.layers.Layer):  # type: ignore[misc,name-defined]
        def build(self, input_shape: Any) -> None:
            self.factor = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="factor")

        def call(self, x: Any) -> Any:
            return x * self.factor

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a", center=False)(x)
    x = keras.layers.Flatten(name="flat")(x)
    block = keras.Sequential(
        [keras.layers.Dense(5, name="inner"), keras.layers.Dense(4, use_bias=False, name="inner2")],
        name="block",
    )
    x = Scale(name="scale")(block(x))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x), name="fn")
    rng = np.random.default_rng(2)
    for weight in model.weights:
        weight.assign(rng.standard_normal(weight.shape).astype(np.float32))
    model.save(tmp_path / "fn.keras")

    with pytest.warns(UserWarning, match=r"layer 'scale' \(Scale\) stores 1 variable\(s\); no variable list"):
        arrays = read_foreign_arrays(tmp_path / "fn.keras")
    expected = dict(keras_weights(model))
    expected["scale/vars/0"] = expected.pop("scale/factor")
    assert sorted(arrays) == sorted(expected)
    assert "block/inner/kernel" in arrays and "bn_a/beta" not in arrays  # center=False: no beta
    for name, value in expected.items():
        assert np.array_equal(arrays[name], value), name

    conv = torch.nn.Conv2d(3, 4, 3)
    report = load_foreign_arrays(conv, arrays, {"conv_a/kernel": "weight", "conv_a/bias": "bias"})
    assert report.ok
    assert torch.equal(conv.weight, torch.from_numpy(expected["conv_a/kernel"]).permute(3, 2, 0, 1))


def test_bfloat16_variables_come_back_exactly_as_float32(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="half", dtype="bfloat16")])
    model.save(tmp_path / "bf16.keras")
    arrays = read_foreign_arrays(tmp_path / "bf16.keras")
    for weight in model.weights:
        want = torch.from_numpy(np.asarray(weight.numpy(), dtype=np.float32))
        assert str(weight.dtype) == "bfloat16" and arrays[f"half/{weight.name}"].dtype == np.float32
        assert torch.equal(torch.from_numpy(arrays[f"half/{weight.name}"]), want)
        assert torch.equal(want.to(torch.bfloat16).float(), want)  # bfloat16 values, exactly


def test_broken_keras_archives_are_refused(saved: dict[str, Any], tmp_path: Path) -> None:
    text = tmp_path / "notes.keras"
    text.write_text("not an archive")
    with pytest.raises(
        ValueError, match=r"is not a Keras 3 archive: a \.keras file is a zip .* starts with b'not an"
    ):
        read_foreign_arrays(text)
    partial = tmp_path / "partial.keras"
    with zipfile.ZipFile(saved["keras"]) as src, zipfile.ZipFile(partial, "w") as dst:
        for name in ("config.json", "metadata.json"):
            dst.writestr(name, src.read(name))
    with pytest.raises(
        ValueError, match=r"has no 'model\.weights\.h5' \(it holds \['config\.json', 'metadata\.json'\]\)"
    ):
        read_foreign_arrays(partial)
    bad_h5 = tmp_path / "bad.weights.h5"
    bad_h5.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not an HDF5 file"):
        read_foreign_arrays(bad_h5)


def test_keras_archive_needs_h5py(saved: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"m\.keras.*pip install h5py"):
        read_foreign_arrays(saved["keras"])


def test_a_transposed_convolution_with_other_input_channels_is_named_not_refused(tmp_path: Path) -> None:
    # a Conv2DTranspose kernel is [kh, kw, filters, in]: 5 filters from 3 channels
    model = keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Conv2DTranspose(5, 2, name="up"), keras.layers.Conv2D(2, 1, name="mix")]
    )
    model.save(tmp_path / "up.keras")
    model.save_weights(tmp_path / "up.weights.h5")
    want = dict(keras_weights(model))
    for arrays in (
        read_foreign_arrays(tmp_path / "up.keras"),
        read_foreign_arrays(tmp_path / "up.weights.h5", config=tmp_path / "up.keras"),
    ):
        assert sorted(arrays) == sorted(want)
        for name, value in want.items():
            assert np.array_equal(arrays[name], value), name
    assert want["up/kernel"].shape == (2, 2, 5, 3)
