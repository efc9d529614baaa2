"""FeatureCache on every torchvision classification network under 100M parameters (issue 11).

``python -m bench.torchvision_sweep [--models resnet18 ...] [--out bench/torchvision_sweep.md]``: each network
(random weights, 10 classes, head = its classifier, frozen with ``LayerFreezer.freeze_all_but_head``) at the
smallest input size it accepts, inside a user-style LightningModule. Reported per network: the boundary
FeatureCache found and whether it covers every frozen layer (at or above the last feature block), whether cached
training equals live training (loss per step within 1e-5 relative over the first 3 steps, shuffle off), and the
time of the second epoch cached (the first one builds the cache) vs live over ``--images`` images, batch 4, one
thread. Writes a markdown table.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import traceback
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytorch_lightning as pl
import torch
import torchvision
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn.callbacks import LayerFreezer
from lightning_dnn.callbacks.feature_cache import FeatureCache

HEADS = ("fc", "classifier", "heads", "head")
SIZES = (16, 32, 48, 64, 96, 128, 160, 224, 299)
CLASSES, BATCH, STEPS = 10, 4, 3
EXTRA: dict[str, dict[str, Any]] = {"googlenet": {"aux_logits": False}, "inception_v3": {"aux_logits": False}}
log = logging.getLogger(__name__)


class UserModule(pl.LightningModule):
    """``self.net = <network>``, cross entropy on ``self.net(x)``, SGD on the trainable parameters."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.05)


class EvalStochasticDepth(Callback):
    """Stochastic depth is random in training mode; a frozen trunk's is put in eval mode (FeatureCache's advice)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for m in pl_module.modules():
            if isinstance(m, torchvision.ops.StochasticDepth):
                m.eval()


class EpochTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._start)


def build(name: str, size: int) -> nn.Module:
    kwargs: dict[str, Any] = {"weights": None, "num_classes": CLASSES, **EXTRA.get(name, {})}
    if name.startswith("vit_"):
        kwargs["image_size"] = size
    return torchvision.models.get_model(name, **kwargs)


def head_of(net: nn.Module) -> str | None:
    names = [n for n, _ in net.named_children()]
    return next((n for n in reversed(names) if n in HEADS), None)


def smallest_size(name: str) -> int | None:
    for size in SIZES:
        if name.startswith("vit_") and size % int(name.split("_")[-1]):
            continue
        try:
            torch.manual_seed(0)
            net = build(name, size).train()
            with torch.no_grad():
                net(torch.rand(BATCH, 3, size, size))
            return size
        except Exception:  # too small for this network: try the next size
            continue
    return None


def fit(
    name: str, size: int, head: str, data: TensorDataset, cache: FeatureCache | None, epochs: int, root: str
) -> tuple[UserModule, EpochTimer]:
    torch.manual_seed(0)
    model = UserModule(build(name, size))
    timer = EpochTimer()
    callbacks: list[Callback] = [LayerFreezer.freeze_all_but_head(head), EvalStochasticDepth(), timer]
    if cache is not None:
        callbacks.append(cache)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=callbacks,
    )
    trainer.fit(model, DataLoader(data, batch_size=BATCH))
    return model, timer


def images(size: int, n: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.rand(n, 3, size, size, generator=gen), torch.randint(0, CLASSES, (n,), generator=gen)
    )


def covers_frozen(net: nn.Module, trunk: list[str]) -> bool:
    """Whether every frozen parameter of the network lies in a trunk module (names are ``net.<module>``)."""
    inside = (
        {id(p) for t in trunk for p in net.get_submodule(t.removeprefix("net.")).parameters()}
        if trunk
        else set()
    )
    return all(id(p) in inside for p in net.parameters() if not p.requires_grad)


def sweep_one(name: str, n_images: int, root: str) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name}
    row["params"] = count_params(name)
    head = head_of(skeleton(name))
    if head is None:
        return {**row, "result": f"no classifier child among {HEADS}"}
    row["head"] = head
    size = smallest_size(name)
    if size is None:
        return {**row, "result": f"no input size in {SIZES} runs"}
    row["size"] = size
    data = images(size, n_images)
    live, t_live = fit(name, size, head, data, None, 2, root)
    cache = FeatureCache(storage="device")
    try:
        cached, t_cached = fit(name, size, head, data, cache, 2, root)
    except Exception as err:  # an architecture FeatureCache refuses: the reason goes in the table
        return {**row, "result": "refused: " + str(err).split("\n")[0][:300]}
    state = cache.state_dict()
    row["boundary"] = state["boundary"]
    row["covers"] = covers_frozen(cached.net, state["trunk"]) if state["boundary"] else False
    a, b = torch.tensor(live.losses[:STEPS]), torch.tensor(cached.losses[:STEPS])
    row["rel"] = float(((a - b).abs() / a.abs()).max()) if len(a) == len(b) == STEPS else float("inf")
    row["equal"] = row["rel"] <= 1e-5
    row["live_s"], row["cached_s"], row["build_s"] = t_live.times[1], t_cached.times[1], t_cached.times[0]
    row["result"] = "ok" if row["covers"] and row["equal"] else "partial"
    return row


def table(rows: list[dict[str, Any]], n_images: int) -> str:
    lines = [
        f"| model | params | head | input | boundary | covers frozen | max rel. diff (3 steps) | live epoch s ({n_images} img) | cached epoch s | speed-up | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "boundary" not in r or "live_s" not in r:
            lines.append(
                f"| {r['model']} | {r.get('params', 0) / 1e6:.1f}M | {r.get('head', '-')} | {r.get('size', '-')} | - | - | - | - | - | - | {r['result']} |"
            )
            continue
        speed = r["live_s"] / r["cached_s"] if r["cached_s"] else float("inf")
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['head']} | {r['size']} | {r['boundary']} | "
            f"{'yes' if r['covers'] else 'no'} | {r['rel']:.1e} | {r['live_s']:.2f} | {r['cached_s']:.3f} | "
            f"{speed:.1f}x | {r['result']} |"
        )
    return "\n".join(lines) + "\n"


def skeleton(name: str) -> nn.Module:
    """The network at 224 px, built on the meta device when its constructor allows it (no memory, no init)."""
    try:
        with torch.device("meta"):
            return build(name, 224)
    except (NotImplementedError, RuntimeError):  # an initializer that needs real tensors
        return build(name, 224)


def count_params(name: str) -> int:
    return sum(p.numel() for p in skeleton(name).parameters())


def candidates(limit: float) -> list[str]:
    return [n for n in torchvision.models.list_models(module=torchvision.models) if count_params(n) < limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/torchvision_sweep.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_dnn").setLevel(logging.ERROR)
    names = args.models or candidates(100e6)
    print(f"{len(names)} networks; load average {os.getloadavg()}", flush=True)
    rows = []
    with TemporaryDirectory() as root:
        for name in names:
            start = time.perf_counter()
            try:
                row = sweep_one(name, args.images, root)
            except Exception as err:
                traceback.print_exc()
                row = {
                    "model": name,
                    "result": f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}",
                }
            rows.append(row)
            print(f"{name}: {row['result']} ({time.perf_counter() - start:.0f} s)", flush=True)
            args.out.write_text(table(rows, args.images))
    print(table(rows, args.images))


if __name__ == "__main__":
    main()
