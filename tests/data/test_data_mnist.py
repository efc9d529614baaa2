"""MNIST / Fashion-MNIST file discovery and reading: fixtures in tmp_path, plus the real files when installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_dnn.data import FashionMNISTDataModule, IDXFormatError, MNISTDataModule

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _raw(dm):
    """Served tensors of a module built with scaling=None, flatten=False: raw pixel values [N, 1, 28, 28]."""
    dm.setup()
    return dm.tensors("train"), dm.tensors("test")


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "decompressed"])
def test_flat_idx_folder(tmp_path, mnist_writer, mnist_arrays, gz):
    arrays = mnist_arrays(60, 20)
    mnist_writer(tmp_path, arrays, gz=gz)
    dm = MNISTDataModule(root=tmp_path, download=False, scaling=None, flatten=False)
    (x_train, y_train), (x_test, y_test) = _raw(dm)
    assert x_train.shape == (60, 1, 28, 28) and x_test.shape == (20, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    np.testing.assert_array_equal(x_train[:, 0].numpy(), arrays[0].astype(np.float32))
    np.testing.assert_array_equal(y_train.numpy(), arrays[1])
    np.testing.assert_array_equal(x_test[:, 0].numpy(), arrays[2].astype(np.float32))
    np.testing.assert_array_equal(y_test.numpy(), arrays[3])
    assert dm.locate()[0] == "idx"


@pytest.mark.parametrize(
    "cls, folder", [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]
)
def test_torchvision_layout(tmp_path, mnist_writer, mnist_arrays, cls, folder):
    arrays = mnist_arrays(30, 10, offset=7)
    mnist_writer(tmp_path / folder / "raw", arrays, gz=False)
    (x_train, y_train), _ = _raw(cls(root=tmp_path, download=False, scaling=None, flatten=False))
    np.testing.assert_array_equal(x_train[:, 0].numpy(), arrays[0])
    np.testing.assert_array_equal(y_train.numpy(), arrays[1])


def test_flat_files_take_precedence_over_torchvision_layout(tmp_path, mnist_writer, mnist_arrays):
    mnist_writer(tmp_path / "MNIST" / "raw", mnist_arrays(30, 10, offset=2))
    mnist_writer(tmp_path, mnist_arrays(40, 10, offset=1))
    (x_train, _), _ = _raw(MNISTDataModule(root=tmp_path, download=False, scaling=None, flatten=False))
    assert len(x_train) == 40 and (x_train[:, 0, 0, 0] == 1).all()


def test_mixed_compression_within_a_folder(tmp_path, idx_writer, mnist_arrays):
    arrays = mnist_arrays(20, 10)
    names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte.gz",
    ]
    for name, array in zip(names, arrays, strict=True):
        idx_writer(tmp_path / name, array)
    (_, y_train), (_, y_test) = _raw(
        MNISTDataModule(root=tmp_path, download=False, scaling=None, flatten=False)
    )
    np.testing.assert_array_equal(y_train.numpy(), arrays[1])
    np.testing.assert_array_equal(y_test.numpy(), arrays[3])


@pytest.mark.parametrize("subdir", ["", "mldata"])
def test_mnist_original_mat(tmp_path, monkeypatch, subdir):
    scipy_io = pytest.importorskip("scipy.io")
    monkeypatch.setattr(MNISTDataModule, "MAT_TRAIN_SIZE", 50)  # the real file has 60000 + 10000 columns
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(70, 28, 28), dtype=np.uint8)
    labels = np.arange(70) % 10
    # mldata layout: one column per image, pixels in row-major order; labels as a float row vector.
    data = images.reshape(70, 784).T.copy()
    (tmp_path / subdir).mkdir(exist_ok=True)
    scipy_io.savemat(
        tmp_path / subdir / "mnist-original.mat", {"data": data, "label": labels[None, :].astype(float)}
    )
    dm = MNISTDataModule(root=tmp_path, download=False, scaling=None, flatten=False)
    (x_train, y_train), (x_test, y_test) = _raw(dm)
    assert dm.locate()[0] == "mat"
    np.testing.assert_array_equal(x_train[:, 0].numpy(), images[:50])
    np.testing.assert_array_equal(x_test[:, 0].numpy(), images[50:])
    np.testing.assert_array_equal(y_train.numpy(), labels[:50])
    np.testing.assert_array_equal(y_test.numpy(), labels[50:])


def test_mat_with_wrong_variables(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "mnist-original.mat", {"X": np.zeros((2, 2))})
    with pytest.raises(
        ValueError, match=r"lacks the variable\(s\) \['data', 'label'\].*this file has \['X'\]"
    ):
        MNISTDataModule(root=tmp_path, download=False).setup()


def test_missing_folder_without_download(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        FashionMNISTDataModule(root=root, download=False).setup()
    message = str(info.value)
    assert f"No Fashion-MNIST files found under '{root}' (the folder does not exist)" in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str(root / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message


def test_incomplete_folder_is_not_used(tmp_path, mnist_writer, mnist_arrays):
    mnist_writer(tmp_path, mnist_arrays())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    dm = MNISTDataModule(root=tmp_path, download=False)
    assert dm.locate() is None
    with pytest.raises(FileNotFoundError, match=r"mnist-original\.mat"):
        dm.setup()


def test_download_goes_through_torchvision(tmp_path, monkeypatch, mnist_writer, mnist_arrays):
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:  # stands in for the network: writes the files where torchvision would
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            mnist_writer(Path(root) / "FashionMNIST" / "raw", mnist_arrays(20, 10))

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    dm = FashionMNISTDataModule(root=tmp_path, download=True)
    dm.prepare_data()
    assert calls == [(str(tmp_path), True, True)]
    dm.prepare_data()  # files exist now: no second download
    assert len(calls) == 1
    dm.setup()
    assert len(dm.tensors("train")[0]) == 20


def test_failed_download_explains(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(
        RuntimeError, match=r"failed: Error downloading.*apt-get install dataset-fashion-mnist"
    ):
        FashionMNISTDataModule(root=tmp_path, download=True).setup()


def test_count_mismatch_and_bad_labels(tmp_path, mnist_writer, mnist_arrays):
    x_train, y_train, x_test, y_test = mnist_arrays(20, 10)
    mnist_writer(tmp_path, (x_train, y_train[:19], x_test, y_test))
    with pytest.raises(
        IDXFormatError,
        match=r"count mismatch: .*train-images-idx3-ubyte.gz' has 20 images but "
        r".*train-labels-idx1-ubyte.gz' has 19 labels",
    ):
        MNISTDataModule(root=tmp_path, download=False).setup()
    y_bad = y_train.copy()
    y_bad[3] = 10
    mnist_writer(tmp_path, (x_train, y_bad, x_test, y_test))
    with pytest.raises(IDXFormatError, match=r"holds label 10; MNIST labels are 0\.\.9"):
        MNISTDataModule(root=tmp_path, download=False).setup()
    mnist_writer(tmp_path, (x_train.reshape(20, 784), y_train, x_test, y_test))
    with pytest.raises(
        IDXFormatError, match=r"should hold uint8 images \[N, 28, 28\], got uint8 \(20, 784\)"
    ):
        MNISTDataModule(root=tmp_path, download=False).setup()


def test_default_root(tmp_path, monkeypatch):
    monkeypatch.setattr(FashionMNISTDataModule, "SYSTEM_ROOT", str(tmp_path))
    assert FashionMNISTDataModule().root == tmp_path
    monkeypatch.setattr(FashionMNISTDataModule, "SYSTEM_ROOT", str(tmp_path / "absent"))
    assert FashionMNISTDataModule().root == Path("data")
    assert MNISTDataModule().root == Path("data")
    assert MNISTDataModule(root=tmp_path).root == tmp_path


def test_metadata_without_reading_files():
    dm = FashionMNISTDataModule(root="/nonexistent", classes=[9, 0, 5], flatten=False)
    assert dm.num_classes == 3
    assert dm.class_names == ["Ankle boot", "T-shirt/top", "Sandal"]
    assert dm.input_shape == (1, 28, 28) and dm.num_features == 784
    full = MNISTDataModule(root="/nonexistent")
    assert full.class_names == [str(d) for d in range(10)] and full.input_shape == (784,)
    assert FashionMNISTDataModule(root="/x").class_names == [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    dm = FashionMNISTDataModule(download=False)
    assert dm.root == SYSTEM_FASHION
    dm.setup()
    x_train, y_train = dm.tensors("train")
    x_test, y_test = dm.tensors("test")
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert torch.bincount(y_train).tolist() == [6000] * 10
    assert torch.bincount(y_test).tolist() == [1000] * 10
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0
    # The first training image is an ankle boot, the first test image too (the data set's published order).
    assert int(y_train[0]) == 9 and int(y_test[0]) == 9
    # Pixel values are k / 255 exactly.
    np.testing.assert_array_equal(np.round(x_train[:100].numpy() * 255) / 255, x_train[:100].numpy())
