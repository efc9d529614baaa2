"""lightning-dnn: the craft of training deep networks as PyTorch Lightning parts, plus a Hub-hosted model zoo."""

from lightning_dnn._selection import select_modules, select_parameters
from lightning_dnn._version import __version__
from lightning_dnn.callbacks import (
    EarlyStopping,
    FeatureCache,
    GradientClipping,
    LayerFreezer,
    LearningCurves,
    MaxNorm,
)
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP, get_activation, variance_scaling_
from lightning_dnn.optim import FTRL, build_optimizer
from lightning_dnn.pretrain import Autoencoder, PairDataModule, SiamesePretrainer

__all__ = [
    "FTRL",
    "MLP",
    "Autoencoder",
    "DNNClassifier",
    "EarlyStopping",
    "FeatureCache",
    "GradientClipping",
    "LayerFreezer",
    "LearningCurves",
    "MaxNorm",
    "PairDataModule",
    "SiamesePretrainer",
    "__version__",
    "build_optimizer",
    "get_activation",
    "select_modules",
    "select_parameters",
    "variance_scaling_",
]
