"""The options shared by every data module, checked on ArrayDataModule (with sample tags) and DigitsDataModule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_dnn.data import ArrayDataModule, DeviceBatchLoader, DigitsDataModule


def tagged(n_train=200, n_test=50, num_classes=10, features=3):
    """Arrays whose feature 0 is the sample's index (train: 0.., test: 1000..), label = index % num_classes."""
    x_train = np.zeros((n_train, features), dtype=np.float32)
    x_train[:, 0] = np.arange(n_train)
    x_test = np.zeros((n_test, features), dtype=np.float32)
    x_test[:, 0] = 1000 + np.arange(n_test)
    return x_train, np.arange(n_train) % num_classes, x_test, np.arange(n_test) % num_classes


def tags(dm, split):
    x, y = dm.tensors(split)
    return x[:, 0].long().numpy(), y.numpy()


# ------------------------------------------------------------------------------------------------ classes
@pytest.mark.parametrize("classes", [[5, 6, 7, 8, 9], [9, 2], [0]])
def test_classes_keep_and_remap_in_given_order(classes):
    x_train, y_train, x_test, y_test = tagged()
    dm = ArrayDataModule(x_train, y_train, x_test, y_test, classes=classes)
    dm.setup()
    assert dm.num_classes == len(classes)
    assert dm.class_names == [str(c) for c in classes]
    for split, original in (("train", y_train), ("test", y_test)):
        index, label = tags(dm, split)
        index = index - (1000 if split == "test" else 0)
        # every sample of a selected class, and nothing else
        expected = np.flatnonzero(np.isin(original, classes))
        np.testing.assert_array_equal(np.sort(index), expected)
        # label i <=> original class classes[i]
        np.testing.assert_array_equal(np.asarray(classes)[label], original[index])


def test_unknown_class_lists_existing_ones():
    x, y = np.zeros((6, 2)), np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(
        ValueError,
        match=r"label\(s\) \[7\] that do not exist in ArrayDataModule; existing labels: "
        r"\[0, 1, 2\]",
    ):
        ArrayDataModule(x, y, classes=[1, 7])
    with pytest.raises(ValueError, match=r"existing labels: \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"):
        DigitsDataModule(classes=[10])
    with pytest.raises(ValueError, match=r"more than once"):
        DigitsDataModule(classes=[1, 2, 1])
    with pytest.raises(TypeError, match="integer labels"):
        DigitsDataModule(classes=[1.5])
    with pytest.raises(ValueError, match="at least one label"):
        DigitsDataModule(classes=[])
    assert DigitsDataModule(classes=np.arange(3, 6)).class_names == ["3", "4", "5"]


# ------------------------------------------------------------------------------------------------ samples_per_class
def test_samples_per_class_exact_counts_and_seeded():
    x_train, y_train, _, _ = tagged(n_train=300)
    picks = {}
    for seed in (0, 0, 1):
        dm = ArrayDataModule(x_train, y_train, samples_per_class=7, classes=[3, 4, 5], seed=seed)
        dm.setup()
        index, label = tags(dm, "train")
        assert np.bincount(label).tolist() == [7, 7, 7]
        # real samples of the class
        np.testing.assert_array_equal(np.asarray([3, 4, 5])[label], y_train[index])
        assert len(set(index)) == 21
        picks.setdefault(seed, []).append(index)
    np.testing.assert_array_equal(picks[0][0], picks[0][1])
    assert set(picks[0][0]) != set(picks[1][0])


def test_samples_per_class_too_large_reports_counts():
    x_train, y_train, _, _ = tagged(n_train=100)  # 10 per class
    dm = ArrayDataModule(x_train, y_train, classes=[1, 2], samples_per_class=11)
    with pytest.raises(ValueError, match=r"`samples_per_class`=11 .*\{'1': 10, '2': 10\}.*<= 10"):
        dm.setup()
    with pytest.raises(ValueError, match=">= 1"):
        DigitsDataModule(samples_per_class=0)


# ------------------------------------------------------------------------------------------------ val_split
@pytest.mark.parametrize("val_split, expected", [(0.1, 20), (0.25, 50), (33, 33), (0, 0)])
def test_val_split_sizes_disjoint_stratified(val_split, expected):
    x_train, y_train, _, _ = tagged(n_train=200)
    dm = ArrayDataModule(x_train, y_train, val_split=val_split, seed=3)
    dm.setup()
    train_index, _ = tags(dm, "train")
    if expected == 0:
        assert dm.val_dataloader() == [] and len(train_index) == 200
        return
    val_index, val_label = tags(dm, "val")
    assert len(val_index) == expected and len(train_index) == 200 - expected
    assert set(val_index).isdisjoint(train_index) and set(val_index) | set(train_index) == set(range(200))
    counts = np.bincount(val_label, minlength=10)
    assert np.all(np.abs(counts - expected / 10) < 1)  # proportional within one sample per class
    again = ArrayDataModule(x_train, y_train, val_split=val_split, seed=3)
    again.setup()
    np.testing.assert_array_equal(tags(again, "val")[0], val_index)


def test_val_split_is_taken_before_samples_per_class():
    x_train, y_train, _, _ = tagged(n_train=200)  # 20 per class
    dm = ArrayDataModule(x_train, y_train, val_split=0.5, samples_per_class=10)
    dm.setup()
    assert len(dm.tensors("val")[1]) == 100 and np.bincount(tags(dm, "train")[1]).tolist() == [10] * 10
    too_many = ArrayDataModule(x_train, y_train, val_split=0.5, samples_per_class=11)
    with pytest.raises(ValueError, match="after class selection and validation split"):
        too_many.setup()


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (1.0, ValueError, r"in \[0, 1\), got 1.0 \(pass an int"),
        (-0.1, ValueError, r"in \[0, 1\)"),
        (-3, ValueError, ">= 0"),
        (True, TypeError, "fraction"),
        ("0.1", TypeError, "fraction"),
    ],
)
def test_val_split_out_of_range(bad, error, match):
    with pytest.raises(error, match=match):
        DigitsDataModule(val_split=bad)


def test_val_split_test_validates_on_the_test_split_and_holds_nothing_out():
    x_train, y_train, x_test, y_test = tagged(n_train=200)
    dm = ArrayDataModule(x_train, y_train, x_test, y_test, val_split="test")
    dm.setup()
    assert len(tags(dm, "train")[0]) == 200
    val_x = torch.cat([b[0] for b in dm.val_dataloader()])
    test_x = torch.cat([b[0] for b in dm.test_dataloader()])
    assert torch.equal(val_x, test_x)


def test_val_split_count_too_large():
    dm = DigitsDataModule(val_split=1438, classes=None)
    with pytest.raises(ValueError, match="leaves no training samples: the training split has 1438 samples"):
        dm.setup()


# ------------------------------------------------------------------------------------------------ scaling
def test_unit_scaling_digits_matches_sklearn():
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(scaling="unit")
    dm.setup()
    x, _ = dm.tensors("train")
    x_test, _ = dm.tensors("test")
    reference = load_digits().data / 16.0
    # Every served row is a row of the reference (the split only selects rows).
    all_rows = torch.cat([x, x_test]).double().numpy()
    assert all_rows.shape == (1797, 64) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    np.testing.assert_allclose(np.sort(all_rows, axis=0), np.sort(reference, axis=0), rtol=0, atol=1e-7)


def test_unit_scaling_of_arrays_uses_training_min_max_or_value_range():
    x_train = np.array([[2.0, 4.0], [6.0, 10.0]])
    x_test = np.array([[0.0, 14.0]])
    dm = ArrayDataModule(x_train, [0, 1], x_test, [1], scaling="unit")
    dm.setup()
    np.testing.assert_allclose(dm.tensors("train")[0].numpy(), (x_train - 2) / 8)
    # the test split may leave [0, 1]: the statistics are the training split's
    np.testing.assert_allclose(dm.tensors("test")[0].numpy(), (x_test - 2) / 8)
    fixed = ArrayDataModule(x_train, [0, 1], scaling="unit", value_range=(0, 20))
    fixed.setup()
    np.testing.assert_allclose(fixed.tensors("train")[0].numpy(), x_train / 20)


def test_standardize_uses_training_split_only():
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 2.0, size=(200, 4)) * np.array([1, 10, 0.1, 0])  # last feature constant 0
    x_train[:, 0] = np.arange(200)  # tag: which raw row is which
    y_train = np.arange(200) % 4
    x_test = rng.normal(0.0, 1.0, size=(30, 4))
    options = dict(val_split=40, seed=1)
    raw = ArrayDataModule(x_train, y_train, x_test, np.arange(30) % 4, scaling=None, **options)
    raw.setup()
    train_rows = tags(raw, "train")[0]
    val_rows = tags(raw, "val")[0]
    dm = ArrayDataModule(x_train, y_train, x_test, np.arange(30) % 4, scaling="standardize", **options)
    dm.setup()
    # Reference: numpy statistics of the training rows only (population std; constant features divided by 1).
    mean, std = x_train[train_rows].mean(axis=0), x_train[train_rows].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    for split, rows in (("train", x_train[train_rows]), ("val", x_train[val_rows]), ("test", x_test)):
        np.testing.assert_allclose(
            dm.tensors(split)[0].double().numpy(), (rows - mean) / std, rtol=1e-5, atol=1e-5
        )
    served = dm.tensors("train")[0].double().numpy()
    np.testing.assert_allclose(served[:, :3].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(served[:, :3].std(axis=0), 1, atol=1e-5)
    assert np.all(served[:, 3] == 0)


def test_no_scaling_keeps_values_and_never_mutates_inputs():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    before = x.copy()
    for scaling in (None, "unit", "standardize"):
        dm = ArrayDataModule(x, np.arange(6) % 2, scaling=scaling)
        dm.setup()
        if scaling is None:
            np.testing.assert_array_equal(dm.tensors("train")[0].numpy(), x)
    np.testing.assert_array_equal(x, before)


def test_bad_scaling_name():
    with pytest.raises(
        ValueError,
        match=r"`scaling` must be one of \['unit', 'standardize'\], got 'standardise'.*"
        r"Did you mean 'standardize'",
    ):
        DigitsDataModule(scaling="standardise")


def test_preprocess_applies_the_same_transform_as_the_served_data():
    rng = np.random.default_rng(0)
    x_train = rng.normal(2.0, 3.0, size=(50, 2, 3, 3))
    dm = ArrayDataModule(x_train, np.arange(50) % 5, scaling="standardize", flatten=True)
    dm.setup()
    torch.testing.assert_close(dm.preprocess(x_train), dm.tensors("train")[0])
    torch.testing.assert_close(dm.preprocess(x_train.reshape(50, 18)), dm.tensors("train")[0])
    with pytest.raises(ValueError, match=r"shaped \[N, \*\(2, 3, 3\)\] or \[N, 18\]"):
        dm.preprocess(np.zeros((2, 19)))
    with pytest.raises(RuntimeError, match="setup"):
        DigitsDataModule().preprocess(x_train)


# ------------------------------------------------------------------------------------------------ shapes
def test_flatten_and_input_shape():
    flat = DigitsDataModule(batch_size=16)
    image = DigitsDataModule(batch_size=16, flatten=False)
    for dm, shape in ((flat, (64,)), (image, (1, 8, 8))):
        dm.setup()
        assert dm.input_shape == shape and dm.num_features == 64 and dm.num_classes == 10
        xb, yb = next(iter(dm.train_dataloader()))
        assert tuple(xb.shape) == (16, *shape) and yb.shape == (16,)
    torch.testing.assert_close(flat.tensors("test")[0], image.tensors("test")[0].reshape(-1, 64))


def test_array_module_with_tensors_and_images():
    x = torch.rand(40, 2, 5, 5)
    y = torch.arange(40) % 4
    dm = ArrayDataModule(x, y, flatten=False, class_names=["a", "b", "c", "d"])
    dm.setup()
    assert dm.input_shape == (2, 5, 5) and dm.num_features == 50 and dm.class_names == ["a", "b", "c", "d"]
    torch.testing.assert_close(dm.tensors("train")[0], x)
    assert dm.num_classes == 4


def test_array_module_errors():
    x, y = np.zeros((10, 3)), np.arange(10) % 2
    with pytest.raises(ValueError, match="`x_train` has 10 samples but `y_train` has 9 labels"):
        ArrayDataModule(x, y[:9])
    with pytest.raises(TypeError, match="integer class labels"):
        ArrayDataModule(x, y + 0.5)
    with pytest.raises(ValueError, match="both `x_test` and `y_test`"):
        ArrayDataModule(x, y, x_test=x)
    with pytest.raises(ValueError, match=r"`x_test` samples have shape \(4,\)"):
        ArrayDataModule(x, y, np.zeros((2, 4)), [0, 1])
    with pytest.raises(ValueError, match=r"reshape a single feature to \[N, 1\]"):
        ArrayDataModule(np.zeros(10), y)
    with pytest.raises(ValueError, match="must be >= 0"):
        ArrayDataModule(x, y - 1)
    dm = ArrayDataModule(x, y)
    dm.setup()
    with pytest.raises(ValueError, match="no test split: pass x_test and y_test"):
        dm.test_dataloader()
    with pytest.raises(RuntimeError, match=r"not set up: call setup\(\) first"):
        ArrayDataModule(x, y).train_dataloader()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(batch_size=0), ValueError, "`batch_size` must be >= 1, got 0"),
        (dict(batch_size=2.0), TypeError, "`batch_size` must be an integer"),
        (dict(eval_batch_size=0), ValueError, "`eval_batch_size` must be >= 1"),
        (dict(seed=-1), ValueError, "`seed` must be >= 0"),
        (dict(flatten="yes"), TypeError, "`flatten` must be a bool"),
        (dict(num_workers=-1), ValueError, "`num_workers` must be >= 0"),
        (dict(device_resident=True, augment={"degrees": 5}), ValueError, "cannot be combined with `augment`"),
        (dict(augment={"rotation": 5}), ValueError, r"unknown key\(s\) \['rotation'\]; valid keys .*degrees"),
        (dict(augment={"degrees": -5}), ValueError, "not a valid RandomAffine configuration"),
        (dict(augment=5), TypeError, "`augment` must be None, a dict"),
    ],
)
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        DigitsDataModule(**kwargs)


# ------------------------------------------------------------------------------------------------ loaders
def test_loader_kinds_and_eval_batch_size():
    dm = DigitsDataModule(batch_size=50, val_split=0.2)
    dm.setup()
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert isinstance(train, DeviceBatchLoader) and train.shuffle
    assert isinstance(val, DeviceBatchLoader) and not val.shuffle and val.batch_size == 1000
    assert len(train) == math.ceil(1150 / 50) and len(test) == 1
    # evaluation loaders serve the split in order
    xs, ys = zip(*test, strict=True)
    x_test, y_test = dm.tensors("test")
    torch.testing.assert_close(torch.cat(xs), x_test)
    torch.testing.assert_close(torch.cat(ys), y_test)
    torch.testing.assert_close(torch.cat([b[0] for b in dm.predict_dataloader()]), x_test)
    plain = DigitsDataModule(batch_size=50, device_resident=False)
    plain.setup()
    assert isinstance(plain.train_dataloader(), DataLoader) and isinstance(
        plain.test_dataloader(), DataLoader
    )
    # same seed -> same epoch order on both paths
    resident = DigitsDataModule(batch_size=50)
    resident.setup()
    torch.testing.assert_close(
        torch.cat([b[1] for b in plain.train_dataloader()]),
        torch.cat([b[1] for b in resident.train_dataloader()]),
    )


def test_drop_last():
    dm = DigitsDataModule(batch_size=100, drop_last=True)
    dm.setup()
    sizes = [len(y) for _, y in dm.train_dataloader()]
    assert sizes == [100] * 14  # 1438 training samples
    assert [len(y) for _, y in dm.test_dataloader()] == [359]


# ------------------------------------------------------------------------------------------------ augmentation
def _shift_of(original, moved, max_shift):
    """The (dy, dx) such that `moved` is `original` translated with zero fill, or None."""
    h, w = original.shape
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            ref = torch.zeros_like(original)
            ref[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = original[
                max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
            ]
            if torch.equal(ref, moved):
                return dy, dx
    return None


def test_augmentation_shifts_training_images_only():
    torch.manual_seed(0)
    x = torch.zeros(20, 1, 8, 8)
    x[:, 0, 2:6, 3:5] = 1.0  # a bar in the middle: every small shift keeps it inside
    y = torch.arange(20) % 2
    dm = ArrayDataModule(x, y, x_test=x, y_test=y, flatten=False, augment={"translate": 0.25}, batch_size=20)
    assert dm.has_random_augmentation
    assert not ArrayDataModule(x, y).has_random_augmentation
    dm.setup()
    train = dm.train_dataloader()
    assert isinstance(train, DataLoader)
    assert isinstance(dm.test_dataloader(), DeviceBatchLoader)  # evaluation stays device-resident
    ((xb, _),) = list(train)
    assert xb.shape == x.shape
    order = train.sampler.indices(0)
    shifts = [_shift_of(x[int(i), 0], xb[k, 0], 2) for k, i in enumerate(order)]
    assert all(s is not None for s in shifts)  # each is a pure shift of its input, by at most 0.25 * 8
    assert sum(s != (0, 0) for s in shifts) >= 10  # and most are really moved
    torch.testing.assert_close(torch.cat([b[0] for b in dm.test_dataloader()]), x)  # test split untouched
    flat = ArrayDataModule(x, y, augment={"degrees": 10})
    flat.setup()
    assert next(iter(flat.train_dataloader()))[0].shape == (20, 64)


def test_augmentation_needs_image_samples_and_accepts_callables():
    x, y = np.zeros((10, 6)), np.arange(10) % 2
    with pytest.raises(ValueError, match=r"needs image samples .* shape \(6,\)"):
        ArrayDataModule(x, y, augment={"degrees": 5})
    dm = ArrayDataModule(x, y, augment=lambda s: s + 1.0, batch_size=10)
    dm.setup()
    xb, _ = next(iter(dm.train_dataloader()))
    torch.testing.assert_close(xb, torch.ones(10, 6))
