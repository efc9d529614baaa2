"""Autoencoder: unsupervised pretraining of an MLP's hidden layers (Géron ch. 11 "Unsupervised Pretraining")."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_dnn._checks import check_bool, check_choice, check_int, check_number
from lightning_dnn._lightning import LightningModule, rank_zero_warn
from lightning_dnn._specs import NetSpec, resolve_optimizer_args
from lightning_dnn.pretrain._common import (
    batch_inputs,
    ddp_finds_unused,
    resolve_encoder,
    step_generator,
    touch,
    unused_head,
)
from lightning_dnn.pretrain._decoder import MirrorDecoder, encoder_blocks, frozen
from lightning_dnn.pretrain._grid import image_shape_of, write_reconstruction_grid

__all__ = ["Autoencoder"]

Noise = Literal["none", "gaussian", "mask"]
Loss = Literal["mse", "bce"]
_NOISES = ("none", "gaussian", "mask")
_LOSSES = ("mse", "bce")


class Autoencoder(LightningModule):
    """Train an encoder's ``hidden1..N`` blocks to reconstruct their inputs, through a mirrored decoder.

    The encoder (``self.encoder``) is any network with ``hidden1..N`` blocks that start with an ``nn.Linear``, such
    as :class:`~lightning_dnn.nn.MLP`; its ``output`` head, if any, is not used (nor trained). Inputs are flattened
    to ``[N, in_features]`` as ``MLP`` does; the encoder's input dropout, when it has one, applies in training.
    The decoder (``self.decoder``, :class:`MirrorDecoder`) mirrors the hidden blocks back to the input size:
    ``mirrorK`` maps ``hiddenK``'s codings to its input with a linear layer and ``hidden(K-1)``'s activation,
    ``mirror1`` is linear. Afterwards ``save_pretrained(model.encoder, folder)`` writes a folder whose hidden
    layers ``load_pretrained(folder, include="hidden[1-3]", into=net)`` reuses.

    Options:

    * ``tied=True``: ``mirrorK`` uses ``hiddenK``'s weight transposed (one tensor, trained and saved once;
      the decoder only adds biases), halving the parameters, as in Géron's tied-weights autoencoder.
    * ``noise``: a denoising autoencoder (Vincent et al., 2008) reconstructs the clean input from a corrupted one:
      ``"gaussian"`` adds ``N(0, noise_std^2)``, ``"mask"`` zeroes each value with probability ``mask_prob``.
      Training only; the noise of a batch is drawn from ``(noise_seed, global_step, rank)`` (and its index
      ``k > 0`` within an optimizer step under ``accumulate_grad_batches``), so a resumed run draws the same
      noise as an uninterrupted one and the micro-batches of one step draw different noise.
    * ``loss``: ``"mse"`` on the outputs, or ``"bce"``: binary cross-entropy on the logits of the outputs
      (the reconstruction is their sigmoid), for inputs in ``[0, 1]`` (checked on every batch: an input outside
      raises ``ValueError``; use the data module's ``scaling="unit"``).
    * ``layerwise=True``: greedy layer-wise training (Hinton et al., 2006; Bengio et al., 2007), the chapter's
      historical recipe. Phase ``k`` (epochs ``(k-1)*E .. k*E-1`` with ``E = epochs_per_layer``) trains only
      ``hiddenK`` and ``mirrorK`` to reconstruct the codings of the frozen ``hidden1..K-1`` (the inputs for
      ``k = 1``; those run in eval mode without gradients, so their tensors and buffers stay bit-for-bit
      unchanged); ``loss`` applies to phase 1, the later phases reconstruct codings with MSE. Epochs after the
      last phase fine-tune the whole stack end to end. The phase follows ``trainer.current_epoch``, so a run
      resumed from a checkpoint continues in the phase it stopped in.

    Logged per epoch: ``train_loss`` (the quantity minimized: the phase's loss in layer-wise mode),
    ``val_loss``/``test_loss`` (the whole stack's reconstruction loss on clean inputs, with ``loss``; in
    layer-wise mode it includes the untrained upper layers until the last phase) and ``val_mse``/``test_mse``
    (mean squared error of the reconstruction, whatever ``loss``). After each validation epoch, with
    ``grid_samples > 0`` and a logger, ``reconstructions/epoch_NNN.png`` in ``trainer.log_dir`` shows the first
    validation samples over their reconstructions (see :meth:`reconstruction_grid`).

    Args:
        encoder: the network (``self.encoder``), or a ``{"class_path", "init_args"}`` mapping that builds it.
        tied: tie each mirror's weight to its hidden layer's (transposed).
        noise: ``"none"``, ``"gaussian"`` or ``"mask"``.
        noise_std: standard deviation of the Gaussian noise, ``> 0``.
        mask_prob: probability of zeroing an input value for ``noise="mask"``, in ``(0, 1)``.
        loss: ``"mse"`` or ``"bce"``.
        layerwise: greedy layer-wise training.
        epochs_per_layer: epochs of each layer-wise phase, ``>= 1``.
        optimizer: an optimizer name for :func:`~lightning_dnn.optim.build_optimizer`, a ``{"class_path",
            "init_args"}`` mapping or a callable ``params -> Optimizer`` (as for DNNClassifier).
        lr: learning rate of an optimizer given by name, ``> 0``.
        optimizer_kwargs: more keyword arguments of an optimizer given by name.
        noise_seed: seed of the noise stream, ``>= 0``.
        grid_samples: samples shown in the reconstruction PNG after each validation epoch (0: no PNG).

    Raises:
        TypeError: for an encoder without ``hidden1..N`` linear blocks (a ConvNet: not supported) or an argument
            of the wrong type.
        ValueError: for a value out of range or an unknown option name.

    Example:
        >>> from lightning_dnn.nn import MLP
        >>> ae = Autoencoder(MLP(64, (32, 16), 10), tied=True, noise="mask")
        >>> [name for name, _ in ae.decoder.named_children()]
        ['mirror2', 'mirror1']
        >>> ae(torch.zeros(3, 1, 8, 8)).shape  # reconstructions, flattened as the MLP flattens its inputs
        torch.Size([3, 64])
        >>> ae.decoder.mirror1.linear.weight.shape == ae.encoder.hidden1.linear.weight.t().shape
        True
    """

    def __init__(
        self,
        encoder: nn.Module | NetSpec,
        *,
        tied: bool = False,
        noise: Noise = "none",
        noise_std: float = 0.1,
        mask_prob: float = 0.25,
        loss: Loss = "mse",
        layerwise: bool = False,
        epochs_per_layer: int = 1,
        optimizer: Any = "adam",
        lr: float = 1e-3,
        optimizer_kwargs: dict[str, Any] | None = None,
        noise_seed: int = 0,
        grid_samples: int = 8,
    ) -> None:
        super().__init__()
        module, spec = resolve_encoder(encoder)
        self.blocks = encoder_blocks(module)  # a plain list: the blocks are registered under `encoder`
        self.encoder = module
        self._head = unused_head(module)  # the MLP's `output`: not used, not trained
        self.in_features = self.blocks[0][0].in_features
        self.tied = check_bool("tied", tied)
        self.noise = check_choice("noise", noise, _NOISES)
        self.noise_std = check_number("noise_std", noise_std, low=0.0, low_inclusive=False)
        self.mask_prob = check_number(
            "mask_prob", mask_prob, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
        )
        self.loss_name = check_choice("loss", loss, _LOSSES)
        self.layerwise = check_bool("layerwise", layerwise)
        self.epochs_per_layer = check_int("epochs_per_layer", epochs_per_layer, low=1)
        self.noise_seed = check_int("noise_seed", noise_seed, low=0)
        self.grid_samples = check_int("grid_samples", grid_samples, low=0)
        self.lr, self.optimizer_kwargs, self._optimizer_factory, optimizer_spec = resolve_optimizer_args(
            optimizer, lr, optimizer_kwargs
        )
        self.decoder = MirrorDecoder(self.blocks, tied=self.tied)
        self._grid: tuple[Tensor, Tensor, tuple[int, ...]] | None = None
        self._warned_grid = False
        encoder = spec  # type: ignore[assignment]  # the JSON-able description goes into the checkpoint
        optimizer = optimizer_spec
        self.save_hyperparameters()

    # ------------------------------------------------------------------------------------------------ the model
    @property
    def depth(self) -> int:
        """The number of hidden blocks ``N``.

        Example:
            >>> from lightning_dnn.nn import MLP
            >>> Autoencoder(MLP(8, (4, 3, 2), 2)).depth
            3
        """
        return len(self.blocks)

    @property
    def phase(self) -> int | None:
        """The hidden layer trained in this epoch (``1..N``) in layer-wise mode; ``None``: the whole stack.

        Example:
            >>> from lightning_dnn.nn import MLP
            >>> Autoencoder(MLP(8, (4, 2), 2), layerwise=True).phase  # epoch 0
            1
        """
        if not self.layerwise:
            return None
        k = self.current_epoch // self.epochs_per_layer + 1
        return k if k <= self.depth else None

    def encode(self, x: Tensor) -> Tensor:
        """The top codings ``hiddenN(...hidden1(x))`` of a batch (flattened first; input dropout in training).

        Example:
            >>> from lightning_dnn.nn import MLP
            >>> Autoencoder(MLP(64, (32, 16), 10)).encode(torch.zeros(2, 1, 8, 8)).shape
            torch.Size([2, 16])
        """
        x = self._flat(x)
        dropout = getattr(self.encoder, "input_dropout", None)
        if isinstance(dropout, nn.Module):
            x = dropout(x)
        for block in self.blocks:
            x = block(x)
        return x

    @override
    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x``, ``[N, in_features]`` (the sigmoid of the decoder's logits for BCE)."""
        out = self.decoder(self.encode(x))
        return torch.sigmoid(out) if self.loss_name == "bce" else out

    def reconstruction_grid(
        self, x: Tensor, path: str | Path, *, image_shape: tuple[int, int] | None = None
    ) -> Path:
        """Write a PNG of the samples ``x`` (top row) over their reconstructions (bottom row).

        Args:
            x: a batch of inputs (a few samples: one column each).
            path: the PNG file to write.
            image_shape: ``(H, W)`` of one sample; default: read from ``x`` (``[N, 1, H, W]``, ``[N, H, W]`` or a
                square ``[N, S*S]``).

        Returns:
            the path written.

        Raises:
            ValueError: when the samples cannot be drawn as images.

        Example:
            >>> import tempfile
            >>> from lightning_dnn.nn import MLP
            >>> ae = Autoencoder(MLP(64, (16,), 10))
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     ae.reconstruction_grid(torch.rand(4, 64), f"{tmp}/grid.png").stat().st_size > 0
            True
        """
        shape = image_shape or image_shape_of(tuple(x.shape[1:]))
        if shape is None or math.prod(shape) != self.in_features:
            raise ValueError(
                f"`image_shape` must be (H, W) with H * W = {self.in_features}, got {image_shape!r} for samples "
                f"of shape {tuple(x.shape[1:])}"
            )
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                recon = self(x)
        finally:
            self.train(was_training)
        return write_reconstruction_grid(self._flat(x), recon, path, shape)

    # ------------------------------------------------------------------------------------------------ training
    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self._checked_inputs(batch)
        phase = self.phase
        if phase is None:
            out = self.decoder(self.encode(self._corrupt(x, batch_idx)))
            loss = self._loss(out, x, self.loss_name)
        else:
            if phase == 1:
                target = x
            else:
                with frozen(self.blocks[: phase - 1]):
                    target = x
                    for block in self.blocks[: phase - 1]:
                        target = block(target)
            inputs = self._corrupt(target, batch_idx)
            dropout = getattr(self.encoder, "input_dropout", None)
            if phase == 1 and isinstance(dropout, nn.Module):
                inputs = dropout(inputs)
            out = self.decoder.mirror(phase)(self.blocks[phase - 1](inputs))
            loss = self._loss(out, target, self.loss_name if phase == 1 else "mse")
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(x)
        )
        return touch(loss, self._head, self._trainer)

    @override
    def setup(self, stage: str) -> None:
        """Refuse layer-wise training under DDP unless DDP tolerates the layers a phase leaves unused."""
        trainer = self._trainer
        if stage == "fit" and self.layerwise and trainer is not None and not ddp_finds_unused(trainer):
            raise ValueError(
                "Autoencoder(layerwise=True) under DDP: each phase leaves the other layers without gradients, "
                "which DDP refuses by default; use strategy='ddp_find_unused_parameters_true' (or "
                "DDPStrategy(find_unused_parameters=True)), which leaves their gradients empty on every rank"
            )

    @override
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x = self._evaluate(batch, "val")
        if batch_idx == 0 and dataloader_idx == 0 and self.grid_samples > 0:
            raw = batch_inputs(batch, "Autoencoder")
            self._grid = (
                x[: self.grid_samples].detach(),
                raw[: self.grid_samples].detach(),
                tuple(raw.shape[1:]),
            )

    @override
    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test")

    @override
    def on_validation_epoch_end(self) -> None:
        grid, self._grid = self._grid, None
        trainer = self._trainer
        if grid is None or trainer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        log_dir = trainer.log_dir if trainer.loggers else None
        shape = image_shape_of(grid[2])
        if log_dir is None or shape is None or math.prod(shape) != self.in_features:
            if not self._warned_grid and log_dir is not None:
                self._warned_grid = True
                rank_zero_warn(
                    f"Autoencoder: samples of shape {grid[2]} cannot be drawn as images; no PNG grid"
                )
            return
        x, _, _ = grid
        with torch.no_grad():
            recon = self.decoder(self.encode(x))
            recon = torch.sigmoid(recon) if self.loss_name == "bce" else recon
        write_reconstruction_grid(
            x, recon, Path(log_dir) / "reconstructions" / f"epoch_{trainer.current_epoch:03d}.png", shape
        )

    @override
    def configure_optimizers(self) -> Any:
        if self._optimizer_factory is None:
            raise ValueError(
                "Autoencoder: no optimizer; pass `optimizer=` (e.g. to load_from_checkpoint) to train"
            )
        head = {id(p) for p in self._head}
        params = [p for p in self.parameters() if id(p) not in head]
        return self._optimizer_factory(params)

    # ------------------------------------------------------------------------------------------------ internals
    def _flat(self, x: Tensor) -> Tensor:
        return torch.flatten(x, 1) if x.dim() > 2 else x

    def _checked_inputs(self, batch: Any) -> Tensor:
        x = self._flat(batch_inputs(batch, "Autoencoder"))
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"Autoencoder: the encoder takes {self.in_features} input features (hidden1), but a batch has "
                f"inputs of shape {list(batch_inputs(batch, 'Autoencoder').shape)}; match the data to the encoder"
            )
        if not x.is_floating_point():
            raise TypeError(f"Autoencoder: inputs must be floating point, got {x.dtype}")
        if self.loss_name == "bce":
            low, high = torch.aminmax(x)
            if float(low) < 0.0 or float(high) > 1.0:
                raise ValueError(
                    f"Autoencoder: loss='bce' needs inputs in [0, 1], got a batch with values in [{float(low):.4g}, "
                    f"{float(high):.4g}]; scale the data to [0, 1] (the data modules' scaling='unit') or use "
                    "loss='mse'"
                )
        return x

    def _corrupt(self, x: Tensor, batch_idx: int) -> Tensor:
        if self.noise == "none":
            return x
        trainer = self._trainer
        rank = int(trainer.global_rank) if trainer is not None else 0
        accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1) if trainer is not None else 1
        # the micro-batches of one accumulated optimizer step share global_step: number them apart
        micro = batch_idx % accumulate
        numbers = (self.noise_seed, int(self.global_step), rank) + ((micro,) if micro else ())
        generator = step_generator(numbers, x.device)
        if self.noise == "gaussian":
            return x + self.noise_std * torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.mask_prob
        return x * keep.to(x.dtype)

    @staticmethod
    def _loss(out: Tensor, target: Tensor, name: str) -> Tensor:
        if name == "bce":
            return F.binary_cross_entropy_with_logits(out, target)
        return F.mse_loss(out, target)

    def _evaluate(self, batch: Any, stage: str) -> Tensor:
        x = self._checked_inputs(batch)
        out = self.decoder(self.encode(x))
        loss = self._loss(out, x, self.loss_name)
        recon = torch.sigmoid(out) if self.loss_name == "bce" else out
        mse = F.mse_loss(recon, x)
        self.log(
            f"{stage}_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=stage == "val",
            sync_dist=True,
            batch_size=len(x),
        )
        self.log(f"{stage}_mse", mse, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(x))
        return x
