"""Plain-torch loading: device-resident batches, their epoch sampler, and per-sample transform datasets.

Nothing here imports Lightning; the data modules (:mod:`lightning_dnn.data`) and the callbacks build on it.
"""

from lightning_dnn.loading.device_loader import DeviceBatchLoader
from lightning_dnn.loading.sampler import EpochSampler
from lightning_dnn.loading.transform import TransformDataset

__all__ = ["DeviceBatchLoader", "EpochSampler", "TransformDataset"]
