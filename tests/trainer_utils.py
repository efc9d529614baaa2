"""The quiet Trainer the tests build: CPU, one device, no logger, progress bar, checkpointing or model summary.

``pl`` is ``lightning.pytorch`` under ``LIGHTNING_DNN_TEST_PACKAGE=lightning`` (``tests/_lightning_alias.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl


def quiet_trainer_kwargs(tmp_path: Path | str, **overrides: Any) -> dict[str, Any]:
    """The quiet Trainer's arguments, ``overrides`` applied on top (e.g. ``max_epochs``, ``callbacks``)."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    options.update(overrides)
    return options


def quiet_trainer(tmp_path: Path | str, **overrides: Any) -> pl.Trainer:
    """``pl.Trainer(**quiet_trainer_kwargs(tmp_path, **overrides))``."""
    return pl.Trainer(**quiet_trainer_kwargs(tmp_path, **overrides))
