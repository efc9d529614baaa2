"""Foreign weights: TF/Keras layouts from dicts, .npz and .h5 files, checked against numpy re-implementations."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy import signal
from torch import nn

from lightning_dnn.hub import StrictLoadError, UnsafeWeightsError, load_foreign_arrays
from lightning_dnn.nn import MLP

SIZES = [(6, 5), (5, 4), (4, 3)]
LAYERS = ["hidden1", "hidden2", "output"]


def tf_dense_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays as a TF/Keras Dense stack stores them: kernel [in, out], bias [out]."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for layer, (n_in, n_out) in zip(LAYERS, SIZES, strict=True):
        arrays[f"{layer}/kernel:0"] = rng.standard_normal((n_in, n_out)).astype(np.float32)
        arrays[f"{layer}/bias:0"] = rng.standard_normal(n_out).astype(np.float32)
    return arrays


def tf_dense_forward(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """TF's Dense layers written out in numpy: relu(x @ kernel + bias), linear output."""
    for layer in LAYERS:
        x = x @ arrays[f"{layer}/kernel:0"] + arrays[f"{layer}/bias:0"]
        if layer != "output":
            x = np.maximum(x, 0.0)
    return x


def dense_name_map() -> dict[str, str]:
    return {
        f"{layer}/{kind}:0": f"{layer}.linear.{'weight' if kind == 'kernel' else 'bias'}"
        for layer in LAYERS
        for kind in ("kernel", "bias")
    }


def relu_mlp() -> MLP:
    return MLP(6, (5, 4), 3, activation="relu").eval()


def test_dense_kernels_are_transposed_and_outputs_match_numpy() -> None:
    arrays = tf_dense_arrays()
    net = relu_mlp()
    report = load_foreign_arrays(net, arrays, dense_name_map())

    assert report.loaded == list(dense_name_map().values()) and report.ok
    x = np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32)
    ours = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ours, tf_dense_forward(arrays, x), rtol=1e-5, atol=1e-5)


def test_npz_source(tmp_path: Path) -> None:
    arrays = tf_dense_arrays(2)
    np.savez(tmp_path / "w.npz", **arrays, extra=np.zeros(3))
    net = relu_mlp()
    report = load_foreign_arrays(net, tmp_path / "w.npz", dense_name_map())
    assert report.skipped == ["extra"]
    x = np.ones((2, 6), np.float32)
    np.testing.assert_allclose(
        net(torch.from_numpy(x)).detach().numpy(), tf_dense_forward(arrays, x), rtol=1e-5
    )


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "evil.npz", w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafeWeightsError, match="never unpickled"):
        load_foreign_arrays(relu_mlp(), tmp_path / "evil.npz", {"w": "hidden1.linear.weight"})


@pytest.mark.parametrize("whole_model", [True, False])
def test_keras_h5_layout(tmp_path: Path, whole_model: bool) -> None:
    """model.save('m.h5') nests layers under model_weights/; model.save_weights('w.h5') puts them at the root."""
    arrays = tf_dense_arrays(3)
    path = tmp_path / "keras.h5"
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if whole_model else f
        root.attrs["layer_names"] = [name.encode() for name in LAYERS]
        for layer in LAYERS:
            group = root.create_group(layer)
            names = [f"{layer}/kernel:0", f"{layer}/bias:0"]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name in names:
                group.create_dataset(name, data=arrays[name])
        if whole_model:
            f.create_group("optimizer_weights").create_dataset("Adam/iter:0", data=np.array(7))

    net = relu_mlp()
    report = load_foreign_arrays(net, path, dense_name_map())
    assert report.ok and report.skipped == []
    x = np.random.default_rng(4).standard_normal((5, 6)).astype(np.float32)
    np.testing.assert_allclose(
        net(torch.from_numpy(x)).detach().numpy(), tf_dense_forward(arrays, x), rtol=1e-5, atol=1e-5
    )


def test_h5_needs_h5py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.h5"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        load_foreign_arrays(relu_mlp(), path, {"a": "hidden1.linear.weight"})


def nhwc_conv_valid(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """TF's conv2d (NHWC, kernel [kh, kw, in, out], padding VALID, stride 1) with scipy's correlate2d."""
    n, h, w, c_in = x.shape
    kh, kw, _, c_out = kernel.shape
    out = np.zeros((n, h - kh + 1, w - kw + 1, c_out))
    for i in range(n):
        for o in range(c_out):
            for c in range(c_in):
                out[i, :, :, o] += signal.correlate2d(x[i, :, :, c], kernel[:, :, c, o], mode="valid")
            out[i, :, :, o] += bias[o]
    return out


def test_conv_kernels_match_an_nhwc_conv() -> None:
    rng = np.random.default_rng(5)
    kernel = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)  # [kh, kw, in, out], non-square on purpose
    bias = rng.standard_normal(4).astype(np.float32)
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(3, 4, kernel_size=(3, 2)))
    report = load_foreign_arrays(
        net,
        {"conv/kernel": kernel, "conv/bias": bias},
        {"conv/kernel": "conv.weight", "conv/bias": "conv.bias"},
    )
    assert report.ok

    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)  # NHWC
    ours = net(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(ours, nhwc_conv_valid(x, kernel, bias), rtol=1e-4, atol=1e-4)


def test_transposed_conv_is_the_adjoint_of_the_tf_conv() -> None:
    """TF's Conv2DTranspose kernel [kh, kw, out, in] is the conv2d kernel of the adjoint map: <T y, x> = <y, C x>."""
    rng = np.random.default_rng(6)
    kernel = rng.standard_normal((3, 3, 2, 5)).astype(np.float32)  # transposed conv: 5 channels in, 2 out
    net = nn.Sequential()
    net.add_module("up", nn.ConvTranspose2d(5, 2, kernel_size=3, bias=False))
    load_foreign_arrays(net, {"up/kernel": kernel}, {"up/kernel": "up.weight"})

    x = rng.standard_normal((1, 6, 6, 2))  # the conv's input = the transposed conv's output (NHWC)
    y = rng.standard_normal((1, 4, 4, 5))
    conv_x = nhwc_conv_valid(x, kernel, np.zeros(5))
    ty = net(torch.from_numpy(y).float().permute(0, 3, 1, 2)).permute(0, 2, 3, 1).double().detach().numpy()
    np.testing.assert_allclose(np.sum(ty * x), np.sum(y * conv_x), rtol=1e-4)


def test_batch_norm_arrays_map_straight() -> None:
    rng = np.random.default_rng(7)
    kernel = rng.standard_normal((6, 5)).astype(np.float32)
    gamma, beta = rng.random(5).astype(np.float32) + 0.5, rng.standard_normal(5).astype(np.float32)
    mean, var = rng.standard_normal(5).astype(np.float32), rng.random(5).astype(np.float32) + 0.5
    net = MLP(6, 5, 2, norm="batch", activation="relu").eval()
    load_foreign_arrays(
        net,
        {
            "d/kernel": kernel,
            "bn/gamma": gamma,
            "bn/beta": beta,
            "bn/moving_mean": mean,
            "bn/moving_variance": var,
        },
        {
            "d/kernel": "hidden1.linear.weight",
            "bn/gamma": "hidden1.bn.weight",
            "bn/beta": "hidden1.bn.bias",
            "bn/moving_mean": "hidden1.bn.running_mean",
            "bn/moving_variance": "hidden1.bn.running_var",
        },
    )
    x = rng.standard_normal((4, 6)).astype(np.float32)
    eps = net.hidden1.bn.eps
    expected = np.maximum(gamma * (x @ kernel - mean) / np.sqrt(var + eps) + beta, 0.0)
    np.testing.assert_allclose(
        net.hidden1(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-5
    )


def test_mismatches_name_both_shapes_list_unmapped_arrays_and_copy_nothing() -> None:
    arrays = tf_dense_arrays()
    arrays["hidden2/kernel:0"] = np.zeros(
        (5, 7), np.float32
    )  # TF [in=5, out=7] -> torch [7, 5], target [4, 5]
    arrays["unused/kernel:0"] = np.zeros((2, 2), np.float32)
    name_map = {**dense_name_map(), "absent/kernel:0": "hidden1.linear.weight_typo"}
    name_map.pop("hidden1/kernel:0")
    net = relu_mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    with pytest.raises(StrictLoadError) as info:
        load_foreign_arrays(net, arrays, name_map)
    message = str(info.value)
    assert "'hidden2/kernel:0' (5, 7) (as tf layout -> (7, 5)) vs 'hidden2.linear.weight' (4, 5)" in message
    assert "not in the file (1): absent/kernel:0" in message
    assert "unmapped file arrays (2): hidden1/kernel:0, unused/kernel:0" in message
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name

    name_map.pop("absent/kernel:0")
    with pytest.warns(UserWarning, match=r"shape mismatch \(1\)"):
        report = load_foreign_arrays(net, arrays, name_map, strict=False)
    assert report.mismatched == [("hidden2.linear.weight", (7, 5), (4, 5))]
    assert torch.equal(net.output.linear.weight, torch.from_numpy(arrays["output/kernel:0"]).t())


def test_torch_layout_copies_as_is_and_bad_maps_are_refused() -> None:
    net = relu_mlp()
    weight = np.arange(30, dtype=np.float32).reshape(5, 6)
    load_foreign_arrays(net, {"w": weight}, {"w": "hidden1.linear.weight"}, layout="torch")
    assert torch.equal(net.hidden1.linear.weight, torch.from_numpy(weight))
    with pytest.raises(ValueError, match="layout"):
        load_foreign_arrays(net, {"w": weight}, {"w": "hidden1.linear.weight"}, layout="keras")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maps several arrays"):
        load_foreign_arrays(
            net, {"a": weight, "b": weight}, {"a": "hidden1.linear.weight", "b": "hidden1.linear.weight"}
        )
    with pytest.raises(TypeError, match="numeric"):
        load_foreign_arrays(net, {"w": np.array(["x"])}, {"w": "hidden1.linear.bias"})
