"""TransformDataset: the transform sees one sample as an image, the dataset gives back the sample's shape."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_dnn.loading import TransformDataset


def test_two_dimensional_samples_get_a_channel_axis_for_the_transform_only() -> None:
    x, y = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4), torch.tensor([5, 7])
    seen: list[tuple[int, ...]] = []

    def shift(sample: Tensor) -> Tensor:
        seen.append(tuple(sample.shape))
        return sample + 1

    sample, label = TransformDataset(x, y, shift, flatten=False)[1]
    assert seen == [(1, 3, 4)]  # [C, H, W], as torchvision transforms expect
    assert sample.shape == (3, 4) and sample.dtype == torch.float32
    torch.testing.assert_close(sample, x[1].float() + 1)
    assert label.item() == 7


def test_flatten_returns_vectors_and_other_shapes_pass_through() -> None:
    x, y = torch.randn(5, 2, 3, 3), torch.arange(5)
    flat = TransformDataset(x, y, lambda s: s * 2, flatten=True)
    assert len(flat) == 5
    torch.testing.assert_close(flat[4][0], (x[4] * 2).reshape(-1))
    batch_x, batch_y = next(iter(DataLoader(flat, batch_size=5)))
    assert batch_x.shape == (5, 18) and batch_y.tolist() == [0, 1, 2, 3, 4]


def test_a_transform_that_changes_the_size_is_refused() -> None:
    ds = TransformDataset(torch.zeros(2, 4, 4), torch.zeros(2), lambda s: s[..., :2], flatten=False)
    with pytest.raises(
        ValueError, match=r"must return a tensor of the sample's shape \(4, 4\), got \(1, 4, 2\)"
    ):
        ds[0]
    not_a_tensor = TransformDataset(torch.zeros(2, 3), torch.zeros(2), lambda s: s.tolist(), flatten=False)  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="got list"):
        not_a_tensor[0]
