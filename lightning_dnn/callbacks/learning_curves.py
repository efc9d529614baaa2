"""Learning curves: per-epoch train/val loss and accuracy, written as a PNG (and kept in checkpoints)."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lightning_dnn._lightning import Callback

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["LearningCurves", "plot_learning_curves"]

log = logging.getLogger(__name__)


def plot_learning_curves(history: list[dict[str, float]], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Write a two-panel PNG (loss, accuracy) of per-epoch metrics to ``path`` atomically.

    Args:
        history: one dict per epoch, e.g. ``{"epoch": 0, "train_loss": 0.5, "val_loss": 0.6, "train_acc": 0.8}``.
            Keys ending in ``_loss`` go to the left panel, keys ending in ``_acc`` to the right one.
        path: the PNG file to write; written to a temporary file first, then renamed, so a crash never leaves a
            half-written plot.
        title: a figure title.

    Returns:
        The path written.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> p = plot_learning_curves([{"epoch": 0, "train_loss": 1.0, "val_acc": 0.5},
        ...                           {"epoch": 1, "train_loss": 0.5, "val_acc": 0.7}], os.path.join(d, "c.png"))
        >>> p.stat().st_size > 1000
        True
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in history for k in row if k != "epoch"})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, suffix, label in ((axes[0], "_loss", "loss"), (axes[1], "_acc", "accuracy")):
        for key in (k for k in keys if k.endswith(suffix)):
            pts = [(row["epoch"] + 1, row[key]) for row in history if key in row and math.isfinite(row[key])]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class LearningCurves(Callback):
    """Record epoch-level ``*_loss`` / ``*_acc`` metrics and plot them to a PNG after every epoch.

    The history is part of the checkpoint, so a resumed run continues the same curve. Only global rank 0 writes.
    The PNG is rewritten at the end of an epoch when ``min_interval`` seconds have passed since the last write
    (plotting costs ~0.1-0.3 s, as much as a short epoch), at the end of fit and when training crashes, so a
    crash still leaves the curve so far.

    Args:
        filename: the PNG's file name.
        dirpath: where to write it; defaults to the logger's ``log_dir`` or the trainer's ``default_root_dir``.
        metrics: the metric names to record; default: every logged metric ending in ``_loss`` or ``_acc``.
        min_interval: the least number of seconds between two writes during training (0: every epoch).

    Example:
        >>> cb = LearningCurves(filename="curves.png")
        >>> cb.history
        []
    """

    def __init__(
        self,
        filename: str = "learning_curves.png",
        dirpath: str | None = None,
        metrics: list[str] | None = None,
        min_interval: float = 30.0,
    ) -> None:
        if not isinstance(filename, str) or not filename.endswith(".png"):
            raise ValueError(f"`filename` must be a string ending in '.png', got {filename!r}")
        self.filename = filename
        self.dirpath = dirpath
        self.metrics = list(metrics) if metrics is not None else None
        if not isinstance(min_interval, int | float) or min_interval < 0:
            raise ValueError(f"`min_interval` must be a number of seconds >= 0, got {min_interval!r}")
        self.min_interval = float(min_interval)
        self.history: list[dict[str, float]] = []
        self.last_path: Path | None = None
        self._last_write = -math.inf

    def _wanted(self, key: str) -> bool:
        if self.metrics is not None:
            return key in self.metrics
        return (key.endswith("_loss") or key.endswith("_acc")) and "_step" not in key

    def _target(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath) / self.filename
        log_dir = trainer.logger.log_dir if trainer.logger is not None else None
        return Path(log_dir or trainer.default_root_dir) / self.filename

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row: dict[str, float] = {"epoch": float(trainer.current_epoch)}
        for key, value in trainer.callback_metrics.items():
            if self._wanted(key):
                row[key.removesuffix("_epoch")] = float(value)
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]
        if time.monotonic() - self._last_write >= self.min_interval:
            self._write(trainer)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._write(trainer)

    def _write(self, trainer: pl.Trainer) -> None:
        self._last_write = time.monotonic()
        if trainer.is_global_zero and self.history:
            try:
                self.last_path = plot_learning_curves(self.history, self._target(trainer))
            except OSError as err:  # plotting must never kill a training run
                log.warning("could not write learning curves to %s: %s", self._target(trainer), err)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]
