"""Shared tiny models and data for callback tests.

Everything is a plain ``pytorch_lightning.LightningModule`` / ``torch.nn`` object, not our DNNClassifier, so the
callbacks are exercised the way a user with their own module would use them. Under
``LIGHTNING_DNN_TEST_PACKAGE=lightning`` the ``pytorch_lightning`` imported here is ``lightning.pytorch``
(``tests/_lightning_alias.py``), so the same tests run as a ``lightning`` user's code. Fixtures hand out factories (and the
module class, which tests may subclass) instead of instances, so each test builds exactly what it needs::

    def test_something(tiny_mlp, tiny_module, tiny_loader, trainer_kwargs):
        model = tiny_module(tiny_mlp(batch_norm=True), optimizer="adam", lr=1e-2)
        pl.Trainer(**trainer_kwargs, callbacks=[...]).fit(model, tiny_loader())
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from tests.trainer_utils import quiet_trainer_kwargs


def make_mlp(
    in_features: int = 6,
    hidden: Sequence[int] = (8, 8),
    out_features: int = 3,
    *,
    batch_norm: bool = False,
    seed: int = 0,
) -> nn.Sequential:
    """An MLP whose children are named ``hidden1`` ... ``hiddenN`` and ``output`` (like ``lightning_dnn.nn.MLP``).

    Each hidden block is ``nn.Sequential(linear, [bn], relu)``, so parameter names look like
    ``hidden1.linear.weight`` and ``hidden1.bn.weight``.
    """
    gen = torch.Generator().manual_seed(seed)
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers: OrderedDict[str, nn.Module] = OrderedDict(linear=nn.Linear(width, h))
        if batch_norm:
            layers["bn"] = nn.BatchNorm1d(h)
        layers["act"] = nn.ReLU()
        blocks[f"hidden{i}"] = nn.Sequential(layers)
        width = h
    blocks["output"] = nn.Linear(width, out_features)
    net = nn.Sequential(blocks)
    with torch.no_grad():  # seeded init independent of the global RNG
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


def make_convnet(
    in_channels: int = 2, size: int = 6, out_features: int = 3, *, seed: int = 0
) -> nn.Sequential:
    """``conv (Conv2d) -> relu -> flatten -> output (Linear)`` for inputs of shape ``[N, in_channels, size, size]``."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, 4, kernel_size=3, padding=1),
            act=nn.ReLU(),
            flatten=nn.Flatten(),
            output=nn.Linear(4 * size * size, out_features),
        )
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


class TinyModule(pl.LightningModule):
    """A classifier around any ``net``: cross-entropy loss, one optimizer built from ``optimizer``.

    Args:
        net: Any module mapping a batch of inputs to logits.
        optimizer: ``"sgd"``, ``"adam"`` or a callable ``params -> torch.optim.Optimizer``.
        lr: Learning rate for the named optimizers.
        optimizer_kwargs: Extra keyword arguments for the named optimizers (momentum, weight_decay, ...).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        optimizer: str | Callable[[Any], torch.optim.Optimizer] = "sgd",
        lr: float = 0.1,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer = optimizer
        self.lr = lr
        self.optimizer_kwargs = optimizer_kwargs or {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def compute_loss(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.compute_loss(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if callable(self.optimizer):
            return self.optimizer(self.parameters())
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[self.optimizer]
        return cls(self.parameters(), lr=self.lr, **self.optimizer_kwargs)


def make_loader(
    n: int = 32,
    input_shape: Sequence[int] = (6,),
    num_classes: int = 3,
    *,
    batch_size: int = 8,
    scale: float = 1.0,
    seed: int = 0,
) -> DataLoader:
    """A deterministic (unshuffled) loader of ``n`` random inputs of ``input_shape`` and integer class targets."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *input_shape, generator=gen) * scale
    y = torch.randint(0, num_classes, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class GradRecorder(Callback):
    """Records a clone of every gradient (by parameter name) each time ``on_before_optimizer_step`` runs.

    Callbacks run in list order, so a recorder placed before a gradient-changing callback sees its input and one
    placed after it sees its output.
    """

    def __init__(self) -> None:
        self.grads: list[dict[str, Tensor]] = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.grads.append(
            {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        )


class WeightRecorder(Callback):
    """Records a clone of every parameter at fit start and at the end of each training batch."""

    def __init__(self) -> None:
        self.initial: dict[str, Tensor] = {}
        self.after_batch: list[dict[str, Tensor]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.after_batch.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


@pytest.fixture
def tiny_mlp() -> Callable[..., nn.Sequential]:
    """Factory for :func:`make_mlp`."""
    return make_mlp


@pytest.fixture
def tiny_convnet() -> Callable[..., nn.Sequential]:
    """Factory for :func:`make_convnet`."""
    return make_convnet


@pytest.fixture
def tiny_module() -> type[TinyModule]:
    """The :class:`TinyModule` class (call it, or subclass it to change ``compute_loss``)."""
    return TinyModule


@pytest.fixture
def tiny_loader() -> Callable[..., DataLoader]:
    """Factory for :func:`make_loader`."""
    return make_loader


@pytest.fixture
def grad_recorder() -> type[GradRecorder]:
    """The :class:`GradRecorder` class."""
    return GradRecorder


@pytest.fixture
def weight_recorder() -> type[WeightRecorder]:
    """The :class:`WeightRecorder` class."""
    return WeightRecorder


@pytest.fixture
def trainer_kwargs(tmp_path: Path) -> dict[str, Any]:
    """Quiet, CPU-only, 1-epoch x 4-batch Trainer arguments; override keys as needed."""
    return quiet_trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=4, num_sanity_val_steps=0)
