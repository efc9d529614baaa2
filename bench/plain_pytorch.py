"""Framework-free baselines: the chapter's runs written by hand in plain PyTorch.

Used by ``bench/results.py`` (accuracy baseline: ours must match this within seed noise) and
``bench/loop_speed.py`` (speed floor: a raw loop over device-resident tensors). Nothing here imports
lightning_dnn, so a bug in the library cannot leak into its own yardstick.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

FASHION_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def read_idx(path: str) -> np.ndarray:
    """Read an IDX (.gz) file: big-endian magic (0, 0, dtype, ndim), dims, then uint8 data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    _zero, _dtype, ndim = struct.unpack(">HBB", raw[:4])
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion(device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """Full Fashion-MNIST as float32 [N, 784] in [0, 1] and int64 labels, moved to ``device`` once."""

    def part(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = read_idx(os.path.join(FASHION_DIR, f"{kind}-images-idx3-ubyte.gz")).reshape(-1, 784)
        y = read_idx(os.path.join(FASHION_DIR, f"{kind}-labels-idx1-ubyte.gz"))
        return (
            torch.from_numpy(x.astype(np.float32) / 255.0).to(device),
            torch.from_numpy(y.astype(np.int64)).to(device),
        )

    return (*part("train"), *part("t10k"))


@dataclass(frozen=True)
class RunConfig:
    """One of the chapter's runs (see examples/configs/)."""

    hidden: tuple[int, ...] = (300, 100)
    batch_norm: bool = True
    output_norm: bool = False
    bn_momentum: float = 0.01  # TF decay 0.99
    activation: str = "elu"
    dropout: float = 0.0
    optimizer: str = "sgd"
    lr: float = 0.01
    batch_size: int = 200
    epochs: int = 20


# The two runs of issue 3's results table.

CONFIG1 = RunConfig(output_norm=True)  # TF1 notebook: BN before ELU (also on the logits), He init, plain GD lr 0.01
CONFIG2 = RunConfig(dropout=0.2, optimizer="adam", lr=1e-3)  # chapter's default table: He, ELU, BN, dropout, Adam


def he_normal_(w: torch.Tensor) -> None:
    """He init, Keras' he_normal: truncated normal (2 std), std sqrt(2 / fan_in) / 0.8796..."""
    std = math.sqrt(2.0 / w.shape[1]) / 0.87962566103423978
    nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)


def build_net(cfg: RunConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 784
    for h in cfg.hidden:
        lin = nn.Linear(width, h, bias=not cfg.batch_norm)
        he_normal_(lin.weight)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(h, momentum=cfg.bn_momentum))
        layers.append(nn.ELU() if cfg.activation == "elu" else nn.LeakyReLU(0.01))
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = h
    out = nn.Linear(width, 10)
    he_normal_(out.weight)
    nn.init.zeros_(out.bias)
    layers.append(out)
    if cfg.output_norm:
        layers.append(nn.BatchNorm1d(10, momentum=cfg.bn_momentum))
    return nn.Sequential(*layers)


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    return torch.optim.Adam(params, lr=cfg.lr)


def train_epoch(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                gen: torch.Generator | None, order: torch.Tensor | None = None) -> None:
    """One epoch of the raw loop: shuffled batches by indexing device-resident tensors (in ``order`` when given,
    else a permutation drawn from ``gen``)."""
    net.train()
    perm = (torch.randperm(x.shape[0], generator=gen) if order is None else order).to(x.device)
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        loss = nn.functional.cross_entropy(net(x.index_select(0, idx)), y.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    correct = sum(int((net(x[i : i + 5000]).argmax(1) == y[i : i + 5000]).sum()) for i in range(0, len(x), 5000))
    return correct / len(x)


def run(cfg: RunConfig, seed: int, data: tuple[torch.Tensor, ...] | None = None) -> dict[str, float]:
    """Train ``cfg`` from scratch with ``seed``; return test accuracy and seconds."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = data if data is not None else load_fashion()
    net = build_net(cfg).to(xtr.device)
    opt = make_optimizer(cfg, net.parameters())
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        train_epoch(net, opt, xtr, ytr, cfg.batch_size, gen)
    return {"test_acc": accuracy(net, xte, yte), "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", choices=["1", "2"], default="1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    a = p.parse_args()
    c = CONFIG1 if a.config == "1" else CONFIG2
    if a.epochs is not None:
        from dataclasses import replace

        c = replace(c, epochs=a.epochs)
    print(run(c, a.seed))
