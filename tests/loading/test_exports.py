"""The loading layer's names, and their re-export by the data modules' package."""

from __future__ import annotations

import lightning_dnn.data
import lightning_dnn.loading


def test_data_re_exports_the_loading_names() -> None:
    assert lightning_dnn.data.DeviceBatchLoader is lightning_dnn.loading.DeviceBatchLoader
    assert lightning_dnn.data.EpochSampler is lightning_dnn.loading.EpochSampler
    assert set(lightning_dnn.loading.__all__) == {"DeviceBatchLoader", "EpochSampler", "TransformDataset"}
