"""FeatureCache: cached fine-tuning against live fine-tuning, against the raw PyTorch floor, and the build's cost.

Two cases, both frozen trunk + new head, Adam (lr 1e-3), batch 128, data served by ``DeviceBatchLoader``:

* **mlp**: the trunk is ``hidden1``-``hidden4`` of a 5x100 ELU MLP (784-100-100-100-100, He init), the head a
  new 100 -> 10 output layer (Géron ch. 11: reuse 4 frozen layers of the 5x100 DNN, add a softmax layer);
  Fashion-MNIST's 60,000 training images.
* **conv**: three conv blocks (3x3 conv 32/64/128 channels, batch norm, ReLU, 2x2 max-pool: 28 -> 14 -> 7 -> 3),
  head = flatten + linear 1152 -> 10; the first 10,000 Fashion-MNIST images on CPU (60,000 on a GPU).

Measured in one process, every configuration a fresh model with the same seed, the configurations interleaved in
rotating order for ``--rounds`` rounds (so a shared machine's load hits them alike), medians reported:

==========================  ========================================================================================
row                         what
==========================  ========================================================================================
Lightning live              ``DNNClassifier`` + ``LayerFreezer`` (trunk frozen), trunk computed every step
Lightning cached            the same + ``FeatureCache()``; epochs after the first (the first holds the build)
Lightning on features       ``DNNClassifier(head)`` on a ``DeviceBatchLoader`` over precomputed features, so
                            cached / this = what the cache path itself adds per epoch
Lightning floor             the smallest LightningModule (head forward, cross-entropy, Adam; no metrics) on the
                            same precomputed features: what Lightning's own per-step loop costs, the least any
                            cache that keeps one Lightning step per batch can reach
raw head loop               a plain PyTorch loop training the head on the same feature tensors (``index_select``
                            batches of a seeded permutation): the floor the issue sets the 1.2x goal against
raw live loop               the plain loop computing the trunk every step (no_grad), as in the issue's anchors
build                       the cache's build in the first cached epoch (epoch start -> first batch)
raw forward                 one ``no_grad`` eval pass of the trunk over the data in chunks of 128 (as the build)
CUDA-graph head loop        (GPU only) the raw head step captured once as a CUDA graph and replayed
==========================  ========================================================================================

Epoch times exclude the first epoch of every fit (warm-up; for "cached", the build).

Usage::

    python -m bench.feature_cache                 # CPU, 2 threads, 3 rounds
    python -m bench.feature_cache --quick         # 2 rounds, fewer epochs
    python -m bench.feature_cache --device cuda   # + CUDA-graph head loop
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from lightning_dnn.callbacks import LayerFreezer
from lightning_dnn.callbacks.feature_cache import FeatureCache
from lightning_dnn.data import DeviceBatchLoader
from lightning_dnn.data.idx import read_idx
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP

FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
BATCH, LR = 128, 1e-3
CHUNK = BATCH  # FeatureCache's build reads the data in chunks of the training batch size


@dataclass
class Case:
    name: str
    make_net: Callable[[], nn.Module]
    freeze: str
    trunk: Callable[[nn.Module], Callable[[Tensor], Tensor]]
    head: Callable[[nn.Module], nn.Module]
    x: Tensor
    y: Tensor


def load_fashion(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    images = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")[:n]
    labels = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")[:n]
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return x.to(device), torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)


def mlp_case(device: torch.device) -> Case:
    x, y = load_fashion(60_000, device)

    def make() -> nn.Module:
        torch.manual_seed(0)
        return MLP(784, (100, 100, 100, 100), 10, activation="elu", init="he_normal")

    return Case(
        "mlp",
        make,
        "hidden[1-4]",
        lambda net: net.forward_features,  # type: ignore[attr-defined]
        lambda net: net.output,  # type: ignore[attr-defined]
        x.reshape(len(x), -1),
        y,
    )


def conv_case(device: torch.device) -> Case:
    x, y = load_fashion(10_000 if device.type == "cpu" else 60_000, device)

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
        )

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            OrderedDict(
                block1=block(1, 32),
                block2=block(32, 64),
                block3=block(64, 128),
                flatten=nn.Flatten(),
                output=nn.Linear(128 * 3 * 3, 10),
            )
        )

    return Case(
        "conv",
        make,
        "block[1-3]",
        lambda net: net[:3],  # type: ignore[index]
        lambda net: nn.Sequential(net.flatten, net.output),  # type: ignore[union-attr]
        x,
        y,
    )


# ----------------------------------------------------------------------------------------------- timing --
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(Callback):
    """Epoch wall times and, for the first epoch, the time until the first batch (the cache's build)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.epochs: list[float] = []
        self.first_batch: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        sync(self.device)
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            sync(self.device)
            self.first_batch.append(time.perf_counter() - self.start)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        sync(self.device)
        self.epochs.append(time.perf_counter() - self.start)


def lightning(
    model: pl.LightningModule,
    loader: Any,
    callbacks: list[Callback],
    epochs: int,
    device: torch.device,
    root: Path,
) -> EpochTimer:
    timer = EpochTimer(device)
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=1,
        max_epochs=epochs,
        callbacks=[*callbacks, timer],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    trainer.fit(model, loader)
    return timer


class FloorModule(pl.LightningModule):
    """The least a LightningModule can do per step: forward, cross-entropy, Adam."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.head(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LR)


def features_of(case: Case, device: torch.device) -> Tensor:
    net = case.make_net().to(device).eval()
    with torch.no_grad():
        return torch.cat([case.trunk(net)(chunk) for chunk in case.x.split(CHUNK)])


def raw_forward(case: Case, device: torch.device) -> float:
    net = case.make_net().to(device).eval()
    trunk = case.trunk(net)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for chunk in case.x.split(CHUNK):
            trunk(chunk)
    sync(device)
    return time.perf_counter() - start


def raw_loop(case: Case, inputs: Tensor, *, live: bool, epochs: int, device: torch.device) -> list[float]:
    net = case.make_net().to(device)
    trunk, head = case.trunk(net), case.head(net)
    net.eval()  # frozen trunk: batch norm on running statistics
    head.train()
    optimizer = torch.optim.Adam(head.parameters(), lr=LR)
    n, times = len(inputs), []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).to(device)
        sync(device)
        start = time.perf_counter()
        for s in range(0, n, BATCH):
            idx = order[s : s + BATCH]
            xb, yb = inputs.index_select(0, idx), case.y.index_select(0, idx)
            if live:
                with torch.no_grad():
                    xb = trunk(xb)
            loss = F.cross_entropy(head(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def graph_head_loop(case: Case, feats: Tensor, *, epochs: int, device: torch.device) -> list[float]:
    """The head step captured once as a CUDA graph; full batches replay it, the last partial batch runs eagerly."""
    head = case.head(case.make_net().to(device)).train()
    optimizer = torch.optim.Adam(head.parameters(), lr=LR, capturable=True)
    static_idx = torch.arange(BATCH, device=device)

    def step(idx: Tensor) -> Tensor:
        loss = F.cross_entropy(head(feats.index_select(0, idx)), case.y.index_select(0, idx))
        loss.backward()
        optimizer.step()
        return loss

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            step(static_idx)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step(static_idx)
    n, times = len(feats), []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).to(device)
        sync(device)
        start = time.perf_counter()
        full = n // BATCH * BATCH
        for s in range(0, full, BATCH):
            static_idx.copy_(order[s : s + BATCH])
            graph.replay()
        if full < n:  # the partial batch: eager, on the graph's own gradient tensors
            for p in head.parameters():
                p.grad = None
            step(order[full:])
        sync(device)
        times.append(time.perf_counter() - start)
    return times[1:]


# -------------------------------------------------------------------------------------------------- runs --
def run_case(
    case: Case, *, rounds: int, epochs: int, device: torch.device, root: Path
) -> dict[str, list[float]]:
    feats = features_of(case, device)
    results: dict[str, list[float]] = {}

    def add(name: str, values: list[float]) -> None:
        results.setdefault(name, []).extend(values)

    def lightning_live() -> None:
        model = DNNClassifier(case.make_net(), 10, optimizer="adam", lr=LR)
        loader = DeviceBatchLoader(case.x, case.y, batch_size=BATCH)
        add(
            "Lightning live",
            lightning(model, loader, [LayerFreezer(case.freeze)], epochs, device, root).epochs[1:],
        )

    def lightning_cached() -> None:
        model = DNNClassifier(case.make_net(), 10, optimizer="adam", lr=LR)
        loader = DeviceBatchLoader(case.x, case.y, batch_size=BATCH)
        cache = FeatureCache(storage="device")
        timer = lightning(model, loader, [LayerFreezer(case.freeze), cache], epochs, device, root)
        assert cache.current_boundary is not None
        add("Lightning cached", timer.epochs[1:])
        add("build", timer.first_batch[:1])

    def lightning_features() -> None:
        torch.manual_seed(0)
        model = DNNClassifier(case.head(case.make_net()), 10, optimizer="adam", lr=LR)
        loader = DeviceBatchLoader(feats, case.y, batch_size=BATCH)
        add("Lightning on features", lightning(model, loader, [], epochs, device, root).epochs[1:])

    def lightning_floor() -> None:
        torch.manual_seed(0)
        model = FloorModule(case.head(case.make_net()))
        loader = DeviceBatchLoader(feats, case.y, batch_size=BATCH)
        add("Lightning floor", lightning(model, loader, [], epochs, device, root).epochs[1:])

    def raw_head() -> None:
        add("raw head loop", raw_loop(case, feats, live=False, epochs=epochs, device=device))

    def raw_live() -> None:
        add("raw live loop", raw_loop(case, case.x, live=True, epochs=epochs, device=device))

    def forward() -> None:
        add("raw forward", [raw_forward(case, device)])

    configs = [lightning_live, lightning_cached, lightning_features, lightning_floor, raw_head, raw_live, forward]
    if device.type == "cuda":
        configs.append(
            lambda: add("CUDA-graph head loop", graph_head_loop(case, feats, epochs=epochs, device=device))
        )
    for r in range(rounds):
        for config in configs[r % len(configs) :] + configs[: r % len(configs)]:
            config()
    return results


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, load average {load:.1f}"
    )


def report(name: str, r: dict[str, list[float]], samples: int) -> list[str]:
    med = {k: statistics.median(v) for k, v in r.items()}
    rows = [
        f"| {name} ({samples} samples) | value | ratio |",
        "|---|---|---|",
        f"| Lightning live epoch | {med['Lightning live']:.3f} s | |",
        f"| Lightning cached epoch | {med['Lightning cached']:.3f} s | **{med['Lightning live'] / med['Lightning cached']:.1f}x** faster than live |",
        f"| Lightning on precomputed features | {med['Lightning on features']:.3f} s | cached / this = {med['Lightning cached'] / med['Lightning on features']:.2f} (the cache path's own cost) |",
        f"| raw head loop on the cached tensors | {med['raw head loop']:.3f} s | cached / this = **{med['Lightning cached'] / med['raw head loop']:.2f}** (goal <= 1.2) |",
        f"| smallest LightningModule on precomputed features | {med['Lightning floor']:.3f} s | this / raw head = **{med['Lightning floor'] / med['raw head loop']:.2f}** (Lightning's own per-step cost: no cache with one Lightning step per batch gets below it) |",
        f"| raw live loop (trunk every step) | {med['raw live loop']:.3f} s | raw live / raw head = {med['raw live loop'] / med['raw head loop']:.1f}x |",
        f"| build (first cached epoch, to the first batch) | {med['build']:.3f} s | build / raw forward = **{med['build'] / med['raw forward']:.2f}** (goal <= 1.1) |",
        f"| raw no_grad forward pass of the trunk | {med['raw forward']:.3f} s | |",
    ]
    if "CUDA-graph head loop" in med:
        g = med["CUDA-graph head loop"]
        rows.append(
            f"| CUDA-graph head loop | {g:.3f} s | cached / this = {med['Lightning cached'] / g:.2f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit, the first one discarded")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cases", default="mlp,conv")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.epochs = 2, 2
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = torch.device(args.device)
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_feature_cache"
    lines = [f"FeatureCache benchmark on {machine(device)}", ""]
    for name in args.cases.split(","):
        case = {"mlp": mlp_case, "conv": conv_case}[name](device)
        results = run_case(case, rounds=args.rounds, epochs=args.epochs, device=device, root=root)
        lines += [*report(name, results, len(case.x)), ""]
    lines.append(f"(load average at the end: {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else "")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
