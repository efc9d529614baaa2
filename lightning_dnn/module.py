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

import functools
import importlib
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_dnn._checks import check_choice, check_int, check_number
from lightning_dnn._selection import compile_patterns
from lightning_dnn.optim import SCHEDULE_INTERVAL, build_optimizer, build_schedule
from lightning_dnn.regularization import WeightPenalty

__all__ = ["DNNClassifier"]

#: Packages whose classes a ``class_path`` may name even when not imported yet; any other class must already be
#: imported (as Lightning does for checkpoints, so that loading a checkpoint never imports arbitrary code).
_TRUSTED_PACKAGES = ("lightning_dnn", "torch", "torchvision", "pytorch_lightning", "lightning")
#: Keys of a schedule mapping that configure how Lightning steps the scheduler rather than the scheduler itself.
_LIGHTNING_SCHEDULE_KEYS = ("interval", "frequency", "monitor")

NetSpec = dict[str, Any]
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
        penalty_pattern: a regex (or list) narrowing the penalized weights to some layers, matched against the
            module names of this LightningModule (``"hidden[12]"`` matches ``net.hidden1``, ``net.hidden2``);
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
        module, net_spec = _resolve_net(net)
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
        self._optimizer_factory, optimizer_spec = _resolve_optimizer(
            optimizer, self.lr, self.optimizer_kwargs
        )
        self._schedule, schedule_spec = _resolve_schedule(lr_schedule)
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


def _is_jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _class_path(cls: type) -> str | None:
    if "<locals>" in cls.__qualname__:
        return None
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_class(arg: str, path: Any, base: type | tuple[type, ...]) -> type:
    """Resolve ``"package.module.Class"`` to a subclass of ``base`` without importing untrusted code."""
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"`{arg}['class_path']` must be a dotted path 'package.module.Class', got {path!r}")
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        if module_name in sys.modules or parts[0] in _TRUSTED_PACKAGES:
            try:
                obj: Any = importlib.import_module(module_name)
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                continue
            if isinstance(obj, type) and issubclass(obj, base):
                return obj
            raise TypeError(
                f"`{arg}['class_path']`={path!r} must name a subclass of {_names(base)}, got {obj!r}"
            )
    raise ValueError(
        f"`{arg}['class_path']`={path!r} does not resolve to a class: only classes from "
        f"{', '.join(_TRUSTED_PACKAGES)} or from an already imported module are built; import its module first"
    )


def _names(base: type | tuple[type, ...]) -> str:
    return " or ".join(b.__name__ for b in (base if isinstance(base, tuple) else (base,)))


def _check_class_spec(arg: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(spec) - {"class_path", "init_args"})
    if unknown:
        raise ValueError(
            f"`{arg}` mapping has unknown key(s) {unknown}; expected 'class_path' and 'init_args'"
        )
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise TypeError(f"`{arg}['init_args']` must be a mapping, got {type(init_args).__name__}")
    return dict(init_args)


def _resolve_net(net: Any) -> tuple[nn.Module, NetSpec | None]:
    """Return the network and its JSON-able ``{"class_path", "init_args"}`` description (None if it has none)."""
    if isinstance(net, Mapping):
        if "class_path" not in net:
            raise ValueError(
                f"`net` given as a mapping needs a 'class_path' (and 'init_args'), got keys {sorted(net)}"
            )
        init_args = _check_class_spec("net", net)
        cls = _import_class("net", net["class_path"], nn.Module)
        module = cls(**init_args)
        spec = {"class_path": net["class_path"], "init_args": init_args}
        return module, spec if _is_jsonable(spec) else None
    if not isinstance(net, nn.Module):
        hint = (
            " (this checkpoint does not store the network: pass it, "
            "DNNClassifier.load_from_checkpoint(path, net=MyNet()))"
            if net is None
            else ""
        )
        raise TypeError(
            f"`net` must be a torch.nn.Module or a {{'class_path': ..., 'init_args': ...}} mapping, "
            f"got {type(net).__name__}{hint}"
        )
    path = _class_path(type(net))
    try:
        config = getattr(net, "config", None)
    except (TypeError, ValueError):  # e.g. an MLP built with a module activation has no JSON-able config
        config = None
    if path is None or not isinstance(config, Mapping) or not _is_jsonable(dict(config)):
        return net, None
    return net, {"class_path": path, "init_args": dict(config)}


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


def _dummy_params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(1))]


def _resolve_optimizer(
    optimizer: Any, lr: float, kwargs: dict[str, Any]
) -> tuple[Callable[[Iterable[Any]], Optimizer] | None, str | dict[str, Any] | None]:
    """Return a factory ``params -> Optimizer`` and a JSON-able description of it (None when it has none)."""
    if optimizer is None:
        return None, None
    if isinstance(optimizer, str):
        factory: Callable[[Iterable[Any]], Optimizer] = functools.partial(_build_named, optimizer, lr, kwargs)
        try:  # validates the name (with close matches) and the keyword arguments now
            factory(_dummy_params())
        except TypeError as err:
            raise TypeError(f"`optimizer_kwargs` for optimizer {optimizer!r}: {err}") from None
        return factory, optimizer
    if kwargs:
        raise ValueError(
            "`optimizer_kwargs` only applies to an optimizer given by name; put the arguments in the callable "
            "(functools.partial(torch.optim.SGD, momentum=0.9)) or its 'init_args'"
        )
    if isinstance(optimizer, Mapping):
        init_args = _check_class_spec("optimizer", optimizer)
        cls = _import_class("optimizer", optimizer.get("class_path"), Optimizer)
        factory = functools.partial(cls, **init_args)
        factory(_dummy_params())
        spec = {"class_path": optimizer["class_path"], "init_args": init_args}
        return factory, spec if _is_jsonable(spec) else None
    if not callable(optimizer):
        raise TypeError(
            "`optimizer` must be an optimizer name, a {'class_path': ..., 'init_args': ...} mapping or a callable "
            f"params -> torch.optim.Optimizer, got {type(optimizer).__name__} {optimizer!r}"
        )
    return functools.partial(_call_optimizer, optimizer), _describe_callable(optimizer)


def _build_named(name: str, lr: float, kwargs: dict[str, Any], params: Iterable[Any]) -> Optimizer:
    return build_optimizer(name, params, lr, **kwargs)


def _call_optimizer(factory: Callable[[Iterable[Any]], Any], params: Iterable[Any]) -> Optimizer:
    optimizer = factory(params)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"`optimizer` callable must return a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    return optimizer


def _describe_callable(obj: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` for a class or a ``functools.partial`` of one with JSON-able keywords.

    LightningCLI's callables (jsonargparse's ``partial(instantiator, ..., cls, **init_args)``) are described too.
    """
    cls: Any = None
    if isinstance(obj, type):
        cls, init_args = obj, {}
    elif isinstance(obj, functools.partial):
        init_args = dict(obj.keywords)
        if isinstance(obj.func, type) and not obj.args:
            cls = obj.func
        elif getattr(obj.func, "__module__", "").startswith("jsonargparse") and obj.args:
            cls = obj.args[-1] if isinstance(obj.args[-1], type) else None
    path = None if cls is None else _class_path(cls)
    if path is None:
        return None
    spec = {"class_path": path, "init_args": init_args}
    return spec if _is_jsonable(spec) else None


ScheduleFactory = Callable[[Optimizer], Any]


def _resolve_schedule(
    lr_schedule: Any,
) -> tuple[tuple[ScheduleFactory, dict[str, Any]] | None, str | dict[str, Any] | None]:
    """Return ``(factory, lightning_config)`` for the schedule and a JSON-able description of it."""
    if lr_schedule is None:
        return None, None
    if isinstance(lr_schedule, str):
        lr_schedule = {"name": lr_schedule}
        spec: str | dict[str, Any] | None = lr_schedule["name"]
    elif isinstance(lr_schedule, Mapping):
        spec = dict(lr_schedule)
    elif callable(lr_schedule):
        described = _describe_callable(lr_schedule)
        return (functools.partial(_call_schedule, lr_schedule), {"interval": "epoch"}), described
    else:
        raise TypeError(
            "`lr_schedule` must be None, a schedule name, a mapping ({'name': ..., **kwargs} or "
            "{'class_path': ..., 'init_args': ...}) or a callable optimizer -> scheduler, "
            f"got {type(lr_schedule).__name__} {lr_schedule!r}"
        )

    options = dict(lr_schedule)
    config = {k: options.pop(k) for k in _LIGHTNING_SCHEDULE_KEYS if k in options}
    if "interval" in config:
        check_choice("lr_schedule['interval']", config["interval"], ("step", "epoch"))
    if "frequency" in config:
        check_int("lr_schedule['frequency']", config["frequency"], low=1)
    if "monitor" in config and not isinstance(config["monitor"], str):
        raise TypeError(f"`lr_schedule['monitor']` must be a metric name, got {config['monitor']!r}")

    factory: ScheduleFactory
    if "class_path" in options:
        if "name" in options:
            raise ValueError("`lr_schedule` mapping takes either 'name' or 'class_path', not both")
        init_args = _check_class_spec("lr_schedule", options)
        cls = _import_class("lr_schedule", options["class_path"], (LRScheduler, ReduceLROnPlateau))
        factory = functools.partial(_build_class_schedule, cls, init_args)
        config.setdefault("interval", "epoch")
    elif "name" in options:
        name = options.pop("name")
        if not isinstance(name, str):
            raise TypeError(
                f"`lr_schedule['name']` must be a schedule name, got {type(name).__name__} {name!r}"
            )
        factory = functools.partial(_build_named_schedule, name, options)
        config.setdefault("interval", SCHEDULE_INTERVAL.get(name.strip().lower(), "epoch"))
    else:
        raise ValueError(
            "`lr_schedule` mapping needs a 'name' (a schedule name and its keyword arguments) or a 'class_path' "
            f"(a torch scheduler class and its 'init_args'), got keys {sorted(lr_schedule)}"
        )
    dummy = torch.optim.SGD(_dummy_params(), lr=1.0)
    try:  # validates the name (with close matches) and the keyword arguments now
        factory(dummy)
    except TypeError as err:
        raise TypeError(f"`lr_schedule`: {err}") from None
    return (factory, config), spec if _is_jsonable(spec) else None


def _build_named_schedule(name: str, kwargs: dict[str, Any], optimizer: Optimizer) -> Any:
    return build_schedule(name, optimizer, **kwargs)


def _build_class_schedule(cls: type, kwargs: dict[str, Any], optimizer: Optimizer) -> Any:
    return cls(optimizer, **kwargs)


def _call_schedule(factory: Callable[[Optimizer], Any], optimizer: Optimizer) -> Any:
    scheduler = factory(optimizer)
    if not isinstance(scheduler, LRScheduler | ReduceLROnPlateau):
        raise TypeError(
            f"`lr_schedule` callable must return a torch LR scheduler, got {type(scheduler).__name__}"
        )
    return scheduler
