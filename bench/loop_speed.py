"""Epoch time of config 1 (the TF1 notebook's run) with DNNClassifier + our data module vs. a raw PyTorch loop.

The raw loop (bench/plain_pytorch.py) trains the same network on device-resident tensors with index_select
batches: the framework-free floor. Every variant runs in this one process, interleaved, and the table reports
median epoch times and their ratio to the raw loop (issue 3's goal: <= 1.15x on CPU).

Variants:
  raw-control  the raw loop against a second copy of itself (the method's noise)
  ours-cli     config 1 through `lightning-dnn fit`'s code path with its defaults (rich progress bar, loggers,
               learning curves, checkpointing)
  ours         DNNClassifier + FashionMNISTDataModule in a plain Trainer (Lightning's default TQDM bar, logger,
               checkpointing)
  ours-quiet   the same with the progress bar, logger and checkpointing off
  pl-floor     the smallest LightningModule over the same device-resident loader (forward, cross-entropy, SGD;
               no metrics, no logging), quiet Trainer: what Lightning's own per-step loop costs, which no module
               can go below
  typical      a typical Lightning setup: DataLoader over a TensorDataset, per-step self.log, progress bar

Method: every timed epoch comes right after one epoch of the raw loop (its own network, in the same process), and
a variant's ratio is the median of these paired ratios. On a shared machine the speed drifts by +-20% over tens of
seconds; a pair is measured within a few seconds, so the drift cancels out of its ratio. ``raw-control`` pairs
the raw loop with a second copy of itself: its spread is the method's own noise.

    python -m bench.loop_speed [--epochs 5] [--repeats 2] [--threads 2] [--variants ...] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench import plain_pytorch as raw
from lightning_dnn import MLP, DNNClassifier
from lightning_dnn.cli import DNNCLI
from lightning_dnn.data import FashionMNISTDataModule


class RawLoop:
    """The raw loop with its own network, optimizer and shuffling generator, run one timed epoch at a time."""

    def __init__(self, device: str, xtr: torch.Tensor, ytr: torch.Tensor) -> None:
        torch.manual_seed(0)
        self.net = raw.build_net(raw.CONFIG1).to(device)
        self.opt = raw.make_optimizer(raw.CONFIG1, self.net.parameters())
        self.gen = torch.Generator().manual_seed(0)
        self.device, self.xtr, self.ytr = device, xtr, ytr

    def epoch(self) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        raw.train_epoch(self.net, self.opt, self.xtr, self.ytr, raw.CONFIG1.batch_size, self.gen)
        _sync(self.device)
        return time.perf_counter() - t0


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class EpochTimer(pl.Callback):
    """Times each training epoch (start of the first batch fetch to the end of the last step), right after one
    epoch of the raw loop: each variant's epoch has its own baseline, measured seconds before it."""

    def __init__(self, raw_loop: RawLoop) -> None:
        self.raw_loop = raw_loop
        self.times: list[float] = []
        self.raw_times: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.raw_times.append(self.raw_loop.epoch())
        _sync(pl_module.device)
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module.device)
        self.times.append(time.perf_counter() - self._t0)

    def pairs(self) -> list[tuple[float, float]]:
        """``(raw epoch, variant epoch)`` pairs, the first epoch (one-off costs) left out."""
        return list(zip(self.raw_times[1:], self.times[1:], strict=True))

def config1_net() -> MLP:
    c = raw.CONFIG1
    return MLP(784, c.hidden, 10, activation="elu", norm="batch", output_norm=True, bn_momentum=c.bn_momentum)


def trainer(epochs: int, device: str, quiet: bool, root: str, timer: EpochTimer) -> pl.Trainer:
    kwargs = dict(max_epochs=epochs, accelerator=device, devices=1, callbacks=[timer], default_root_dir=root,
                  enable_model_summary=False, num_sanity_val_steps=0)
    if quiet:
        kwargs.update(enable_progress_bar=False, logger=False, enable_checkpointing=False)
    return pl.Trainer(**kwargs)


def fashion(batch_size: int = raw.CONFIG1.batch_size) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(raw.FASHION_DIR, download=False, batch_size=batch_size)


def run_cli(timer: EpochTimer, epochs: int, device: str, root: str) -> None:
    """Config 1 through the ``lightning-dnn fit`` code path: our CLI defaults (rich progress bar, CSV and
    TensorBoard loggers, learning curves, checkpoints); no validation loop, so only training is timed."""
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


def run_ours(timer: EpochTimer, epochs: int, device: str, root: str, quiet: bool) -> None:
    model = DNNClassifier(config1_net(), optimizer="sgd", lr=raw.CONFIG1.lr)
    trainer(epochs, device, quiet, root, timer).fit(model, datamodule=fashion())


class FloorModule(pl.LightningModule):
    """The least a LightningModule can do: forward, cross-entropy, SGD. No metrics, no logging."""

    def __init__(self) -> None:
        super().__init__()
        self.net = config1_net()

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=raw.CONFIG1.lr)


def run_floor(timer: EpochTimer, epochs: int, device: str, root: str) -> None:
    trainer(epochs, device, True, root, timer).fit(FloorModule(), datamodule=fashion())


class TypicalModule(FloorModule):
    """What a typical Lightning tutorial writes: per-step self.log of loss and accuracy."""

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)
        return loss


def run_typical(timer: EpochTimer, epochs: int, device: str, root: str) -> None:
    xtr, ytr = timer.raw_loop.xtr.cpu(), timer.raw_loop.ytr.cpu()
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=raw.CONFIG1.batch_size, shuffle=True)
    trainer(epochs, device, False, root, timer).fit(TypicalModule(), loader)


def run_control(timer: EpochTimer, epochs: int) -> None:
    """The raw loop against itself (a second copy): the ratio measures the method's own noise."""
    other = RawLoop(timer.raw_loop.device, timer.raw_loop.xtr, timer.raw_loop.ytr)
    for _ in range(epochs):
        timer.raw_times.append(timer.raw_loop.epoch())
        timer.times.append(other.epoch())


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


VARIANTS = ("raw-control", "pl-floor", "ours-cli", "ours", "ours-quiet", "typical")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="epochs per fit; the first is discarded as warm-up")
    p.add_argument("--repeats", type=int, default=2, help="fits of each variant, interleaved")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    xtr, ytr, _, _ = raw.load_fashion(a.device)
    pairs: dict[str, list[tuple[float, float]]] = {name: [] for name in a.variants}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(a.repeats):
            for name in a.variants:
                timer = EpochTimer(RawLoop(a.device, xtr, ytr))
                if name == "raw-control":
                    run_control(timer, a.epochs)
                elif name == "pl-floor":
                    run_floor(timer, a.epochs, a.device, root)
                elif name == "ours-cli":
                    run_cli(timer, a.epochs, a.device, root)
                elif name == "typical":
                    run_typical(timer, a.epochs, a.device, root)
                else:
                    run_ours(timer, a.epochs, a.device, root, quiet=name == "ours-quiet")
                pairs[name] += timer.pairs()
    steps = -(-len(xtr) // raw.CONFIG1.batch_size)
    print(f"\nmachine: {machine(a.device, a.threads)}; load average {os.getloadavg()[0]:.1f}")
    print(f"config 1 on Fashion-MNIST ({len(xtr)} samples, batch {raw.CONFIG1.batch_size}, {steps} steps), "
          f"{a.repeats} fits x {a.epochs - 1} timed epochs per variant, each right after a raw-loop epoch\n")
    print("| variant | raw epoch (s) | variant epoch (s) | ratio: median of pairs | pair ratios (min-max) "
          "| over raw, per step |")
    print("|---|---|---|---|---|---|")
    for name, got in pairs.items():
        ratios = sorted(t / r for r, t in got)
        raw_med = statistics.median(r for r, _ in got)
        var_med = statistics.median(t for _, t in got)
        ratio = statistics.median(ratios)
        print(f"| {name} | {raw_med:.3f} | {var_med:.3f} | {ratio:.3f}x | {ratios[0]:.2f}-{ratios[-1]:.2f} "
              f"| {(ratio - 1) * raw_med / steps * 1e6:+.0f} us |")


if __name__ == "__main__":
    main()
