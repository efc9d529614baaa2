"""Our LayerFreezer next to the peers users mix it with: finetuning-scheduler and Lightning's BackboneFinetuning.

Every row is measured on the same small network (two Linear+BatchNorm+ReLU blocks as ``backbone``, a Linear
``head``), the same data and seed, frozen backbone for epochs 0-1 and unfrozen from epoch 2:

- ``frozen_bn_drift``: max |change| of a frozen BatchNorm layer's running mean over two frozen epochs (0 means the
  frozen layer is really frozen);
- ``scheduler:<name>``: does a 4-epoch run with that LR scheduler attached finish ("ok"), and what the tool says
  when it refuses;
- ``user_group_lr``: the user's ``configure_optimizers`` builds two groups from the trainable parameters (as
  timm's ``param_groups_layer_decay`` does): backbone lr 0.01, head lr 0.1; the lr the backbone's parameters
  train with after they are unfrozen (0.01 keeps the user's decay);
- ``resume_max_diff``: max |weight difference| between an uninterrupted 4-epoch run and a run stopped after epoch
  2 (a checkpoint) and resumed to epoch 4;
- ``ddp_rank_diff`` (``--ddp``): max |weight difference| between the two ranks of a 2-process CPU DDP run after
  the unfreeze (0 means the replicas stay identical);
- ``step_overhead``: time of a run with the tool / the same run without it (paired, median of ``--repeats``).

Run: ``python -m bench.peer_comparison [--ddp] [--repeats 5] [--json bench/peer_comparison.json]``.
The peers need the ``lightning`` package (finetuning-scheduler imports ``lightning.pytorch``); all tools run in a
``lightning.pytorch`` Trainer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SCHEDULERS = ("StepLR", "CosineAnnealingLR", "OneCycleLR", "SequentialLR", "ReduceLROnPlateau")
TOOLS = ("lightning-dnn LayerFreezer", "finetuning-scheduler", "BackboneFinetuning")
UNFREEZE_EPOCH = 2
STEPS_PER_EPOCH = 8


def make_data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


class Net(L.LightningModule):
    """backbone (2 x Linear+BN+ReLU) + head; optimizer and scheduler chosen by name."""

    def __init__(self, scheduler: str = "none", user_groups: bool = False, trainable_only: bool = True) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU()
        )
        self.head = nn.Linear(32, 2)
        self.scheduler_name = scheduler
        self.user_groups = user_groups
        self.trainable_only = trainable_only
        self.seen_lrs: dict[int, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # the lr the first backbone weight trains with, read from the optimizer that holds it
        weight = self.backbone[0].weight
        for group in self.trainer.optimizers[0].param_groups:
            if any(p is weight for p in group["params"]):
                self.seen_lrs[self.current_epoch] = float(group["lr"])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        def keep(params: Any) -> list[nn.Parameter]:
            return [p for p in params if p.requires_grad or not self.trainable_only]

        if self.user_groups:
            groups = [
                {"params": keep(self.backbone.parameters()), "lr": 0.01},
                {"params": keep(self.head.parameters()), "lr": 0.1},
            ]
            groups = [g for g in groups if g["params"]]
            opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        else:
            opt = torch.optim.SGD(keep(self.parameters()), lr=0.1, momentum=0.9)
        total = 4 * STEPS_PER_EPOCH
        sched = self._scheduler(opt, total)
        if sched is None:
            return opt
        if self.scheduler_name == "ReduceLROnPlateau":
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        interval = "step" if self.scheduler_name in ("OneCycleLR", "SequentialLR") else "epoch"
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

    def _scheduler(self, opt: torch.optim.Optimizer, total: int) -> Any:
        lrs = torch.optim.lr_scheduler
        name = self.scheduler_name
        if name == "none":
            return None
        if name == "StepLR":
            return lrs.StepLR(opt, step_size=1, gamma=0.9)
        if name == "CosineAnnealingLR":
            return lrs.CosineAnnealingLR(opt, T_max=4)
        if name == "OneCycleLR":
            return lrs.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total)
        if name == "SequentialLR":
            warm = lrs.LinearLR(opt, start_factor=0.1, total_iters=4)
            cos = lrs.CosineAnnealingLR(opt, T_max=total - 4)
            return lrs.SequentialLR(opt, [warm, cos], milestones=[4])
        if name == "ReduceLROnPlateau":
            return lrs.ReduceLROnPlateau(opt, patience=0)
        raise ValueError(name)


class BackboneNet(Net):
    """BackboneFinetuning adds the backbone's params itself: the optimizer must start with the head only."""


def make_tool(tool: str, tmp: str) -> tuple[list[L.Callback], dict[str, Any]]:
    """The callbacks for one tool and the Net keyword arguments it needs."""
    if tool == "lightning-dnn LayerFreezer":
        from lightning_dnn.callbacks import LayerFreezer

        return [LayerFreezer(freeze="backbone", unfreeze={UNFREEZE_EPOCH: "backbone"})], {}
    if tool == "finetuning-scheduler":
        from finetuning_scheduler import FinetuningScheduler

        schedule = {
            0: {"params": ["head.weight", "head.bias"], "max_transition_epoch": UNFREEZE_EPOCH},
            1: {"params": ["backbone.*"], "max_transition_epoch": 4},
        }
        return [FinetuningScheduler(ft_schedule=schedule, epoch_transitions_only=True, log_dir=tmp)], {}
    if tool == "BackboneFinetuning":
        from lightning.pytorch.callbacks import BackboneFinetuning

        return [BackboneFinetuning(unfreeze_backbone_at_epoch=UNFREEZE_EPOCH, verbose=False)], {}
    raise ValueError(tool)


def fit(tool: str | None, *, epochs: int = 4, ckpt_path: str | None = None, save_to: str | None = None,
        seed: int = 0, **net_kwargs: Any) -> tuple[Net, L.Trainer]:
    torch.manual_seed(seed)
    x, y = make_data()
    tmp = tempfile.mkdtemp(prefix="peer-")
    callbacks, extra = make_tool(tool, tmp) if tool else ([], {})
    net = Net(**{**net_kwargs, **extra})
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=tool == "finetuning-scheduler", default_root_dir=tmp, callbacks=callbacks,
        deterministic=True, num_sanity_val_steps=0,
    )
    # a fixed batch order: a resumed run then sees the batches of the uninterrupted one (a shuffling DataLoader's
    # generator is not part of a Lightning checkpoint)
    train = DataLoader(TensorDataset(x, y), batch_size=len(x) // STEPS_PER_EPOCH)
    val = DataLoader(TensorDataset(x, y), batch_size=128)
    trainer.fit(net, train, val, ckpt_path=ckpt_path)
    if save_to:
        trainer.save_checkpoint(save_to)
    return net, trainer


def guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        return f"refused: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def frozen_bn_drift(tool: str) -> Any:
    def run() -> float:
        torch.manual_seed(0)
        before = {}

        class Probe(L.Callback):
            def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                if trainer.current_epoch == 0:
                    before["mean"] = pl_module.backbone[1].running_mean.clone()

        x, y = make_data()
        tmp = tempfile.mkdtemp(prefix="peer-")
        callbacks, _ = make_tool(tool, tmp)
        net = Net()
        trainer = L.Trainer(max_epochs=UNFREEZE_EPOCH, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=tool == "finetuning-scheduler",
                            default_root_dir=tmp, callbacks=[*callbacks, Probe()], num_sanity_val_steps=0)
        trainer.fit(net, DataLoader(TensorDataset(x, y), batch_size=32), DataLoader(TensorDataset(x, y), 128))
        return float((net.backbone[1].running_mean - before["mean"]).abs().max())

    return guarded(run)


def scheduler_support(tool: str, name: str) -> Any:
    return guarded(lambda: (fit(tool, scheduler=name), "ok")[1])


def user_group_lr(tool: str) -> Any:
    def run() -> Any:
        net, _ = fit(tool, user_groups=True)
        return net.seen_lrs.get(3)

    return guarded(run)


def resume_diff(tool: str) -> Any:
    def run() -> float:
        full, _ = fit(tool)
        ckpt = os.path.join(tempfile.mkdtemp(prefix="peer-"), "mid.ckpt")
        fit(tool, epochs=3, save_to=ckpt)
        resumed, _ = fit(tool, ckpt_path=ckpt)
        return max(float((a - b).abs().max()) for a, b in zip(full.state_dict().values(),
                                                               resumed.state_dict().values(), strict=True)
                   if a.is_floating_point())

    return guarded(run)


def step_overhead(tool: str, repeats: int) -> Any:
    def run() -> float:
        ratios = []
        for _ in range(repeats):
            start = time.perf_counter()
            fit(None, epochs=4)
            base = time.perf_counter() - start
            start = time.perf_counter()
            fit(tool, epochs=4)
            ratios.append((time.perf_counter() - start) / base)
        return statistics.median(ratios)

    return guarded(run)


DDP_SCRIPT = r"""
import os, sys, torch, lightning.pytorch as L
sys.path.insert(0, os.getcwd())
from bench.peer_comparison import Net, make_tool, make_data, STEPS_PER_EPOCH
from torch.utils.data import DataLoader, TensorDataset
tool, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
x, y = make_data()
callbacks, _ = make_tool(tool, os.path.dirname(out))
net = Net()
trainer = L.Trainer(max_epochs=4, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=tool == "finetuning-scheduler", default_root_dir=os.path.dirname(out),
                    callbacks=callbacks, num_sanity_val_steps=0)
trainer.fit(net, DataLoader(TensorDataset(x, y), batch_size=len(x) // STEPS_PER_EPOCH),
            DataLoader(TensorDataset(x, y), batch_size=128))
torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, f"{out}.rank{trainer.global_rank}")
"""


def ddp_rank_diff(tool: str) -> Any:
    def run() -> float:
        tmp = tempfile.mkdtemp(prefix="peer-ddp-")
        script = Path(tmp) / "ddp_run.py"
        script.write_text(DDP_SCRIPT)
        out = os.path.join(tmp, "weights")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
        proc = subprocess.run([sys.executable, str(script), tool, out], cwd=os.getcwd(), env=env,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1])
        a, b = (torch.load(f"{out}.rank{r}") for r in (0, 1))
        return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())

    return guarded(run)


def fastai_frozen_bn_drift() -> Any:
    """fastai's ``Learner.freeze()`` (``train_bn=True`` by default) on the same network, two epochs."""

    def run() -> float:
        from fastai.basics import DataLoaders, Learner, params  # type: ignore[import-not-found]

        torch.manual_seed(0)
        x, y = make_data()
        net = Net()
        model = nn.Sequential(net.backbone, net.head)
        ds = TensorDataset(x, y)
        dls = DataLoaders(DataLoader(ds, batch_size=32, shuffle=True), DataLoader(ds, batch_size=128))
        learn = Learner(dls, model, loss_func=nn.functional.cross_entropy,
                        splitter=lambda m: [params(m[0]), params(m[1])])
        learn.freeze()
        before = net.backbone[1].running_mean.clone()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            learn.fit(UNFREEZE_EPOCH, lr=0.1)
        return float((net.backbone[1].running_mean - before).abs().max())

    return guarded(run)


def keras_frozen_bn_drift() -> Any:
    """Keras 3 (torch backend): ``trainable = False`` on the Dense+BatchNormalization backbone, two epochs."""

    def run() -> float:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras  # type: ignore[import-not-found]
        import numpy as np

        keras.utils.set_random_seed(0)
        x, y = make_data()
        backbone = keras.Sequential([
            keras.layers.Dense(32), keras.layers.BatchNormalization(), keras.layers.ReLU(),
            keras.layers.Dense(32), keras.layers.BatchNormalization(name="bn2"), keras.layers.ReLU(),
        ])
        model = keras.Sequential([keras.Input((20,)), backbone, keras.layers.Dense(2)])
        backbone.trainable = False
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        bn = backbone.layers[1]
        before = np.array(bn.moving_mean)
        model.fit(x.numpy(), y.numpy(), batch_size=32, epochs=UNFREEZE_EPOCH, verbose=0)
        return float(np.abs(np.array(bn.moving_mean) - before).max())

    return guarded(run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddp", action="store_true", help="also run the 2-process CPU DDP check")
    parser.add_argument("--repeats", type=int, default=3, help="paired timings per tool")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS, help="which tools to measure")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, dict[str, Any]] = {}
    for tool in args.tools:
        row: dict[str, Any] = {"frozen_bn_drift": frozen_bn_drift(tool)}
        for name in SCHEDULERS:
            row[f"scheduler:{name}"] = scheduler_support(tool, name)
        row["user_group_lr"] = user_group_lr(tool)
        row["resume_max_diff"] = resume_diff(tool)
        if args.ddp:
            row["ddp_rank_diff"] = ddp_rank_diff(tool)
        row["step_overhead"] = step_overhead(tool, args.repeats)
        results[tool] = row
        print(f"## {tool}")
        for key, value in row.items():
            print(f"  {key}: {value}")
    others = {"fastai (Learner.freeze)": fastai_frozen_bn_drift(), "Keras 3 (trainable=False)": keras_frozen_bn_drift()}
    print("## frozen BN drift in other libraries")
    for key, value in others.items():
        print(f"  {key}: {value}")
    results["frozen_bn_drift_other_libraries"] = others
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
