"""Epoch time of config 1 (the TF1 notebook's run) with DNNClassifier + our data module vs. a raw PyTorch loop.

The raw loop (bench/plain_pytorch.py) trains the same network on device-resident tensors with index_select
batches: the framework-free floor. Every variant runs in this one process, interleaved, and the table reports
median epoch times and their ratio to the raw loop (issue 3's goal: <= 1.15x on CPU).

Variants:
  raw          plain PyTorch loop over device-resident tensors (the floor)
  ours-cli     config 1 through `lightning-dnn fit`'s code path with its defaults (rich progress bar, loggers,
               learning curves, checkpointing)
  ours         DNNClassifier + FashionMNISTDataModule in a plain Trainer (Lightning's default TQDM bar, logger,
               checkpointing)
  ours-quiet   the same with the progress bar, logger and checkpointing off
  typical      a typical Lightning setup: DataLoader over a TensorDataset, per-step self.log, progress bar

    python bench/loop_speed.py [--epochs 4] [--repeats 3] [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plain_pytorch as raw

from lightning_dnn import MLP, DNNClassifier
from lightning_dnn.cli import DNNCLI
from lightning_dnn.data import FashionMNISTDataModule


class EpochTimer(pl.Callback):
    """Wall time of each training epoch (start of the first batch fetch to the end of the last step)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._t0)

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()


def config1_net() -> MLP:
    c = raw.CONFIG1
    return MLP(784, c.hidden, 10, activation="elu", norm="batch", output_norm=True, bn_momentum=c.bn_momentum)


def trainer(epochs: int, device: str, quiet: bool, root: str, timer: EpochTimer) -> pl.Trainer:
    kwargs = dict(max_epochs=epochs, accelerator=device, devices=1, callbacks=[timer], default_root_dir=root,
                  enable_model_summary=False, num_sanity_val_steps=0)
    if quiet:
        kwargs.update(enable_progress_bar=False, logger=False, enable_checkpointing=False)
    return pl.Trainer(**kwargs)


def run_cli(epochs: int, device: str, root: str) -> list[float]:
    """Config 1 through the ``lightning-dnn fit`` code path: our CLI defaults (rich progress bar, CSV and
    TensorBoard loggers, learning curves, checkpoints); no validation loop, so only training is timed."""
    timer = EpochTimer()
    cli = DNNCLI(
        args=[
            "--config", str(Path(__file__).resolve().parents[1] / "examples" / "configs" / "tf1_notebook.yaml"),
            "--data.init_args.root", raw.FASHION_DIR,
            "--data.init_args.val_split", "0",
            "--trainer.max_epochs", str(epochs),
            "--trainer.accelerator", device,
            "--trainer.default_root_dir", root,
            "--trainer.num_sanity_val_steps", "0",
        ],
        run=False,
    )
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.times[1:]


def run_ours(epochs: int, device: str, quiet: bool, root: str) -> list[float]:
    timer = EpochTimer()
    data = FashionMNISTDataModule(raw.FASHION_DIR, download=False, batch_size=raw.CONFIG1.batch_size)
    model = DNNClassifier(config1_net(), optimizer="sgd", lr=raw.CONFIG1.lr)
    trainer(epochs, device, quiet, root, timer).fit(model, datamodule=data)
    return timer.times[1:]  # the first epoch pays one-off costs (moving data, allocator warm-up)


class TypicalModule(pl.LightningModule):
    """What a typical Lightning tutorial writes: per-step self.log of loss and accuracy."""

    def __init__(self) -> None:
        super().__init__()
        self.net = config1_net()

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=raw.CONFIG1.lr)


def run_typical(epochs: int, device: str, root: str, xtr: torch.Tensor, ytr: torch.Tensor) -> list[float]:
    timer = EpochTimer()
    loader = DataLoader(TensorDataset(xtr.cpu(), ytr.cpu()), batch_size=raw.CONFIG1.batch_size, shuffle=True)
    trainer(epochs, device, False, root, timer).fit(TypicalModule(), loader)
    return timer.times[1:]


def run_raw(epochs: int, device: str, xtr: torch.Tensor, ytr: torch.Tensor) -> list[float]:
    torch.manual_seed(0)
    net = raw.build_net(raw.CONFIG1).to(device)
    opt = raw.make_optimizer(raw.CONFIG1, net.parameters())
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        raw.train_epoch(net, opt, xtr, ytr, raw.CONFIG1.batch_size, gen)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[1:]


def machine(device: str, threads: int) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch threads (torch {torch.__version__})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4, help="epochs per fit; the first is discarded as warm-up")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-typical", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    xtr, ytr, _, _ = raw.load_fashion(a.device)
    results: dict[str, list[float]] = {"raw": [], "ours-cli": [], "ours": [], "ours-quiet": [], "typical": []}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(a.repeats):
            results["raw"] += run_raw(a.epochs, a.device, xtr, ytr)
            results["ours-cli"] += run_cli(a.epochs, a.device, root)
            results["raw"] += run_raw(a.epochs, a.device, xtr, ytr)
            results["ours"] += run_ours(a.epochs, a.device, False, root)
            results["raw"] += run_raw(a.epochs, a.device, xtr, ytr)
            results["ours-quiet"] += run_ours(a.epochs, a.device, True, root)
            if not a.skip_typical:
                results["typical"] += run_typical(a.epochs, a.device, root, xtr, ytr)
    floor = statistics.median(results["raw"])
    print(f"\nmachine: {machine(a.device, a.threads)}; load average {os.getloadavg()[0]:.1f}")
    print(f"config 1 on Fashion-MNIST (60000 samples, batch {raw.CONFIG1.batch_size}), "
          f"median of {a.repeats} x {a.epochs - 1} epochs\n")
    print("| variant | epoch (s) | ratio to raw |")
    print("|---|---|---|")
    for name, times in results.items():
        if times:
            med = statistics.median(times)
            print(f"| {name} | {med:.3f} | {med / floor:.2f}x |")


if __name__ == "__main__":
    main()
