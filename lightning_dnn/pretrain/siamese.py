"""SiamesePretrainer: pretrain lower layers on an auxiliary task, "are these two samples of the same class?"."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_dnn._checks import check_choice, check_int
from lightning_dnn._lightning import LightningModule
from lightning_dnn._specs import NetSpec, resolve_optimizer_args
from lightning_dnn.pretrain._common import resolve_encoder, touch, unused_head

__all__ = ["SiamesePretrainer"]

Combine = Literal["absdiff", "concat"]
_COMBINES = ("absdiff", "concat")


class SiamesePretrainer(LightningModule):
    """Two inputs through the same encoder; a small head on ``|h1 - h2|`` (or ``[h1, h2]``) predicts "same class".

    Géron's auxiliary-task pretraining: when labelled data is scarce but pairs labelled "same or not" are cheap,
    train the lower layers on that task, then reuse them. ``self.encoder`` is one network applied to both inputs
    (the same object, the same tensors: the two branches share every weight); its features are
    ``encoder.forward_features(x)`` when it has that method (an :class:`~lightning_dnn.nn.MLP`: the last hidden
    layer, its ``output`` head unused), else ``encoder(x)`` flattened. Both inputs go through the encoder as one
    batch. The head (``self.head``) is ``Linear(d, 1)``, or ``Linear(d, head_hidden) -> ELU -> Linear(head_hidden,
    1)``, on ``|h1 - h2|`` (``d`` features; symmetric in the two inputs) or on the concatenation (``2d``); the loss
    is binary cross-entropy on its logit.

    Batches are ``(x1, x2, same)`` with ``same`` a float or bool tensor of 0/1 (as
    :class:`~lightning_dnn.pretrain.PairDataModule` serves). Logged per epoch: ``train_loss``, ``train_accuracy``,
    ``val_loss``, ``val_accuracy``, ``test_loss``, ``test_accuracy`` (accuracy: the logit's sign against ``same``).
    Afterwards ``save_pretrained(model.encoder, folder)`` writes the shared layers for
    ``load_pretrained(folder, include="hidden[1-3]", into=net)``.

    Args:
        encoder: the shared network, or a ``{"class_path", "init_args"}`` mapping that builds it.
        combine: ``"absdiff"`` or ``"concat"``.
        head_hidden: hidden units of the head (0: a single linear layer), ``>= 0``.
        optimizer: an optimizer name, a ``{"class_path", "init_args"}`` mapping or a callable (as DNNClassifier).
        lr: learning rate of an optimizer given by name, ``> 0``.
        optimizer_kwargs: more keyword arguments of an optimizer given by name.
        feature_dim: the number of encoder features ``d``; ``None`` reads it from an MLP-like encoder (the last
            hidden block's ``out_features``) or from ``encoder.num_features`` (timm's convention).

    Raises:
        TypeError, ValueError: for invalid arguments, naming them; ValueError when ``feature_dim`` is needed.

    Example:
        >>> from lightning_dnn.nn import MLP
        >>> model = SiamesePretrainer(MLP(64, (32, 16), 10), head_hidden=8)
        >>> model(torch.zeros(5, 64), torch.ones(5, 64)).shape  # one logit per pair
        torch.Size([5])
        >>> model.head.hidden.in_features
        16
    """

    def __init__(
        self,
        encoder: nn.Module | NetSpec,
        *,
        combine: Combine = "absdiff",
        head_hidden: int = 0,
        optimizer: Any = "adam",
        lr: float = 1e-3,
        optimizer_kwargs: dict[str, Any] | None = None,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        module, spec = resolve_encoder(encoder)
        self.encoder = module
        self._head = unused_head(module)  # the MLP's `output`: not used, not trained
        self.combine = check_choice("combine", combine, _COMBINES)
        self.head_hidden = check_int("head_hidden", head_hidden, low=0)
        self.feature_dim = _feature_dim(module, feature_dim)
        self.lr, self.optimizer_kwargs, self._optimizer_factory, optimizer_spec = resolve_optimizer_args(
            optimizer, lr, optimizer_kwargs
        )
        width = self.feature_dim * (2 if self.combine == "concat" else 1)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if self.head_hidden:
            layers["hidden"] = nn.Linear(width, self.head_hidden)
            layers["act"] = nn.ELU()
            width = self.head_hidden
        layers["output"] = nn.Linear(width, 1)
        self.head = nn.Sequential(layers)
        self._checked: set[str] = set()
        encoder = spec  # type: ignore[assignment]
        optimizer = optimizer_spec
        self.save_hyperparameters()

    def features(self, x: Tensor) -> Tensor:
        """The encoder's features of a batch, ``[N, feature_dim]``.

        Example:
            >>> from lightning_dnn.nn import MLP
            >>> SiamesePretrainer(MLP(64, (32, 16), 10)).features(torch.zeros(2, 1, 8, 8)).shape
            torch.Size([2, 16])
        """
        forward_features = getattr(self.encoder, "forward_features", None)
        h = forward_features(x) if callable(forward_features) else self.encoder(x)
        return torch.flatten(h, 1) if h.dim() > 2 else h

    @override
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The logit of "same class" for each pair, ``[N]``."""
        h = self.features(torch.cat([x1, x2]))
        h1, h2 = h[: len(x1)], h[len(x1) :]
        z = (h1 - h2).abs() if self.combine == "absdiff" else torch.cat([h1, h2], dim=1)
        logits: Tensor = self.head(z).squeeze(1)
        return logits

    def _step(self, batch: Any, stage: str) -> Tensor:
        if not isinstance(batch, list | tuple) or len(batch) != 3:
            raise ValueError(
                "SiamesePretrainer expects batches (x1, x2, same), e.g. from PairDataModule, got "
                f"{type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, list | tuple) else "")
            )
        x1, x2, same = batch
        if stage not in self._checked:
            _check_pair_batch(x1, x2, same)
            self._checked.add(stage)
        target = same.to(torch.float32)
        logits = self(x1, x2)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        accuracy = ((logits.detach() > 0).float() == target).float().mean()
        n = len(target)
        for name, value in (("loss", loss), ("accuracy", accuracy)):
            self.log(f"{stage}_{name}", value, on_step=False, on_epoch=True, prog_bar=stage != "test",
                     sync_dist=True, batch_size=n)
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return touch(self._step(batch, "train"), self._head, self._trainer)

    @override
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "test")

    @override
    def setup(self, stage: str) -> None:
        """Check the first batch of each stage again in a new fit/validate/test."""
        self._checked.clear()

    @override
    def configure_optimizers(self) -> Any:
        if self._optimizer_factory is None:
            raise ValueError("SiamesePretrainer: no optimizer; pass `optimizer=` to train")
        head = {id(p) for p in self._head}
        return self._optimizer_factory([p for p in self.parameters() if id(p) not in head])


def _feature_dim(encoder: nn.Module, feature_dim: int | None) -> int:
    if feature_dim is not None:
        return check_int("feature_dim", feature_dim, low=1)
    sizes = getattr(encoder, "hidden_sizes", None)
    if isinstance(sizes, tuple | list) and sizes and callable(getattr(encoder, "forward_features", None)):
        return int(sizes[-1])
    num_features = getattr(encoder, "num_features", None)
    if isinstance(num_features, int) and not isinstance(num_features, bool) and num_features > 0:
        return num_features
    raise ValueError(
        f"`feature_dim` is needed: cannot tell how many features {type(encoder).__name__} produces (it has no "
        "hidden_sizes/forward_features as MLP, nor num_features); pass feature_dim=<size of encoder(x) per sample>"
    )


def _check_pair_batch(x1: Any, x2: Any, same: Any) -> None:
    if not all(isinstance(t, Tensor) for t in (x1, x2, same)):
        raise TypeError(
            "SiamesePretrainer: a batch (x1, x2, same) must hold three tensors, got "
            f"({type(x1).__name__}, {type(x2).__name__}, {type(same).__name__})"
        )
    if x1.shape != x2.shape or same.dim() != 1 or len(same) != len(x1):
        raise ValueError(
            f"SiamesePretrainer: x1 and x2 must have the same shape and `same` one label per pair, got x1 "
            f"{list(x1.shape)}, x2 {list(x2.shape)}, same {list(same.shape)}"
        )
    if same.dtype != torch.bool and not bool(((same == 0) | (same == 1)).all()):
        raise ValueError(
            f"SiamesePretrainer: `same` must hold 0/1 (or bool) labels, got values {same.unique()[:5].tolist()}"
        )
