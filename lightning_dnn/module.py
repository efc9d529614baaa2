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

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_dnn._checks import check_int, check_number
from lightning_dnn._selection import compile_patterns
from lightning_dnn._specs import NetSpec, resolve_net, resolve_optimizer, resolve_schedule
from lightning_dnn.regularization import WeightPenalty

__all__ = ["DNNClassifier"]

OptimizerLike = str | dict[str, Any] | OptimizerCallable
ScheduleLike = str | dict[str, Any] | LRSchedulerCallable


class DNNClassifier(pl.LightningModule):
    """Train any network that maps inputs to class logits: cross-entropy, accuracy, optimizer, schedule, L1/L2.

    Batches are ``(x, y)`` with ``y`` the integer class labels (``predict`` also takes ``x`` alone). Logged, per
    epoch: ``train_loss`` (cross-entropy plus the penalty, the quantity minimized), ``train_acc``,
    ``train_penalty`` (when ``l1`` or ``l2`` > 0), ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``;
    epoch-level values are averaged over all processes under DDP.

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
    ) -> None:
        super().__init__()
        module, net_spec = resolve_net(net)
        self.net = module
        self.num_classes = _resolve_num_classes(module, num_classes)
        self.lr = check_number("lr", lr, low=0.0, low_inclusive=False)
        if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, Mapping):
            raise TypeError(
                f"`optimizer_kwargs` must be a mapping of keyword arguments or None, "
                f"got {type(optimizer_kwargs).__name__} {optimizer_kwargs!r}"
            )
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        if "lr" in self.optimizer_kwargs:
            raise ValueError("`optimizer_kwargs` must not hold 'lr'; pass the learning rate as `lr=`")
        self._optimizer_factory, optimizer_spec = resolve_optimizer(
            optimizer, self.lr, self.optimizer_kwargs
        )
        self._schedule, schedule_spec = resolve_schedule(lr_schedule)
        if penalty_pattern is not None:
            compile_patterns("penalty_pattern", penalty_pattern)
        self.penalty = WeightPenalty(l1=l1, l2=l2, pattern=penalty_pattern)
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
        self._sums = {stage: _EpochSums() for stage in ("train", "val", "test")}

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
        x, y = _split_batch(batch)
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
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
        if sums.count == 0 or self._trainer is None:
            return
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
    def on_fit_start(self) -> None:
        # the strategy may have replaced parameters (device moves, wrappers): select the weights again
        self.penalty.clear_cache()

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
                monitor = "val_loss" if _has_validation(self) else "train_loss"
            lr_scheduler["monitor"] = monitor
            if "frequency" not in lr_scheduler and monitor.startswith("val_") and self._trainer is not None:
                # step only in the epochs that validate, so the monitored value is never stale or missing
                lr_scheduler["frequency"] = self.trainer.check_val_every_n_epoch or 1
        else:
            lr_scheduler.pop("monitor", None)
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}


# --------------------------------------------------------------------------------------------------- helpers
class _EpochSums:
    """Batch-size-weighted sums kept on the device during an epoch, reduced across processes at its end.

    ``update`` is one in-place add per value (no host synchronization); ``compute`` makes one collective call.
    The sums are plain tensors, not buffers, so DDP's buffer broadcast never overwrites a rank's own sums.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def update(self, n: int, means: Mapping[str, Tensor], totals: Mapping[str, Tensor] | None = None) -> None:
        """Add a batch of ``n`` samples: ``means`` are per-sample means (weighted by ``n``), ``totals`` sums."""
        weighted = [(k, v, n) for k, v in means.items()] + [(k, v, 1) for k, v in (totals or {}).items()]
        for key, value, weight in weighted:
            total = self.sums.get(key)
            if total is None:
                self.sums[key] = value.detach() * weight
            else:
                total.add_(value.detach(), alpha=weight)
        self.count += n

    def compute(self, strategy: Any) -> dict[str, Tensor]:
        """Return each weighted mean over all processes and reset."""
        keys = list(self.sums)
        first = self.sums[keys[0]]
        stacked = torch.stack(
            [self.sums[k].to(first.dtype) for k in keys] + [first.new_tensor(float(self.count))]
        )
        stacked = strategy.reduce(stacked, reduce_op="sum")
        means = {key: stacked[i] / stacked[-1] for i, key in enumerate(keys)}
        self.sums = {}
        self.count = 0
        return means


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"DNNClassifier expects batches `(x, y)` with integer labels `y`, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, list | tuple) else "")
    )


def _has_validation(module: pl.LightningModule) -> bool:
    trainer = module._trainer
    if trainer is None:
        return True
    if trainer.limit_val_batches == 0:
        return False
    try:  # the check Lightning's own configuration validator makes
        return bool(trainer.fit_loop.epoch_loop.val_loop._data_source.is_defined())
    except AttributeError:  # pragma: no cover - other Lightning versions
        return True


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
