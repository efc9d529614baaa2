"""Lightning callbacks for the chapter's craft; each works with any LightningModule, under DDP, and resumes."""

from lightning_dnn.callbacks.audit import FreezeAudit, FreezeAuditor, freeze_audit
from lightning_dnn.callbacks.early_stopping import EarlyStopping
from lightning_dnn.callbacks.feature_cache import FeatureCache
from lightning_dnn.callbacks.freezing import LayerFreezer, PlannedStep
from lightning_dnn.callbacks.grad_clip import GradientClipping
from lightning_dnn.callbacks.learning_curves import LearningCurves, plot_learning_curves
from lightning_dnn.callbacks.max_norm import MaxNorm

__all__ = [
    "EarlyStopping",
    "FeatureCache",
    "FreezeAudit",
    "FreezeAuditor",
    "GradientClipping",
    "LayerFreezer",
    "LearningCurves",
    "MaxNorm",
    "PlannedStep",
    "freeze_audit",
    "plot_learning_curves",
]
