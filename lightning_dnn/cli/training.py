"""The training side of ``lightning-dnn``: LightningCLI over any LightningModule (``fit|validate|test|predict``).

The model is :class:`~lightning_dnn.DNNClassifier` unless the command line (``--model my_pkg.MyModule``) or a
config (``model: {class_path: my_pkg.MyModule, init_args: ...}``) names another LightningModule.

Configs follow LightningCLI's conventions (YAML, ``--print_config``, ``class_path``/``init_args`` for the network,
the data module, optimizers and callbacks); ready-made ones are in ``examples/configs/``. On top of plain
LightningCLI, every run gets Lightning's rich progress bar, CSV and (when installed) TensorBoard metrics in the same
version folder, and a learning-curve PNG (``learning_curves.png`` next to ``metrics.csv``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml
from typing_extensions import override

from lightning_dnn._lightning import api
from lightning_dnn._state_key import StateKeyOnce
from lightning_dnn.callbacks.learning_curves import LearningCurves
from lightning_dnn.module import DNNClassifier
from lightning_dnn.profiler import NoOpProfiler

__all__ = ["DEFAULT_MODEL", "DNNCLI", "ThrottledRichProgressBar", "default_loggers", "with_default_model"]

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint, RichProgressBar, TQDMProgressBar
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
else:  # the primary package: LIGHTNING_DNN_PACKAGE's, else pytorch_lightning when installed, else lightning
    pl, _callbacks, _loggers = api(), api("callbacks"), api("loggers")
    Checkpoint, ModelCheckpoint = _callbacks.Checkpoint, _callbacks.ModelCheckpoint
    RichProgressBar, TQDMProgressBar = _callbacks.RichProgressBar, _callbacks.TQDMProgressBar
    LightningCLI = api("cli").LightningCLI
    CSVLogger, Logger, TensorBoardLogger = _loggers.CSVLogger, _loggers.Logger, _loggers.TensorBoardLogger

#: The model the CLI trains when neither the command line nor a config names a LightningModule class.
DEFAULT_MODEL = f"{DNNClassifier.__module__.rsplit('.', 1)[0]}.{DNNClassifier.__name__}"
_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def with_default_model(args: Sequence[str]) -> list[str]:
    """Return ``args`` with ``--model=lightning_dnn.DNNClassifier`` added unless they name a model class.

    A model class is named by ``--model X`` / ``--model=X`` / ``--model.class_path`` on the command line, or by a
    ``model`` entry with a ``class_path`` (or a class-path string) in a ``--config`` file. The default is added only
    when none is, so a user's module never inherits DNNClassifier's defaults (jsonargparse carries the init
    arguments of a default class over to a new class that accepts the same names, e.g. ``lr``).

    Args:
        args: the command-line arguments after the program name.

    Returns:
        the arguments, with the default model right after the subcommand when needed.

    Example:
        >>> with_default_model(["fit", "--model.lr", "0.1"])
        ['fit', '--model=lightning_dnn.DNNClassifier', '--model.lr', '0.1']
        >>> with_default_model(["fit", "--model", "my_pkg.MyModule"])
        ['fit', '--model', 'my_pkg.MyModule']
    """
    items = list(args)
    if _names_model_class(items):
        return items
    at = next((i + 1 for i, a in enumerate(items) if a in _SUBCOMMANDS), 0)
    return [*items[:at], f"--model={DEFAULT_MODEL}", *items[at:]]


def _names_model_class(args: list[str]) -> bool:
    for i, arg in enumerate(args):
        if arg in ("--model", "--model.class_path") or arg.startswith(("--model=", "--model.class_path=")):
            return True
        if arg == "--config" and i + 1 < len(args) and _config_names_model(args[i + 1]):
            return True
        if arg.startswith("--config=") and _config_names_model(arg.split("=", 1)[1]):
            return True
    return False


def _config_names_model(path: str) -> bool:
    if not os.path.isfile(path):
        return False  # an inline YAML string or a missing file: LightningCLI reports it
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    model = config.get("model") if isinstance(config, dict) else None
    return isinstance(model, str) or (isinstance(model, dict) and "class_path" in model)


def default_loggers(save_dir: str) -> list[Logger]:
    """CSV metrics, plus TensorBoard event files in the same ``lightning_logs/version_N`` folder when available.

    Args:
        save_dir: the folder that holds ``lightning_logs/``.

    Returns:
        the loggers: a ``CSVLogger`` first, then a ``TensorBoardLogger`` of the same version when installed.

    Example:
        >>> import tempfile
        >>> [type(lg).__name__ for lg in default_loggers(tempfile.mkdtemp())][0]
        'CSVLogger'
    """
    csv = CSVLogger(save_dir=save_dir, name="lightning_logs")
    loggers: list[Logger] = [csv]
    if importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None:
        loggers.append(TensorBoardLogger(save_dir=save_dir, name="lightning_logs", version=csv.version))
    return loggers


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar, redrawn at most ``updates_per_second`` times during training.

    The stock bar re-reads the logged metrics and redraws after every training batch, which costs about as much
    as a small network's step on a CPU. This one skips the redraw of a batch that ends less than
    ``1 / updates_per_second`` seconds after the last one (the epoch's last batch is always drawn).

    Args:
        updates_per_second: the most redraws per second during training, ``> 0``.
        **kwargs: passed to ``RichProgressBar``.

    Raises:
        ValueError: if ``updates_per_second`` is not ``> 0``.

    Example:
        >>> ThrottledRichProgressBar(updates_per_second=5).min_interval
        0.2
    """

    def __init__(self, updates_per_second: float = 10.0, **kwargs: Any) -> None:
        """Check ``updates_per_second`` and set up the bar."""
        super().__init__(**kwargs)
        if not updates_per_second > 0:
            raise ValueError(f"`updates_per_second` must be > 0, got {updates_per_second!r}")
        self.min_interval = 1.0 / updates_per_second
        self._last_draw = 0.0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        last = batch_idx + 1 >= self.total_train_batches if isinstance(self.total_train_batches, int) else False
        if last or now - self._last_draw >= self.min_interval or self.train_progress_bar_id is None:
            self._last_draw = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class _DefaultModelCheckpoint(StateKeyOnce, ModelCheckpoint):
    """The checkpointing a Trainer adds by default (``ModelCheckpoint()``), with its state key computed once.

    Lightning formats every callback's ``state_key`` at every hook call, several times per training step;
    ModelCheckpoint's formats five attributes each time (~40 us per step on a 2-core CPU). The key is the one a
    plain ``ModelCheckpoint()`` has, so checkpoints stay interchangeable with a plain Trainer's.
    """

    state_key_name = ModelCheckpoint.__qualname__

    @override
    def state_key_fields(self) -> None:
        """``None``: ModelCheckpoint's own key, formatted once."""
        return None


def _progress_bar() -> pl.Callback:
    if importlib.util.find_spec("rich") is not None:
        return ThrottledRichProgressBar()
    return TQDMProgressBar(refresh_rate=20)


class DNNCLI(LightningCLI):
    """LightningCLI over any LightningModule (default :class:`~lightning_dnn.DNNClassifier`) and data module.

    ``lightning-dnn fit --model my_pkg.MyModule --model.hidden 64 --data ...`` trains a user's own module (or
    ``model: {class_path: my_pkg.MyModule, init_args: {...}}`` in a config); without a model class, the model is
    DNNClassifier and configs give its arguments directly (``model: {net: ..., lr: ...}``).

    Adds default loggers (CSV + TensorBoard) when the config leaves ``trainer.logger`` at its default, a rich
    progress bar and :class:`~lightning_dnn.callbacks.LearningCurves`; when the config names no checkpoint
    callback (and leaves checkpointing on), the default ``ModelCheckpoint()`` that a Trainer would add, with its
    state key computed once (a plain one costs ~45-80 µs per training step on a 2-core CPU); and, when the config
    names no profiler, :class:`~lightning_dnn.profiler.NoOpProfiler` (Lightning's default, minus its per-hook
    cost).

    Args:
        args: the command-line arguments (``None``: ``sys.argv``).
        run: run the subcommand (``fit``, ...) as the command line says; ``False`` only builds the model, the
            data module and the trainer.
        **kwargs: passed to ``LightningCLI``.

    Example:
        >>> cli = DNNCLI(args=["--print_config"], run=False)  # doctest: +SKIP
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        """Build the CLI over DNNClassifier and any LightningDataModule, and run it when ``run``."""
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=with_default_model(sys.argv[1:] if args is None else args),
            run=run,
            **kwargs,
        )

    @override
    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = default_loggers(config.get("default_root_dir") or ".")
        callbacks = list(config.get("callbacks") or [])
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, pl.callbacks.ProgressBar) for c in callbacks
        ):
            callbacks.append(_progress_bar())
        if not any(isinstance(c, LearningCurves) for c in callbacks):
            callbacks.append(LearningCurves())
        if config.get("enable_checkpointing", True) is not False and not any(
            isinstance(c, Checkpoint) for c in callbacks
        ):
            callbacks.append(_DefaultModelCheckpoint())
        kwargs["callbacks"] = callbacks
        if config.get("profiler") is None and "profiler" not in kwargs:
            kwargs["profiler"] = NoOpProfiler()  # Lightning's default, without its ~1 µs per hook call
        return super().instantiate_trainer(**kwargs)
