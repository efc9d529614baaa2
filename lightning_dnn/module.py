"""DNNClassifier: the LightningModule that trains any classification network the chapter's way.

Cross-entropy on logits, accuracy from torchmetrics, an optimizer and a learning-rate schedule by name (or by
LightningCLI class path), and L1/L2 penalties on the weights. The hot path is kept lean: the loss and accuracy are
accumulated on the device and reduced once per epoch (no host synchronization per step), and the penalty is only
computed when ``l1`` or ``l2`` is nonzero.

Checkpoints rebuild the model: the network is stored in the hyper-parameters as a LightningCLI-style
``{"class_path": ..., "init_args": ...}`` entry when it has a JSON-able ``config`` (as
:class:`~lightning_dnn.nn.MLP` does), so ``DNNClassifier.load_from_checkpoint(path)`` needs no arguments; any other
network is passed again: ``DNNClassifier.load_from_checkpoint(path, net=MyNet())``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_dnn._checks import check_choice, check_int
from lightning_dnn._classifier import (
    EpochSums,
    check_labels,
    count_nonfinite,
    expected_input,
    has_validation,
    split_batch,
)
from lightning_dnn._lightning import LightningModule, api, rank_zero_info, rank_zero_warn
from lightning_dnn._selection import compile_patterns
from lightning_dnn._specs import NetSpec, resolve_net, resolve_optimizer_args, resolve_schedule
from lightning_dnn.regularization import WeightPenalty

__all__ = ["DNNClassifier"]

if TYPE_CHECKING:
    from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
else:  # LightningCLI resolves these annotations at run time
    LRSchedulerCallable, OptimizerCallable = api("cli").LRSchedulerCallable, api("cli").OptimizerCallable

OptimizerLike = str | dict[str, Any] | OptimizerCallable
ScheduleLike = str | dict[str, Any] | LRSchedulerCallable
NonFinite = Literal["raise", "stop", "warn"]
_NONFINITE = ("raise", "stop", "warn")
_CHECKPOINT_KEY = "dnn_classifier_train_epoch_sums"  # the running sums of an epoch interrupted by a checkpoint
_STAGE_WORDS = {"train": "training", "val": "validation", "test": "test"}


class DNNClassifier(LightningModule):
    """Train any network that maps inputs to class logits: cross-entropy, accuracy, optimizer, schedule, L1/L2.

    Batches are ``(x, y)`` with ``y`` the integer class labels (``predict`` also takes ``x`` alone). Logged, per
    epoch: ``train_loss`` (cross-entropy plus the penalty, the quantity minimized), ``train_acc``,
    ``train_penalty`` (when ``l1`` or ``l2`` > 0), ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``;
    epoch-level values are averaged over all processes under DDP. A checkpoint written mid-epoch holds the
    epoch's running sums (the global ones under DDP), so a resumed epoch logs the values of the uninterrupted run.

    Checks that turn silent failures into errors: the first batch of each stage is checked against the
    network (an input it cannot take, labels that are not integers ``0..num_classes-1``: a ``ValueError``
    naming the network, the batch's shape, the expected input and ``num_classes``), a data module whose
    ``num_classes`` differs from the network's is refused (more classes) or warned about (fewer) at fit start,
    and at the end of each training epoch the weights are checked for NaN/inf (see ``nonfinite``).

    Args:
        net: the network (``self.net``), any ``nn.Module`` producing logits ``[N, num_classes]``; or a
            LightningCLI-style mapping ``{"class_path": "lightning_dnn.nn.MLP", "init_args": {...}}`` that builds
            it (``cls(**init_args)``; the class must be an ``nn.Module`` from lightning_dnn/torch/torchvision or
            from an already imported module).
        num_classes: number of classes, ``>= 2``. ``None`` reads it from ``net.out_features`` or else from the
            ``out_features`` of the net's last ``nn.Linear``.
        optimizer: a name for :func:`lightning_dnn.optim.build_optimizer` (``"sgd"``, ``"momentum"``,
            ``"nesterov"``, ``"adagrad"``, ``"rmsprop"``, ``"adam"``, ``"adamw"``, ``"ftrl"``) built with ``lr``
            and ``optimizer_kwargs``; or a LightningCLI ``OptimizerCallable`` (``params -> Optimizer``, e.g.
            ``functools.partial(torch.optim.SGD, lr=0.1)``) or its mapping form ``{"class_path":
            "torch.optim.SGD", "init_args": {"lr": 0.1}}``, which set their own learning rate (``lr`` and
            ``optimizer_kwargs`` are then not used). For sparse models use FTRL's own L1, which sets weights to
            exact zeros: ``optimizer="ftrl", optimizer_kwargs={"l1": 0.01}``. ``None`` only appears when loading a checkpoint whose
            optimizer could not be stored; such a model predicts but needs ``optimizer`` to train.
        lr: learning rate of an optimizer given by name, ``> 0``.
        optimizer_kwargs: extra keyword arguments of an optimizer given by name (``{"momentum": 0.95}``).
        lr_schedule: ``None`` (constant lr); a schedule name for :func:`lightning_dnn.optim.build_schedule`
            (``"exponential"``, ``"power"``, ``"piecewise_constant"``, ``"performance"``) with its defaults; a mapping
            ``{"name": "exponential", "decay_steps": 1000, "decay_rate": 0.1}`` with its keyword arguments; a
            ``{"class_path": ..., "init_args": ...}`` mapping naming a torch scheduler class; or a LightningCLI
            ``LRSchedulerCallable`` (``optimizer -> scheduler``). Named schedules step with their natural
            interval (the TF-style decays per optimizer step, ``"performance"`` per epoch); others per epoch. A
            mapping may also hold Lightning's ``interval`` (``"step"``/``"epoch"``), ``frequency`` and, for
            plateau schedules (``ReduceLROnPlateau``), ``monitor`` (default ``"val_loss"``, or ``"train_loss"``
            when there is no validation loop) with its ``mode`` (``"min"``/``"max"``).
        l1: L1 penalty coefficient on the weights (see :class:`~lightning_dnn.regularization.WeightPenalty`).
        l2: L2 penalty coefficient on the weights: ``l2 * sum(w**2)``, i.e. TF's ``l2_regularizer(2 * l2)``.
        penalty_pattern: a regex (or list) narrowing the penalized weights to some layers, ``re.fullmatch``-ed against
            the module and weight names of this LightningModule, whole or without their first component
            (``"hidden[12]"`` matches ``net.hidden1``, ``net.hidden2``, never ``net.hidden12``);
            ``None`` penalizes every weight. Biases and normalization parameters are never penalized.
        nonfinite: what to do when training diverges, i.e. when at the end of a training epoch some weight of
            the network is NaN/inf (e.g. ``lr=1e6``): ``"raise"`` a ``FloatingPointError`` naming the epoch,
            the first non-finite parameter and the learning rate; ``"stop"`` the fit with a warning; or
            ``"warn"`` and go on. The check runs once per epoch on values the epoch end computes anyway, so
            the training step stays free of host synchronization. An epoch whose ``train_loss`` is non-finite
            while the weights stay finite (its non-finite steps were skipped, as
            :class:`~lightning_dnn.callbacks.GradientClipping` does with ``skip_nonfinite=True``) only gets a
            warning, whatever ``nonfinite`` says: GradientClipping handles the step, this check the outcome.

    Raises:
        TypeError: for an argument of the wrong type (e.g. ``net`` not an ``nn.Module``).
        ValueError: for a value out of range, an unknown optimizer or schedule name (with close matches),
            keyword arguments the optimizer or schedule rejects, or a ``num_classes`` that cannot be inferred.

    Example:
        >>> from lightning_dnn.nn import MLP
        >>> clf = DNNClassifier(MLP(4, (8,), 3), optimizer="momentum", lr=0.01, l1=1e-4)
        >>> clf.num_classes, clf.hparams["net"]["class_path"]  # the checkpoint rebuilds the MLP
        (3, 'lightning_dnn.nn.mlp.MLP')
        >>> clf(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
        >>> torch.allclose(clf.predict_step(torch.zeros(2, 4), 0).sum(dim=1), torch.ones(2))
        True
    """

    def __init__(
        self,
        net: nn.Module | NetSpec,
        num_classes: int | None = None,
        *,
        optimizer: OptimizerLike | None = "adam",
        lr: float = 1e-3,
        optimizer_kwargs: dict[str, Any] | None = None,
        lr_schedule: ScheduleLike | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        penalty_pattern: str | list[str] | None = None,
        nonfinite: NonFinite = "raise",
    ) -> None:
        super().__init__()
        module, net_spec = resolve_net(net)
        self.net = module
        self.num_classes = _resolve_num_classes(module, num_classes)
        self.lr, self.optimizer_kwargs, self._optimizer_factory, optimizer_spec = resolve_optimizer_args(
            optimizer, lr, optimizer_kwargs
        )
        self._schedule, schedule_spec = resolve_schedule(lr_schedule)
        if penalty_pattern is not None:
            compile_patterns("penalty_pattern", penalty_pattern)
        self.penalty = WeightPenalty(l1=l1, l2=l2, pattern=penalty_pattern)
        self.nonfinite = check_choice("nonfinite", nonfinite, _NONFINITE)
        if self.penalty.active:
            try:  # fail now, not at the first training step, when nothing is there to penalize
                self.penalty.parameters(self)
            except ValueError as err:
                raise ValueError(f"`l1`/`l2`/`penalty_pattern`: {err}") from None

        # Per-epoch statistics stay on the device: sums of loss * batch size and torchmetrics' accuracy states,
        # reduced once per epoch (a per-step `self.log` costs about as much as a small network's step).
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro", validate_args=False)
        self._accuracy = {"val": self.val_acc, "test": self.test_acc}  # train: counted in _shared_step
        self._sums = {stage: EpochSums() for stage in ("train", "val", "test")}
        self._checked_stages: set[str] = set()  # stages whose first batch was checked against the network
        self._warned_nonfinite = False

        # save_hyperparameters() reads the constructor arguments from this frame (or, under LightningCLI, from
        # the parsed config, which is already JSON-able). Rebind the arguments holding live objects to their
        # JSON-able descriptions so that a checkpoint rebuilds the model (and loads with weights_only=True).
        if net_spec is None:
            rank_zero_info(
                f"DNNClassifier: {type(module).__name__} has no JSON-able `config`; checkpoints will need "
                "`DNNClassifier.load_from_checkpoint(path, net=...)`."
            )
        if optimizer is not None and optimizer_spec is None:
            rank_zero_info(
                "DNNClassifier: the optimizer callable cannot be stored in the checkpoint's hyper-parameters; "
                "pass `optimizer=` to `load_from_checkpoint` to train the reloaded model."
            )
        if lr_schedule is not None and schedule_spec is None:
            rank_zero_info(
                "DNNClassifier: the lr_schedule callable cannot be stored in the checkpoint's hyper-parameters; "
                "pass `lr_schedule=` to `load_from_checkpoint` to train the reloaded model with it."
            )
        net = net_spec  # type: ignore[assignment]
        optimizer = optimizer_spec
        lr_schedule = schedule_spec
        self.save_hyperparameters()

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``self.net(x)``."""
        out: Tensor = self.net(x)
        return out

    def _shared_step(self, batch: Any, stage: str) -> tuple[Tensor, int, Tensor | None]:
        x, y = split_batch(batch)
        logits = self.net(x) if stage in self._checked_stages else self._checked_forward(x, y, stage)
        try:
            loss = F.cross_entropy(logits, y)
        except IndexError as err:  # a label out of range in a later batch (on the CPU; CUDA asserts instead)
            try:
                check_labels(y, self.num_classes, f"a {_STAGE_WORDS[stage]} batch")
            except (TypeError, ValueError) as named:
                raise named from err
            raise
        if stage == "train":
            # the training hot path: the number of correct predictions, three kernels (torchmetrics' update is
            # ~10 small kernels per step); equal to MulticlassAccuracy(average="micro"), which val/test use
            correct = (logits.detach().argmax(dim=1) == y).sum()
        else:
            self._accuracy[stage].update(logits.detach(), y)
            correct = None
        return loss, int(y.shape[0]), correct

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, n, correct = self._shared_step(batch, "train")
        assert correct is not None  # always counted for "train"
        sums = self._sums["train"]
        if self.penalty.active:
            penalty = self.penalty(self)
            loss = loss + penalty
            sums.update(n, {"loss": loss, "penalty": penalty}, totals={"acc": correct})
        else:
            sums.update(n, {"loss": loss}, totals={"acc": correct})
        trainer = self._trainer
        if trainer is not None and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # log here rather than in on_train_epoch_end so every callback's epoch-end hook sees this epoch's values
            self._log_epoch("train")
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, n, _ = self._shared_step(batch, "val")
        self._sums["val"].update(n, {"loss": loss})

    @override
    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, n, _ = self._shared_step(batch, "test")
        self._sums["test"].update(n, {"loss": loss})

    @override
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")  # only when the epoch stopped early (max_steps, should_stop, unsized loader)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _log_epoch(self, stage: str) -> None:
        """Log ``{stage}_loss``, ``{stage}_acc`` (and ``train_penalty``) for the epoch, over all processes."""
        sums = self._sums[stage]
        if not sums.sums or self._trainer is None:
            return
        if stage == "train":  # reduced with the sums: one collective, and every process takes the same decision
            means = sums.compute(self.trainer.strategy, totals={"nonfinite": count_nonfinite(self.net)})
            self._check_finite(means.pop("nonfinite"), means["loss"])
        else:
            means = sums.compute(self.trainer.strategy)
        if "acc" not in means:
            accuracy = self._accuracy[stage]
            means["acc"] = accuracy.compute()  # torchmetrics reduces its own state across processes
            accuracy.reset()
        for key, value in means.items():
            # the values are already global; sync_dist=True only averages identical numbers (and keeps
            # Lightning from warning about unsynchronized epoch-level logs under DDP)
            self.log(
                f"{stage}_{key}",
                value,
                on_step=False,
                on_epoch=True,
                sync_dist=True,
                batch_size=1,
                prog_bar=key in ("loss", "acc") and stage != "test",
            )

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Return class probabilities ``softmax(logits)``, one row per sample; ``batch`` is ``x`` or ``(x, ...)``."""
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return torch.softmax(self.net(x), dim=1)

    @override
    def setup(self, stage: str) -> None:
        """Start each fit/validate/test from empty epoch sums (a checkpoint restored after this refills them)."""
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        for name in stages:
            self._sums[name].reset()
            if name in self._accuracy:
                self._accuracy[name].reset()
        self._checked_stages.difference_update(stages)
        self._warned_nonfinite = False

    @override
    def on_fit_start(self) -> None:
        # the strategy may have replaced parameters (device moves, wrappers): select the weights again
        self.penalty.clear_cache()
        self._check_data_classes()

    @override
    def on_train_start(self) -> None:
        self._sums["train"].to(self.device)  # sums restored from a checkpoint arrive on the CPU

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the running sums of an unfinished training epoch (summed over all processes under DDP)."""
        state = self._sums["train"].state_dict(self.trainer.strategy if self._trainer is not None else None)
        if state is not None:
            checkpoint[_CHECKPOINT_KEY] = state

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore an unfinished epoch's sums when a fit resumes (process 0 takes them, the others zeros)."""
        state = checkpoint.get(_CHECKPOINT_KEY)
        trainer = self._trainer
        if state is None or trainer is None or trainer.state.fn != "fit":
            return
        self._sums["train"].load_state_dict(state, keep=trainer.global_rank == 0)

    def _checked_forward(self, x: Any, y: Any, stage: str) -> Tensor:
        """The first batch of a stage: check the labels and the network's input and output, naming them."""
        what = f"the first {_STAGE_WORDS[stage]} batch"
        check_labels(y, self.num_classes, what)
        try:
            logits: Tensor = self.net(x)
        except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError from torch 2.5 on) not a shape problem
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"DNNClassifier: the network {type(self.net).__name__} cannot take {what}: its inputs x have shape "
                f"{shape}{f' ({x.dtype})' if isinstance(x, Tensor) else ''}, the network expects "
                f"{expected_input(self.net)}, and num_classes={self.num_classes}. Match the data to the network "
                "(the data module's `flatten`, the number of features or channels) or build the network for the "
                f"data. The network raised: {err}"
            ) from err
        if logits.dim() != 2 or logits.shape[1] != self.num_classes or logits.shape[0] != len(y):
            raise ValueError(
                f"DNNClassifier: the network {type(self.net).__name__} returned logits of shape "
                f"{list(logits.shape)} for {what} of {len(y)} samples; expected [{len(y)}, num_classes="
                f"{self.num_classes}] (one logit per class). Check the network's output layer and num_classes."
            )
        self._checked_stages.add(stage)
        return logits

    def _check_data_classes(self) -> None:
        """Compare the data module's ``num_classes`` (when it has one) with the network's at fit start."""
        data = getattr(self._trainer, "datamodule", None)
        classes = getattr(data, "num_classes", None)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes == self.num_classes:
            return
        name = type(data).__name__
        if classes > self.num_classes:
            raise ValueError(
                f"{name} has {classes} classes but the network outputs num_classes={self.num_classes} logits: "
                f"labels {self.num_classes}..{classes - 1} would be out of range. Build the network with "
                f"{classes} outputs, or select {self.num_classes} classes with the data module's `classes=`."
            )
        raise ValueError(
            f"{name} has {classes} classes but the network outputs num_classes={self.num_classes} logits: outputs "
            f"{classes}..{self.num_classes - 1} would never be a target, yet take probability mass and predictions "
            f"(e.g. a torchvision model built without `num_classes` has 1000 outputs). Build the network with "
            f"{classes} outputs (`num_classes={classes}` for torchvision models, `out_features={classes}` for MLP)."
        )

    def _check_finite(self, nonfinite_tensors: Tensor, loss: Tensor) -> None:
        """Act on a diverged epoch: non-finite weights per ``nonfinite``; a non-finite loss alone: warn."""
        bad, loss_value = int(nonfinite_tensors.round()), float(loss)
        if bad == 0 and math.isfinite(loss_value):
            return
        epoch = self.trainer.current_epoch
        if bad == 0:
            if not self._warned_nonfinite:
                self._warned_nonfinite = True
                rank_zero_warn(
                    f"DNNClassifier: train_loss of epoch {epoch} is non-finite ({loss_value}): some batches had a "
                    "NaN/inf loss, but the weights are finite (those steps were skipped, e.g. by "
                    "GradientClipping(skip_nonfinite=True) or 16-mixed precision's gradient scaler). Check the data "
                    "and the learning rate."
                )
            return
        names = [name for name, p in self.net.named_parameters() if not bool(torch.isfinite(p).all())]
        total = sum(1 for _ in self.net.parameters())
        message = (
            f"DNNClassifier: training diverged in epoch {epoch}: the weights are non-finite ({bad} of {total} "
            f"parameter tensors hold NaN/inf) and train_loss is {loss_value}; first non-finite parameter: "
            f"net.{names[0] if names else '?'}. Lower the learning rate (lr={self.lr:g} for a named optimizer), "
            "clip gradients (GradientClipping skips non-finite steps), and check the data for NaN/inf. "
            "nonfinite='stop' ends the fit without an error, nonfinite='warn' goes on."
        )
        if self.nonfinite == "raise":
            raise FloatingPointError(message)
        if self.nonfinite == "stop":
            rank_zero_warn(message + " Stopping the fit.")
            self.trainer.should_stop = True
        elif not self._warned_nonfinite:
            self._warned_nonfinite = True
            rank_zero_warn(message)

    @override
    def configure_optimizers(self) -> Any:
        if self._optimizer_factory is None:
            raise ValueError(
                "This DNNClassifier has no optimizer: it was loaded from a checkpoint whose optimizer callable "
                "could not be stored. Pass one: DNNClassifier.load_from_checkpoint(path, optimizer='adam', ...)"
            )
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self._optimizer_factory(params)
        if self._schedule is None:
            return optimizer
        build, config = self._schedule
        scheduler = build(optimizer)
        lr_scheduler: dict[str, Any] = {"scheduler": scheduler, **config}
        if isinstance(scheduler, ReduceLROnPlateau):
            monitor = lr_scheduler.get("monitor") or getattr(scheduler, "monitor", None)
            if monitor is None:
                validates = has_validation(self)
                monitor = "val_loss" if validates else "train_loss"
                reason = "the validation loss" if validates else "no validation loop: the training loss instead"
            else:
                reason = "as configured"
            rank_zero_info(f"DNNClassifier: the {type(scheduler).__name__} schedule monitors {monitor} ({reason})")
            lr_scheduler["monitor"] = monitor
            if "frequency" not in lr_scheduler and monitor.startswith("val_") and self._trainer is not None:
                # step only in the epochs that validate, so the monitored value is never stale or missing
                lr_scheduler["frequency"] = self.trainer.check_val_every_n_epoch or 1
        else:
            lr_scheduler.pop("monitor", None)
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}


def _resolve_num_classes(net: nn.Module, num_classes: Any) -> int:
    declared = getattr(net, "out_features", None)
    declared = declared if isinstance(declared, int) and not isinstance(declared, bool) else None
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, low=2)
        if declared is not None and declared != num_classes:
            raise ValueError(
                f"`num_classes`={num_classes} does not match the network's out_features={declared}"
            )
        return num_classes
    if declared is None:
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                f"`num_classes` cannot be inferred: {type(net).__name__} has no `out_features` attribute and no "
                "nn.Linear layer; pass num_classes=..."
            )
        declared = linears[-1].out_features
    if declared < 2:
        raise ValueError(
            f"`num_classes` inferred from the network is {declared}, a classifier needs >= 2 classes "
            "(the net must output one logit per class); pass num_classes=... or fix the output layer"
        )
    return declared
