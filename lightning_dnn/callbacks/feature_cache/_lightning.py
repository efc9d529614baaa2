"""Every use FeatureCache makes of Lightning beyond the ``Callback`` hooks; read this file to upgrade Lightning.

Private API touched here: the fit loop's ``_data_source`` (the loaders are wrapped where the loops request
them) and ``trainer.connectors.data_connector._process_dataloader`` (the processing Lightning gives the loaders
it requests, e.g. DDP samplers), with ``TrainerFn``/``RunningStage``, ``is_overridden`` and the strategy types.
Public API used here only: the strategy's collectives and device, the precision plugin, the Trainer's ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from lightning_dnn._lightning import api, is_lightning_module, is_overridden, is_strategy, package_of
from lightning_dnn._lightning import check_trainer as check_package

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = [
    "SourceSwap",
    "TrainerRuntime",
    "check_trainer",
    "check_verify",
    "swap_fit_sources",
    "training_step_on",
]

T = TypeVar("T")
Wrap = Callable[[object, int], object]
TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def check_trainer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Refuse a fit FeatureCache cannot serve.

    Raises:
        ValueError: a strategy other than single-device or DDP, ``overfit_batches``, or overridden
            batch-transfer hooks (they would run on the cached features).
        RuntimeError: a Lightning whose fit loop lacks what FeatureCache wraps.
    """
    package = check_package(trainer, "FeatureCache")
    strategy = trainer.strategy
    if not is_strategy(strategy, "SingleDeviceStrategy", "DDPStrategy") or is_strategy(strategy, "DeepSpeedStrategy"):
        raise ValueError(
            f"FeatureCache supports single-device and DDP strategies, got {type(strategy).__name__}."
        )
    if _process_dataloader(trainer) is None or not hasattr(trainer.fit_loop, "_data_source"):
        raise RuntimeError(f"FeatureCache needs the fit loop of {package} 2.x, not {api('', package).__version__}.")
    if getattr(trainer, "overfit_batches", 0):
        raise ValueError("FeatureCache cannot be combined with Trainer(overfit_batches=...)")
    overridden = _transfer_hooks(trainer, pl_module)
    if overridden:
        owner, hook = overridden[0]
        raise ValueError(
            f"FeatureCache cannot be used with {type(owner).__name__}.{hook}: the hook would also run "
            "on the cached features. Move that processing into the dataset or the network's trunk."
        )


def _process_dataloader(trainer: Any) -> Callable[..., Any] | None:
    """The private ``_process_dataloader`` of the trainer's package (``None`` in a Lightning without it)."""
    module = api("trainer.connectors.data_connector", package_of(trainer))
    found: Callable[..., Any] | None = getattr(module, "_process_dataloader", None)
    return found


def _transfer_hooks(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[tuple[object, str]]:
    """The batch-transfer hooks that the module or the data module overrides."""
    owners = [o for o in (pl_module, getattr(trainer, "datamodule", None)) if o is not None]
    return [(o, hook) for o in owners for hook in TRANSFER_HOOKS if is_overridden(hook, o, trainer)]


class TrainerRuntime:
    """The trainer as a :class:`~lightning_dnn.callbacks.feature_cache._runtime.Runtime`.

    Args:
        trainer: the fitting trainer.
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        """The strategy's root device."""
        return self._trainer.strategy.root_device

    @property
    def world_size(self) -> int:
        """The number of processes."""
        return int(self._trainer.world_size)

    @property
    def global_rank(self) -> int:
        """This process's rank."""
        return int(self._trainer.global_rank)

    @property
    def local_rank(self) -> int:
        """This process's rank on its node."""
        return int(self._trainer.local_rank)

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return int(self._trainer.current_epoch)

    @property
    def precision(self) -> str:
        """The Trainer's precision setting."""
        return str(self._trainer.precision)

    @property
    def root_dir(self) -> Path:
        """The Trainer's ``default_root_dir``."""
        return Path(self._trainer.default_root_dir)

    @property
    def datamodule(self) -> object | None:
        """The fit's data module, if any."""
        return getattr(self._trainer, "datamodule", None)

    def all_agree(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process."""
        return bool(self._trainer.strategy.reduce_boolean_decision(flag, all=True))

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj``."""
        out: T = self._trainer.strategy.broadcast(obj, src=0)
        return out

    def barrier(self, name: str) -> None:
        """Wait for every process."""
        self._trainer.strategy.barrier(name)

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Every process's ``tensor``, stacked along a new first axis (with more than one process)."""
        out: Tensor = self._trainer.strategy.all_gather(tensor)
        return out

    def prepare_batch(self, batch: Any) -> Any:
        """What the fit loop does to a batch before the step (the batch-transfer hooks are refused)."""
        batch = self._trainer.precision_plugin.convert_input(batch)
        if isinstance(batch, Tensor):
            return batch.to(self.device)
        return self._trainer.strategy.batch_to_device(batch)

    def precision_context(self) -> AbstractContextManager[object]:
        """The precision plugin's training-step context (autocast)."""
        return self._trainer.precision_plugin.train_step_context()


class CachingSource:
    """Stands in for a loop's data source: the loaders it hands out are processed by Lightning, then wrapped."""

    def __init__(self, original: Any, trainer: pl.Trainer, stage: str, wrap: Wrap) -> None:
        self.original = original
        self._trainer, self._stage, self._wrap = trainer, stage, wrap

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)

    def dataloader(self) -> Any:
        """The original source's loaders, wrapped one by one (``wrap(loader, index)``)."""
        loaders = self.original.dataloader()
        if isinstance(loaders, list | tuple):
            return type(loaders)(self._one(dl, i) for i, dl in enumerate(loaders))
        if isinstance(loaders, dict):
            return {k: self._one(dl, i) for i, (k, dl) in enumerate(loaders.items())}
        return self._one(loaders, 0)

    def _one(self, loader: object, index: int) -> object:
        process, states = _process_dataloader(self._trainer), api("trainer.states", package_of(self._trainer))
        assert process is not None  # check_trainer refused a Lightning without it
        processed = process(self._trainer, states.TrainerFn.FITTING, states.RunningStage(self._stage), loader)
        return self._wrap(processed, index)


class SourceSwap:
    """The fit loop's data sources, replaced by caching ones (:class:`CachingSource`) until :meth:`restore`."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, Any]] = []  # (loop, its original data source)

    def replace(self, loop: Any, trainer: pl.Trainer, stage: str, wrap: Wrap) -> None:
        """Wrap the loaders that ``loop`` requests from now on."""
        self._saved.append((loop, loop._data_source))
        loop._data_source = CachingSource(loop._data_source, trainer, stage, wrap)

    def restore(self) -> None:
        """Give the loops their own data sources back."""
        for loop, source in self._saved:
            loop._data_source = source
        self._saved = []


def swap_fit_sources(trainer: pl.Trainer, train: Wrap, val: Wrap | None = None) -> SourceSwap:
    """Wrap the training loader (and the validation loaders, with ``val``) where the fit loop requests them.

    Call it in ``setup``: before the fit loop first asks (``on_fit_start`` comes later, and
    ``estimated_stepping_batches`` in ``configure_optimizers`` may already ask).
    """
    swap = SourceSwap()
    fit_loop = trainer.fit_loop
    swap.replace(fit_loop, trainer, "train", train)
    if val is not None:
        swap.replace(fit_loop.epoch_loop.val_loop, trainer, "validate", val)
    return swap


def check_verify(pl_module: pl.LightningModule) -> None:
    """Refuse ``verify=True`` with manual optimization: its training step would step the real optimizers.

    Raises:
        ValueError: ``pl_module.automatic_optimization`` is false.
    """
    if not pl_module.automatic_optimization:
        raise ValueError(
            "FeatureCache(verify=True) runs the training step outside the loop, which manual optimization "
            "(automatic_optimization=False) cannot allow: its step calls the optimizers. Pass verify=False."
        )


def training_step_on(trainer: pl.Trainer, module: torch.nn.Module, batch: Any) -> Tensor | None:
    """Run ``module.training_step(batch, 0)`` on a copy of the fit's module, attached to ``trainer``, logging nothing.

    Returns:
        The loss: the step's tensor, or its dict's ``"loss"``; ``None`` when it returns neither.
    """
    if not is_lightning_module(module):
        raise TypeError(f"FeatureCache(verify=True) needs a LightningModule, got {type(module).__name__}")
    module.trainer = trainer  # type: ignore[assignment]
    module.log = module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign,assignment]
    out = module.training_step(batch, 0)  # type: ignore[operator]
    if isinstance(out, dict):
        out = out.get("loss")
    return out if isinstance(out, Tensor) else None
