"""What FeatureCache needs from the training loop, as a protocol: :class:`Runtime`.

In a fit it is the Trainer (``_lightning.TrainerRuntime``); a test can run a session with a plain one.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

__all__ = ["Runtime"]

T = TypeVar("T")


class Runtime(Protocol):
    """What a session needs from the training loop: placement, ranks, collectives and the batch pipeline."""

    @property
    def device(self) -> torch.device:
        """The training device."""
        ...

    @property
    def world_size(self) -> int:
        """The number of processes."""
        ...

    @property
    def global_rank(self) -> int:
        """This process's rank."""
        ...

    @property
    def local_rank(self) -> int:
        """This process's rank on its node."""
        ...

    @property
    def epoch(self) -> int:
        """The current training epoch."""
        ...

    @property
    def precision(self) -> str:
        """The precision setting, part of the fingerprint (e.g. ``"32-true"``)."""
        ...

    @property
    def root_dir(self) -> Path:
        """The run's root directory (the disk cache goes under it by default)."""
        ...

    @property
    def datamodule(self) -> object | None:
        """The fit's data module, if any."""
        ...

    def all_agree(self, flag: bool) -> bool:
        """Whether ``flag`` is true on every process."""
        ...

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process."""
        ...

    def barrier(self, name: str) -> None:
        """Wait for every process."""
        ...

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Every process's ``tensor``, stacked: ``[world_size, *tensor.shape]``."""
        ...

    def prepare_batch(self, batch: Any) -> Any:
        """What the training loop does to a batch before the step (precision conversion, device transfer)."""
        ...

    def precision_context(self) -> AbstractContextManager[object]:
        """The context the training step runs in (autocast)."""
        ...
