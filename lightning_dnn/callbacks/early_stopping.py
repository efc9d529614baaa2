"""Early stopping that ends the fit holding the best weights (Keras' ``restore_best_weights``).

Lightning's :class:`~pytorch_lightning.callbacks.EarlyStopping` stops training but leaves the module with the
weights of the last epoch (its issue #1415). This subclass keeps a copy of the module's ``state_dict`` each time
the monitored metric improves and loads it back at the end of ``fit``, whether training stopped early or ran to
``max_epochs``.

DDP: the improvement decision is rank 0's, broadcast to every rank, so all ranks snapshot at the same epochs
(their replicas are identical). With ``store="memory"`` each rank keeps its own CPU copy. With ``store="disk"`` the
local rank 0 of each node writes the file (atomically: a temporary file, then ``os.replace``; identical content
when several nodes share a filesystem), and at the end every rank waits at a barrier, then reads it.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping as _LightningEarlyStopping
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typing_extensions import override

from lightning_dnn._checks import check_bool, check_choice
from lightning_dnn.callbacks._state_key import StateKeyOnce

__all__ = ["EarlyStopping"]

log = logging.getLogger(__name__)

Store = Literal["memory", "disk"]


class EarlyStopping(StateKeyOnce, _LightningEarlyStopping):
    """Lightning's ``EarlyStopping`` (same arguments) that restores the best weights at the end of ``fit``.

    Args:
        monitor: quantity to monitor (as in Lightning).
        min_delta: minimum change that counts as an improvement.
        patience: number of checks with no improvement after which training stops.
        verbose: log the improvement/stopping messages.
        mode: ``"min"`` or ``"max"``.
        strict: raise when ``monitor`` is missing from the logged metrics.
        check_finite: stop when the monitored value becomes NaN or infinite.
        stopping_threshold: stop as soon as the monitored value reaches this threshold.
        divergence_threshold: stop as soon as the monitored value is worse than this threshold.
        check_on_train_epoch_end: run the check at the end of the training epoch instead of after validation.
        log_rank_zero_only: log the status messages from rank 0 only.
        restore_best_weights: at the end of ``fit``, load the weights (the whole ``state_dict``: parameters and
            buffers such as batch-norm statistics) saved when the monitored value last improved. ``False`` behaves
            exactly like Lightning's callback.
        store: ``"memory"`` keeps a CPU copy of the state dict, also saved in this callback's checkpoint state so
            a resumed run can still restore an earlier best; ``"disk"`` writes it as a safetensors file
            ``best-weights-{monitor}-{mode}.safetensors`` under ``trainer.log_dir`` (``default_root_dir`` without
            a logger) and stores only its path in the checkpoint. Disk needs a state dict of tensors only.

    Attributes:
        best_epoch: the epoch whose weights are (or will be) restored; ``None`` before the first check.
        best_step: the global step at that check.

    Raises:
        TypeError: ``restore_best_weights`` not a bool.
        ValueError: ``store`` not in ``{"memory", "disk"}``.

    Example:
        >>> import torch, pytorch_lightning as pl
        >>> from torch import nn
        >>> class Net(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = nn.Linear(2, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.layer(batch[0]).pow(2).mean()
        ...     def validation_step(self, batch, batch_idx):
        ...         self.log("score", [0.5, 0.2, 0.4, 0.6][self.current_epoch])  # best at epoch 1
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
        >>> stopper = EarlyStopping("score", patience=2)
        >>> trainer = pl.Trainer(max_epochs=4, callbacks=[stopper], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Net(), data, data)
        >>> stopper.stopped_epoch, stopper.best_epoch
        (3, 1)
    """

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
        *,
        restore_best_weights: bool = True,
        store: Store = "memory",
    ) -> None:
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
            log_rank_zero_only=log_rank_zero_only,
        )
        self.restore_best_weights = check_bool("restore_best_weights", restore_best_weights)
        self.store: Store = check_choice("store", store, ("memory", "disk"))  # type: ignore[assignment]
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self._best_state: dict[str, Any] | None = None  # store="memory"
        self._best_path: str | None = None  # store="disk": where the current best lives
        self._write_path: str | None = None  # store="disk": where this run writes

    # ----------------------------------------------------------------------------------------------- state --
    @override
    def state_key_fields(self) -> None:
        """``None``: the key of Lightning's EarlyStopping (``monitor``, ``mode``), so checkpoints interchange."""
        return None

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(best_epoch=self.best_epoch, best_step=self.best_step, store=self.store)
        if self.store == "memory":
            state["best_weights"] = self._best_state
        else:
            state["best_weights_path"] = self._best_path
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
        self.best_step = state_dict.get("best_step")
        self._best_state = state_dict.get("best_weights")
        self._best_path = state_dict.get("best_weights_path")

    # ----------------------------------------------------------------------------------------------- hooks --
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.restore_best_weights and self.store == "disk":
            # `trainer.log_dir` is a collective under DDP: every rank asks here, at the same point.
            root = trainer.log_dir or trainer.default_root_dir
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.monitor)
            self._write_path = str(Path(root) / f"best-weights-{name}-{self.mode}.safetensors")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        before = self.best_score
        super().on_train_epoch_end(trainer, pl_module)
        self._after_check(trainer, pl_module, improved=self.best_score is not before)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        before = self.best_score
        super().on_validation_end(trainer, pl_module)
        self._after_check(trainer, pl_module, improved=self.best_score is not before)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.restore_best_weights or self.best_epoch is None:
            return
        if self.store == "memory":
            if self._best_state is None:
                rank_zero_warn(
                    f"EarlyStopping: no saved weights for epoch {self.best_epoch}; keeping the last ones."
                )
                return
            pl_module.load_state_dict(self._best_state)
        else:
            trainer.strategy.barrier("EarlyStopping.restore_best_weights")
            if not self._disk_copy_matches():
                rank_zero_warn(
                    f"EarlyStopping: the best weights file {self._best_path!r} is missing or holds another "
                    f"epoch than the best one ({self.best_epoch}); keeping the last weights."
                )
                return
            assert self._best_path is not None
            pl_module.load_state_dict(load_file(self._best_path))
        rank_zero_info(
            f"EarlyStopping: restored the weights of epoch {self.best_epoch} "
            f"({self.monitor}={float(self.best_score):.6g})."
        )

    # --------------------------------------------------------------------------------------------- helpers --
    def _after_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, improved: bool) -> None:
        if not self.restore_best_weights:
            return
        if trainer.world_size > 1:  # every rank snapshots at the epochs rank 0 chose, so all restore the same
            improved = bool(trainer.strategy.broadcast(improved, src=0))
        if not improved:
            return
        self.best_epoch, self.best_step = trainer.current_epoch, trainer.global_step
        state = pl_module.state_dict()
        if self.store == "memory":
            self._best_state = {
                k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
                for k, v in state.items()
            }
            return
        not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if not_tensors:
            raise TypeError(
                f"EarlyStopping(store='disk') saves tensors only, but the state dict has other values at "
                f"{not_tensors}; use store='memory'."
            )
        assert self._write_path is not None
        if trainer.local_rank == 0:
            # Own contiguous CPU copies: safetensors refuses tensors that share memory (tied weights).
            tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
            _atomic_save(
                tensors, self._write_path, {"epoch": str(self.best_epoch), "step": str(self.best_step)}
            )
        self._best_path = self._write_path

    def _disk_copy_matches(self) -> bool:
        if self._best_path is None or not os.path.exists(self._best_path):
            return False
        with safe_open(self._best_path, framework="pt") as f:
            meta = f.metadata() or {}
        return meta.get("epoch") == str(self.best_epoch) and meta.get("step") == str(self.best_step)


def _atomic_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".best-weights-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    log.debug("EarlyStopping: wrote best weights of epoch %s to %s", metadata.get("epoch"), path)
