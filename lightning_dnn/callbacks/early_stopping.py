"""Early stopping that ends the fit holding the best weights (Keras' ``restore_best_weights``).

Lightning's :class:`~pytorch_lightning.callbacks.EarlyStopping` stops training but leaves the module with the
weights of the last epoch (its issue #1415). This subclass keeps a copy of the module's ``state_dict`` each time
the monitored metric improves and loads it back at the end of ``fit``, whether training stopped early or ran to
``max_epochs``.

DDP: the improvement decision is rank 0's, broadcast to every rank, so all ranks snapshot at the same epochs
(their replicas are identical). With ``store="memory"`` each rank keeps its own CPU copy. With ``store="disk"`` the
local rank 0 of each node writes the file (atomically: a temporary file, then ``os.replace``), and at the end every
rank waits at a barrier, then reads and verifies it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typing_extensions import override

from lightning_dnn._checks import check_bool, check_choice
from lightning_dnn._lightning import api, combined_callback_base, rank_zero_info, rank_zero_warn
from lightning_dnn._state_key import StateKeyOnce

__all__ = ["EarlyStopping"]

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping as _LightningEarlyStopping
    from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
else:  # the primary package's EarlyStopping, also a Callback of the other package (lightning_dnn._lightning)
    _LightningEarlyStopping = combined_callback_base("callbacks.EarlyStopping")
    EarlyStoppingReason = api("callbacks.early_stopping").EarlyStoppingReason

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
            ``best-weights-{monitor}-{mode}-{run_id}.safetensors`` under ``trainer.log_dir`` (``default_root_dir``
            without a logger) and stores only its path in the checkpoint. Disk needs a state dict of tensors only.

    Each ``fit`` starts afresh (Keras semantics): the best score, wait count, stopped epoch, best epoch and stored
    weights of an earlier fit are dropped, so an instance reused for another model never restores the previous
    model's weights, and ``check_on_train_epoch_end=None`` is resolved for the new trainer. A fit resumed with ``ckpt_path=`` keeps the state restored from the checkpoint instead.

    The disk file belongs to one run: a random run id, drawn when a fit starts afresh and kept through resumes in
    the checkpoint state, is in its name and in its safetensors metadata, next to the epoch, the step and a
    SHA-256 of the weights (also in the checkpoint state). At the end of ``fit`` the file must carry this run's
    id, the best epoch and step, and weights matching that hash; anything else (another run's file, a later
    epoch of this run, an edited or corrupted file) is refused with a ``RuntimeError`` rather than loaded.

    Attributes:
        best_epoch: the epoch whose weights are (or will be) restored; ``None`` before the first check.
        best_step: the global step at that check.

    Raises:
        TypeError: ``restore_best_weights`` not a bool.
        ValueError: ``store`` not in ``{"memory", "disk"}``.
        RuntimeError: at the end of ``fit`` with ``store="disk"``, when the best weights file is missing or is not
            this run's best (the model keeps its last weights).

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
        self._check_on_train_epoch_end_arg = check_on_train_epoch_end  # None: decided again in each `setup`
        self.store: Store = check_choice("store", store, ("memory", "disk"))  # type: ignore[assignment]
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self._best_state: dict[str, Any] | None = None  # store="memory"
        self._best_path: str | None = None  # store="disk": where the current best lives
        self._best_sha256: str | None = None  # store="disk": the hash of the weights in that file
        self._write_dir: str | None = None  # store="disk": where this run writes
        self._run_id: str | None = None  # drawn at a fresh fit start, kept by a resume
        self._restored = False  # `load_state_dict` ran since `setup`: this fit resumes

    # ----------------------------------------------------------------------------------------------- state --
    @override
    def state_key_fields(self) -> None:
        """``None``: the key of Lightning's EarlyStopping (``monitor``, ``mode``), so checkpoints interchange."""
        return None

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            best_epoch=self.best_epoch, best_step=self.best_step, store=self.store, run_id=self._run_id
        )
        if self.store == "memory":
            state["best_weights"] = self._best_state
        else:
            state["best_weights_path"] = self._best_path
            state["best_weights_sha256"] = self._best_sha256
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
        self.best_step = state_dict.get("best_step")
        self._best_state = state_dict.get("best_weights")
        self._best_path = state_dict.get("best_weights_path")
        self._best_sha256 = state_dict.get("best_weights_sha256")
        self._run_id = state_dict.get("run_id")
        self._restored = True

    # ----------------------------------------------------------------------------------------------- hooks --
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # Lightning restores callback states after `setup`, before or after `on_fit_start`
            self._restored = False
            self._check_on_train_epoch_end = self._check_on_train_epoch_end_arg  # this trainer decides
        super().setup(trainer, pl_module, stage)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._restored:
            self._reset()
        if self._run_id is None:  # a fresh fit, or a checkpoint from before run ids: one id on every rank
            self._run_id = str(trainer.strategy.broadcast(uuid.uuid4().hex[:16], src=0))
        if self.restore_best_weights and self.store == "disk":
            # `trainer.log_dir` is a collective under DDP: every rank asks here, at the same point.
            self._write_dir = str(trainer.log_dir or trainer.default_root_dir)
            if self._restored and trainer.local_rank == 0:
                _remove_stale_temporaries(self._write_dir, self._run_id)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restored = False

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
            pl_module.load_state_dict(self._load_verified(compare_hash=trainer.num_nodes == 1))
        rank_zero_info(
            f"EarlyStopping: restored the weights of epoch {self.best_epoch} "
            f"({self.monitor}={float(self.best_score):.6g})."
        )

    # --------------------------------------------------------------------------------------------- helpers --
    def _reset(self) -> None:
        """Forget an earlier fit: Lightning's counters and best score, the best epoch and weights, the run id."""
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(torch.inf if self.monitor_op == torch.lt else -torch.inf)
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message = None
        self.best_epoch = self.best_step = None
        self._best_state = None
        self._best_path = self._best_sha256 = None
        self._run_id = None

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
        assert self._write_dir is not None and self._run_id is not None
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.monitor)
        path = str(Path(self._write_dir) / f"best-weights-{name}-{self.mode}-{self._run_id}.safetensors")
        digest = ""
        if trainer.local_rank == 0:
            # Own contiguous CPU copies: safetensors refuses tensors that share memory (tied weights).
            tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
            digest = content_sha256(tensors)
            meta = {"epoch": str(self.best_epoch), "step": str(self.best_step), "run_id": self._run_id}
            _atomic_save(tensors, path, {**meta, "sha256": digest}, self._run_id)
        if trainer.world_size > 1:  # rank 0's hash in every rank's state
            digest = str(trainer.strategy.broadcast(digest, src=0))
        self._best_path, self._best_sha256 = path, digest

    def _load_verified(self, *, compare_hash: bool) -> dict[str, torch.Tensor]:
        """The weights in this run's best weights file, verified; RuntimeError naming the file and the mismatch."""
        path = self._best_path
        problem = _file_problem(path, self._run_id, self.best_epoch, self.best_step)
        meta: dict[str, str] = {}
        tensors: dict[str, torch.Tensor] = {}
        if problem is None:
            assert path is not None
            try:
                meta, tensors = _read(path)
            except Exception as err:  # safetensors' own error types: a truncated data section
                problem = f"it cannot be read ({type(err).__name__}: {err})"
        if problem is None:
            digest = content_sha256(tensors)
            if digest != meta.get("sha256") or (compare_hash and digest != self._best_sha256):
                problem = (
                    f"its content hash ({digest[:12]}...) does not match the one recorded when this run wrote it "
                    f"({str(self._best_sha256)[:12]}...): the file was edited or corrupted"
                )
        if problem is not None:
            raise RuntimeError(
                f"EarlyStopping(store='disk') cannot restore the best weights (epoch {self.best_epoch}, step "
                f"{self.best_step}) of run {self._run_id} from {path!r}: {problem}. The model keeps its last "
                "weights. Never load weights that cannot be proven to be this run's: use store='memory' to keep "
                "the best weights inside the checkpoint, or restore_best_weights=False."
            )
        return tensors


def content_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors: names, dtypes, shapes and bytes, in sorted name order.

    Example:
        >>> a = {"w": torch.ones(2), "n": torch.tensor(3)}
        >>> content_sha256(a) == content_sha256(dict(reversed(a.items())))
        True
        >>> content_sha256(a) == content_sha256({"w": torch.ones(2), "n": torch.tensor(4)})
        False
    """
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        data: Any = tensor.reshape(-1).view(torch.uint8).numpy()  # a buffer: hashed without a copy
        digest.update(data)
    return digest.hexdigest()


def _file_problem(path: str | None, run_id: str | None, epoch: int | None, step: int | None) -> str | None:
    """What is wrong with the file's identity (missing, another run's, another epoch), or None."""
    if path is None or not os.path.exists(path):
        return "the file is missing"
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a truncated or foreign file
        return f"it is not a readable safetensors file ({type(err).__name__}: {err})"
    if meta.get("run_id") != run_id:
        return f"it holds the weights of another run (run id {meta.get('run_id')!r})"
    if (meta.get("epoch"), meta.get("step")) != (str(epoch), str(step)):
        return (
            f"it holds epoch {meta.get('epoch')}, step {meta.get('step')} of this run, written after the checkpoint "
            "this fit resumed from"
        )
    return None


def _read(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    return meta, load_file(path)


def _remove_stale_temporaries(directory: str, run_id: str) -> None:
    """Remove the temporary files a killed process of this run left behind (it never renamed them)."""
    if not os.path.isdir(directory):
        return
    for entry in os.scandir(directory):
        if entry.name.startswith(f".best-weights-{run_id}-") and entry.name.endswith(".tmp"):
            os.remove(entry.path)
            log.debug("EarlyStopping: removed the stale temporary file %s", entry.path)


def _atomic_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str], run_id: str) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".best-weights-{run_id}-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    log.debug("EarlyStopping: wrote best weights of epoch %s to %s", metadata.get("epoch"), path)
