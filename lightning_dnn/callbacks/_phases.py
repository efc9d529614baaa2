"""Metric-driven phase advances for LayerFreezer: when the monitored metric stops improving, move to the next step."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from lightning_dnn._checks import check_bool, check_choice, check_int, check_number
from lightning_dnn._selection import shorten

__all__ = ["MetricPhases", "metric_phases"]

Mode = Literal["min", "max"]


class MetricPhases:
    """The plateau test that advances a schedule: ``patience`` checks without an improvement of ``min_delta``.

    A check with ``score`` improves when ``score < best - min_delta`` (``mode="min"``) or ``score > best +
    min_delta`` (``"max"``); it then becomes the best and, with ``restore_best``, a CPU copy of the module's
    ``state_dict`` is kept. After ``patience`` checks in a row without improvement the next step is due: the wait
    count starts again from 0 and the best score is kept (the next phase must beat it). The caller passes every
    rank the same score (rank 0's), so every rank takes the same decision.

    Args:
        monitor: the logged metric's name.
        mode: ``"min"`` or ``"max"``.
        patience: checks without improvement before advancing (>= 1).
        min_delta: the smallest change that counts as an improvement (>= 0).
        restore_best: keep the best weights (in memory, and in the checkpoint state) to load them before advancing.

    Example:
        >>> phases = MetricPhases("val_loss", "min", patience=2, min_delta=0.0, restore_best=False)
        >>> net = nn.Linear(1, 1)
        >>> [phases.check(score, net) for score in (1.0, 0.5, 0.6, 0.7, 0.4)]
        [False, False, False, True, False]
    """

    def __init__(self, monitor: str, mode: Mode, patience: int, min_delta: float, restore_best: bool) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"`monitor` must be a metric name (a non-empty string), got {monitor!r}")
        self.monitor = monitor
        self.mode: Mode = check_choice("mode", mode, ("min", "max"))  # type: ignore[assignment]
        self.patience = check_int("patience", patience, low=1)
        self.min_delta = check_number("min_delta", min_delta, low=0.0)
        self.restore_best = check_bool("restore_best", restore_best)
        self.reset()

    def reset(self) -> None:
        """Forget the scores and weights (a new fit)."""
        self.best: float = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.best_epoch: int | None = None
        self.best_state: dict[str, Any] | None = None

    def read(self, trainer: Any) -> float:
        """The monitored value in ``trainer.callback_metrics``; under DDP rank 0's, so every rank decides alike.

        Raises:
            RuntimeError: when the metric was not logged, naming the ones that were.
        """
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise RuntimeError(
                f"LayerFreezer(milestones='metric') monitors {self.monitor!r}, which was not logged in this "
                f"validation run; logged metrics: {shorten(sorted(metrics), 20)}. Log it with `self.log` in "
                "`validation_step` or monitor one of these."
            )
        score = float(metrics[self.monitor])
        if trainer.world_size > 1:
            score = float(trainer.strategy.broadcast(score, src=0))
        return score

    def improves(self, score: float) -> bool:
        """Whether ``score`` beats the best by more than ``min_delta``."""
        if self.mode == "min":
            return score < self.best - self.min_delta
        return score > self.best + self.min_delta

    def check(self, score: float, module: nn.Module, epoch: int | None = None) -> bool:
        """Record one check; return True when the next step is due (``patience`` checks without improvement).

        Raises:
            ValueError: when ``score`` is not finite.
        """
        if not math.isfinite(score):
            raise ValueError(
                f"LayerFreezer: the monitored metric {self.monitor!r} is {score}; a plateau cannot be judged "
                "on a non-finite value"
            )
        if self.improves(score):
            self.best, self.wait, self.best_epoch = score, 0, epoch
            if self.restore_best:
                self.best_state = {
                    k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
                    for k, v in module.state_dict().items()
                }
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.wait = 0
            return True
        return False

    def restore(self, module: nn.Module) -> bool:
        """Load the best weights into ``module`` (in place); False when there are none yet."""
        if self.best_state is None:
            return False
        with torch.no_grad():
            module.load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict[str, Any]:
        """The best score, wait count, best epoch and (with ``restore_best``) the best weights."""
        return {
            "best": self.best,
            "wait": self.wait,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.reset()
        self.best = float(state.get("best", self.best))
        self.wait = int(state.get("wait", 0))
        self.best_epoch = state.get("best_epoch")
        self.best_state = state.get("best_weights")


def metric_phases(
    milestones: str, monitor: str | None, mode: Mode, patience: int, min_delta: float, restore_best: bool
) -> MetricPhases | None:
    """LayerFreezer's metric milestones: a :class:`MetricPhases` with ``milestones="metric"``, else None.

    Raises:
        ValueError: ``milestones="metric"`` without ``monitor``; ``monitor``/``restore_best`` given with
            ``milestones="epoch"``.

    Example:
        >>> metric_phases("epoch", None, "min", 2, 0.0, False) is None
        True
    """
    if milestones == "metric":
        if monitor is None:
            raise ValueError("milestones='metric' needs `monitor`, the name of a logged metric, got None")
        return MetricPhases(monitor, mode, patience, min_delta, restore_best)
    for arg, value, default in (("monitor", monitor, None), ("restore_best", restore_best, False)):
        if value != default:
            raise ValueError(
                f"`{arg}`={value!r} is used by milestones='metric' only; with milestones='epoch' the steps "
                "run at fixed epochs: set milestones='metric' or drop it"
            )
    return None
