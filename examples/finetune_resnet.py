"""Fine-tune a torchvision ResNet-18 on Fashion-MNIST: the head on cached features, then top-down unfreezing.

The recipe a fine-tuner knows: load pretrained weights, replace the classifier, train only the new head (here on
cached outputs of the frozen trunk: :class:`~lightning_dnn.callbacks.FeatureCache`, so those epochs never run the
frozen layers after the first pass), then unfreeze ``layer4``, ``layer3``, ... one epoch apart with a smaller
learning rate for the pretrained layers (:class:`~lightning_dnn.callbacks.LayerFreezer`'s ``unfreeze`` and
``unfrozen_lr``). The cache follows the schedule: its boundary moves down as layers unfreeze.

Weights: ``--weights path/to/model.safetensors`` (a torchvision-layout state dict, e.g. saved from
``resnet18(weights="DEFAULT")``) or ``--weights hf://<repo>`` when online; without them the network starts from
random weights (offline). Data: Fashion-MNIST from /usr/share/datasets/fashion-mnist as 3-channel images (the
grey channel repeated, normalized in the data, not in ``forward``), or the embedded 8x8 digits when absent.
DDP-ready: no global state; ``--devices 2 --strategy ddp``.

    python examples/finetune_resnet.py [--train-samples 2000] [--head-epochs 3] [--epochs 8] [--out curve.png]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from torch.nn import functional as F

from lightning_dnn import DNNClassifier, LayerFreezer
from lightning_dnn.callbacks import FeatureCache
from lightning_dnn.data import ArrayDataModule

FASHION = Path("/usr/share/datasets/fashion-mnist")
TOP_DOWN = ("layer4", "layer3", "layer2", ["layer1", "conv1", "bn1"])  # unfreezing order, one epoch apart
MEAN, STD = (
    (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225),
)  # ImageNet statistics, as the pretrained weights expect


def load_images(train: int, test: int, size: int, seed: int) -> tuple[str, tuple[torch.Tensor, ...]]:
    """``(name, (x_train, y_train, x_test, y_test))``: 3-channel ``size`` x ``size`` images, normalized."""
    rng = np.random.default_rng(seed)
    if (FASHION / "train-images-idx3-ubyte.gz").exists():
        from lightning_dnn.data.idx import read_idx

        name = "Fashion-MNIST"
        parts = [
            read_idx(FASHION / f"{s}-{k}-idx{d}-ubyte.gz")
            for s in ("train", "t10k")
            for k, d in (("images", 3), ("labels", 1))
        ]
        x_tr, y_tr, x_te, y_te = (np.asarray(p) for p in parts)
        x_tr, x_te = x_tr / 255.0, x_te / 255.0
    else:
        from sklearn.datasets import load_digits

        name = "digits (Fashion-MNIST not found)"
        bunch = load_digits()
        x, y = bunch.images / 16.0, bunch.target
        order = rng.permutation(len(y))
        x_tr, y_tr, x_te, y_te = x[order[:-360]], y[order[:-360]], x[order[-360:]], y[order[-360:]]
    pick_tr = rng.permutation(len(y_tr))[:train]
    pick_te = rng.permutation(len(y_te))[:test]
    return name, (
        to_rgb(x_tr[pick_tr], size), torch.as_tensor(y_tr[pick_tr], dtype=torch.int64),
        to_rgb(x_te[pick_te], size), torch.as_tensor(y_te[pick_te], dtype=torch.int64),
    )  # fmt: skip


def to_rgb(grey: np.ndarray, size: int) -> torch.Tensor:
    """``[N, H, W]`` values in [0, 1] -> ``[N, 3, size, size]`` normalized with ImageNet statistics."""
    x = torch.as_tensor(np.asarray(grey, dtype=np.float32))[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def resnet18(weights: str | None, num_classes: int) -> torch.nn.Module:
    """A torchvision ResNet-18 with a ``num_classes`` head; pretrained lower layers when ``weights`` is given."""
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if weights:
        from lightning_dnn.hub import load_pretrained

        load_pretrained(weights, exclude="fc", into=net)  # the new head keeps its fresh weights
    return net


class Curve(pl.Callback):
    """One row per epoch: what trains, the cached boundary, the epoch's seconds (with validation), accuracy."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache, self._start = cache, 0.0
        self.rows: list[dict[str, Any]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainable = sorted({n.split(".")[1] for n, p in pl_module.named_parameters() if p.requires_grad})
        metrics = trainer.callback_metrics
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "trains": ",".join(trainable),
                "cached": self.cache.current_boundary or "-",
                "seconds": time.perf_counter() - self._start,
                "val_acc": float(metrics.get("val_acc", float("nan"))),
                "train_loss": float(metrics.get("train_loss", float("nan"))),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", default=None, help="a .safetensors file/folder or hf://repo; default: random"
    )
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--head-epochs", type=int, default=3, help="epochs of head-only training (cached)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="the head's learning rate (Adam)")
    parser.add_argument("--unfrozen-lr", type=float, default=1e-4, help="learning rate of unfrozen layers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--devices", default="1")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("finetune_resnet.png"))
    args = parser.parse_args()
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning_dnn"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    pl.seed_everything(args.seed, verbose=False)
    data_name, (x_tr, y_tr, x_te, y_te) = load_images(
        args.train_samples, args.test_samples, args.size, args.seed
    )
    data = ArrayDataModule(
        x_tr, y_tr, x_te, y_te, flatten=False, batch_size=args.batch_size, val_split=0.1, seed=args.seed
    )
    model = DNNClassifier(resnet18(args.weights, 10), 10, optimizer="adam", lr=args.lr)
    schedule: dict[int, Any] = {args.head_epochs + i: layers for i, layers in enumerate(TOP_DOWN)}
    freezer = LayerFreezer(
        ["conv1", "bn1", "layer[1-4]"],
        unfreeze={e: layers for e, layers in schedule.items() if e < args.epochs},
        unfrozen_lr=args.unfrozen_lr,
    )
    cache = FeatureCache()
    curve = Curve(cache)
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="auto", devices=args.devices, strategy=args.strategy, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[freezer, cache, curve],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    test_acc = float(trainer.test(model, datamodule=data, verbose=False)[0]["test_acc"])
    if trainer.global_rank != 0:
        return
    print(f"ResNet-18 ({'weights ' + args.weights if args.weights else 'random weights'}) on {data_name}: "
          f"{len(y_tr)} training images at {args.size}x{args.size}, {len(y_te)} test images")  # fmt: skip
    print(f"{'epoch':>5} | {'trains':<41} | {'cached boundary':<15} | {'seconds':>7} | {'val acc':>7}")
    for r in curve.rows:
        print(
            f"{r['epoch']:>5} | {r['trains']:<41} | {r['cached']:<15} | {r['seconds']:7.2f} | {r['val_acc']:7.4f}"
        )
    print(f"test accuracy: {test_acc:.4f}")
    plot(curve.rows, args.head_epochs, args.out)
    print(f"learning curve: {args.out}")


def plot(rows: list[dict[str, Any]], head_epochs: int, out: Path) -> None:
    """Validation accuracy per epoch, the head-only (cached) phase shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["epoch"] for r in rows], [r["val_acc"] for r in rows], marker="o")
    ax.axvspan(-0.5, head_epochs - 0.5, alpha=0.15, label="head only, cached features")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("ResNet-18: head first, then top-down unfreezing")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
