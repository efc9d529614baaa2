"""DNNClassifier's helpers: the epoch sums kept on the device, batch and label checks, the validation probe."""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = [
    "EpochSums",
    "check_labels",
    "count_nonfinite",
    "expected_input",
    "has_batches",
    "has_validation",
    "split_batch",
]


class EpochSums:
    """Batch-size-weighted sums kept on the device during an epoch, reduced across processes at its end.

    ``update`` is one in-place add per value (no host synchronization); ``compute`` makes one collective call.
    The sums are plain tensors, not buffers, so DDP's buffer broadcast never overwrites a rank's own sums.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def reset(self) -> None:
        """Forget the epoch's sums."""
        self.sums = {}
        self.count = 0

    def to(self, device: torch.device) -> None:
        """Move the sums to ``device`` (where the steps add to them)."""
        self.sums = {key: value.to(device) for key, value in self.sums.items()}

    def state_dict(self, strategy: Any | None) -> dict[str, Any] | None:
        """The sums summed over all processes (one collective per value), on the CPU; ``None`` when empty.

        Every process must call it (as every process runs ``on_save_checkpoint``).
        """
        if not self.sums:
            return None
        device = next(iter(self.sums.values())).device
        sums, count = dict(self.sums), torch.tensor(self.count, dtype=torch.int64, device=device)
        if strategy is not None:
            sums = {key: strategy.reduce(value.clone(), reduce_op="sum") for key, value in sums.items()}
            count = strategy.reduce(count, reduce_op="sum")
        return {"count": int(count), "sums": {key: value.detach().cpu().clone() for key, value in sums.items()}}

    def load_state_dict(self, state: Mapping[str, Any], *, keep: bool) -> None:
        """Take the sums of ``state`` (``keep``: process 0) or zeros of the same keys (the other processes).

        The epoch-end reduction sums over processes, so the global sums stored by :meth:`state_dict` come out
        right whatever the number of processes of the resumed run.
        """
        sums = state.get("sums", {})
        self.sums = {key: (value.clone() if keep else torch.zeros_like(value)) for key, value in sums.items()}
        self.count = int(state.get("count", 0)) if keep else 0

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

    def compute(self, strategy: Any, totals: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Return each weighted mean over all processes (and each of ``totals`` summed over them) and reset."""
        keys, extra = list(self.sums), dict(totals or {})
        first = self.sums[keys[0]]
        stacked = torch.stack(
            [self.sums[k].to(first.dtype) for k in keys]
            + [v.to(first.device, first.dtype) for v in extra.values()]
            + [first.new_tensor(float(self.count))]
        )
        stacked = strategy.reduce(stacked, reduce_op="sum")
        means = {key: stacked[i] / stacked[-1] for i, key in enumerate(keys)}
        means.update({key: stacked[len(keys) + i] for i, key in enumerate(extra)})
        self.reset()
        return means


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"DNNClassifier expects batches `(x, y)` with integer labels `y`, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, list | tuple) else "")
    )


def has_validation(module: pl.LightningModule) -> bool:
    """Whether the fit will run a validation loop with batches (asked before the loop loads its loaders)."""
    trainer = module._trainer
    if trainer is None:
        return True
    if trainer.limit_val_batches == 0:
        return False
    loaders = trainer.val_dataloaders  # None until the validation loop loads them
    if loaders is None:
        try:  # the source Lightning's own loop reads: the loaders given to fit(), or the val_dataloader hook
            source = trainer.fit_loop.epoch_loop.val_loop._data_source
            if not source.is_defined():
                return False
            loaders = source.dataloader()  # a data module is set up by now (setup runs before this)
        except AttributeError:  # pragma: no cover - other Lightning versions
            return True
    return has_batches(loaders)


def has_batches(loaders: Any) -> bool:
    """False for ``[]``, ``{}``, ``None`` and loaders of length 0 (and collections of only those)."""
    if loaders is None:
        return False
    if isinstance(loaders, list | tuple):
        return any(has_batches(loader) for loader in loaders)
    if isinstance(loaders, Mapping):
        return any(has_batches(loader) for loader in loaders.values())
    if isinstance(loaders, Sized):
        try:
            return len(loaders) > 0
        except TypeError:  # an iterable-style dataset's loader has no length
            return True
    return True


def check_labels(y: Any, num_classes: int, what: str) -> None:
    """Raise ValueError/TypeError unless ``y`` is a vector of integer labels in ``0..num_classes-1``."""
    if not isinstance(y, Tensor):
        raise TypeError(
            f"DNNClassifier expects integer class labels y as a tensor, but {what} has y of type {type(y).__name__}"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(
            f"DNNClassifier expects integer class labels 0..{num_classes - 1} in y, but {what} has labels of "
            f"dtype {y.dtype}. Convert them with y.long() (class probabilities are not supported)."
        )
    if y.dim() != 1:
        raise ValueError(
            f"DNNClassifier expects y as a vector [N] of class labels, but {what} has y of shape {list(y.shape)}"
            + (" (use y.squeeze(1))" if y.dim() == 2 and y.shape[1] == 1 else "")
        )
    bad = (y < 0) | (y >= num_classes)
    if not bool(bad.any()):
        return
    index = int(bad.nonzero()[0])
    label = int(y[index])
    hint = (
        "labels must be class indices >= 0"
        if label < 0
        else "the data has more classes than the network has outputs: build the network with more outputs "
        "(num_classes / out_features), or select classes with the data module's `classes=`"
    )
    raise ValueError(
        f"DNNClassifier: label {label} (at index {index} of {what}) is out of range for "
        f"num_classes={num_classes} (labels must be 0..{num_classes - 1}): {hint}."
    )


def expected_input(net: nn.Module) -> str:
    """What the network's first layer takes, for error messages: ``"[N, 784] (its first layer, ...)"``."""
    in_features = getattr(net, "in_features", None)
    if isinstance(in_features, int) and not isinstance(in_features, bool) and in_features > 0:
        return f"[N, {in_features}] ({type(net).__name__}(in_features={in_features}))"
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear) and module.in_features > 0:
            return f"[N, {module.in_features}] (its first layer, {name}: Linear(in_features={module.in_features}))"
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.in_channels > 0:
            dims = {nn.Conv1d: "L", nn.Conv2d: "H, W", nn.Conv3d: "D, H, W"}[type(module)]
            return (
                f"[N, {module.in_channels}, {dims}] (its first layer, {name}: "
                f"{type(module).__name__}(in_channels={module.in_channels}))"
            )
    return "an input its first layer does not declare"


def count_nonfinite(net: nn.Module) -> Tensor:
    """The number of parameter tensors of ``net`` holding a NaN or inf, as a device tensor (no host sync)."""
    flags = [torch.isfinite(p).all() for p in net.parameters()]
    if not flags:
        return torch.zeros(())
    devices = {f.device for f in flags}
    if len(devices) > 1:
        flags = [f.to(flags[0].device) for f in flags]
    return (~torch.stack(flags)).sum()
