"""One training run of the SIGKILL matrix, killed and resumed by ``test_sigkill.py``; and the resumable pieces the
reliability tests share (a small BN MLP, a LayerFreezer with an unfreeze milestone, a resumable loader).

``python _sigkill_worker.py OUT_DIR DEVICES [--kill STEP:POINT] [--pad-mb MB]`` trains ``EPOCHS`` epochs of
``STEPS_PER_EPOCH`` steps (resuming from ``OUT_DIR/ckpt/last.ckpt`` when it exists), writes ``last.ckpt`` after
every training step, prints ``step N`` after each step (rank 0; a parent kills it at random delays after one) and
at the end saves ``OUT_DIR/final-rank{R}.pt``. ``--kill STEP:POINT`` makes rank 0 SIGKILL its whole process group
(all ranks, like a preempted node) at global step ``STEP``:

* ``step``: after the optimizer step, before that step's checkpoint is written;
* ``mid_write``: half-way through writing that step's ``last.ckpt`` (into the temporary file Lightning's atomic
  save writes first);
* ``before_rename``: with that temporary file complete, before it replaces ``last.ckpt``;
* ``mid_copy``: half-way through copying that temporary file over ``last.ckpt``, which ``shutil.move`` does
  instead of a rename when ``TMPDIR`` is on another filesystem than the checkpoint.

With ``DEVICES`` > 1 it runs ``strategy="ddp"`` on CPU (gloo); Lightning re-launches this script for the other
ranks, which read the same arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_dnn.callbacks import LayerFreezer

EPOCHS = 4
STEPS_PER_EPOCH = 4
GLOBAL_BATCH = 8
MILESTONE = 2  # hidden2 is unfrozen at the start of this epoch
KILL_POINTS = ("step", "mid_write", "before_rename")  # the points the random matrix draws from


class ResumableLoader(DataLoader):
    """A DataLoader with Lightning's ``state_dict``/``load_state_dict`` interface: a mid-epoch resume skips the
    batches the interrupted epoch already trained on (a plain DataLoader starts the epoch again from its first batch,
    which Lightning warns about), and a state saved after the last batch starts the next epoch from the beginning."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._skip = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skip, self._skip = self._skip, 0
        self._served = skip
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                self._served = i + 1
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        served = int(state.get("served", 0))
        self._skip = served if served < len(self) else 0


def make_loader(world_size: int = 1, rank: int = 0) -> ResumableLoader:
    """``GLOBAL_BATCH * STEPS_PER_EPOCH`` fixed samples, unshuffled; rank r of R gets samples r, r+R, ... (so each
    global batch holds the same samples whatever the number of processes)."""
    gen = torch.Generator().manual_seed(0)
    n = GLOBAL_BATCH * STEPS_PER_EPOCH
    dataset = TensorDataset(torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen))
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=False
    )
    return ResumableLoader(dataset, batch_size=GLOBAL_BATCH // world_size, sampler=sampler)


class Classifier(pl.LightningModule):
    """A BN MLP trained with Adam and a per-step schedule; the optimizer holds only trainable parameters.

    ``pad_mb`` adds a constant buffer of that many MiB, to make checkpoint writes long enough for random kills to
    land inside them.
    """

    def __init__(self, pad_mb: float = 0.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(
            OrderedDict(
                hidden1=nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()),
                hidden2=nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()),
                output=nn.Linear(8, 3),
            )
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.register_buffer("pad", torch.zeros(int(pad_mb * 2**18)))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.95**t)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def make_freezer() -> LayerFreezer:
    return LayerFreezer("hidden[12]", unfreeze={MILESTONE: "hidden2"}, unfrozen_lr=0.005)


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k != "pad"}


# ----------------------------------------------------------------------------------------------------- kills --
def die() -> None:
    """SIGKILL this process, and its process group when it leads one (all DDP ranks, like a preempted node)."""
    sys.stdout.flush()
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def arm_checkpoint_kill(point: str) -> None:
    """Die inside the next checkpoint write: half-way through the temporary file, before its rename, or half-way
    through the copy that replaces the rename across filesystems."""
    import shutil

    from fsspec.implementations.local import LocalFileOpener

    if point == "mid_copy":

        def copy2(src: str, dst: str, **kwargs: Any) -> str:  # shutil.move's copy: truncate dst, then write
            with open(src, "rb") as fsrc, open(dst, "wb") as fdst:
                data = fsrc.read()
                fdst.write(data[: len(data) // 2])
                fdst.flush()
                os.fsync(fdst.fileno())
            die()
            return dst

        move = shutil.move  # its default copy function is bound at definition: pass ours
        shutil.move = lambda src, dst, copy_function=copy2: move(src, dst, copy_function)  # type: ignore[misc]
    elif point == "mid_write":

        def write(self: Any, data: bytes, *args: Any, **kwargs: Any) -> int:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            die()
            return 0

        LocalFileOpener.write = write  # type: ignore[method-assign]
    else:

        def commit(self: Any) -> None:
            self.f.close()
            die()

        LocalFileOpener.commit = commit  # type: ignore[method-assign]


class Progress(Callback):
    """Prints ``step N`` after each training step (rank 0) and kills the run at ``kill = (step, point)``.

    Lightning runs checkpoint callbacks after the others, so this runs before the step's ``last.ckpt`` is written.
    """

    def __init__(self, kill: tuple[int, str] | None) -> None:
        self.kill = kill

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_rank != 0:
            return
        print(f"step {trainer.global_step}", flush=True)
        if self.kill is None or trainer.global_step != self.kill[0]:
            return
        if self.kill[1] == "step":
            die()
        arm_checkpoint_kill(self.kill[1])


class FixRestartCounters(Callback):
    """Work around a Lightning 2.6 defect: after a resume from a checkpoint written at the last batch of an epoch,
    the next epoch starts without ``on_train_epoch_start`` and without counting itself as ready and started, so
    every mid-epoch checkpoint written later in that process looks like an end-of-epoch one and a second resume from
    it starts the epoch again (with a plain DataLoader: its first batches twice; with a resumable one: its state
    ignored). Counting the epoch here keeps those checkpoints right."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = trainer.fit_loop
        epoch_loop = loop.epoch_loop
        if (
            loop.restarted_mid_epoch
            and epoch_loop.restarted_on_train_batch_end
            and epoch_loop.batch_progress.is_last_batch
        ):
            loop.epoch_progress.increment_ready()
            loop.epoch_progress.increment_started()


# ------------------------------------------------------------------------------------------------------ run --
def run(
    out_dir: str | Path,
    devices: int = 1,
    kill: tuple[int, str] | None = None,
    pad_mb: float = 0.0,
    callbacks: Sequence[Callback] = (),
    fix_restart_counters: bool = False,
) -> Classifier:
    """Train (resuming from ``out_dir/ckpt/last.ckpt`` when it exists); return the model, save ``final-rank{R}``."""
    out = Path(out_dir)
    last = out / "ckpt" / "last.ckpt"
    every_step = ModelCheckpoint(dirpath=out / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=DDPStrategy(find_unused_parameters=False) if devices > 1 else "auto",
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=out,
        callbacks=[
            make_freezer(),
            Progress(kill),
            *([FixRestartCounters()] if fix_restart_counters else []),
            *callbacks,
            every_step,
        ],
    )
    model = Classifier(pad_mb)
    data = make_loader(devices, int(os.environ.get("LOCAL_RANK", "0")))
    trainer.fit(model, data, ckpt_path=last if last.exists() else None)
    result = {
        "state": snapshot(model),
        "groups": [(g.get("name"), g["lr"]) for g in trainer.optimizers[0].param_groups],
        "global_step": trainer.global_step,
    }
    torch.save(result, out / f"final-rank{trainer.global_rank}.pt")
    return model


def parse_kill(text: str | None) -> tuple[int, str] | None:
    if not text:
        return None
    step, point = text.split(":")
    if point not in (*KILL_POINTS, "mid_copy"):
        raise ValueError(f"--kill point must be one of {KILL_POINTS} or 'mid_copy', got {point!r}")
    return int(step), point


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("devices", type=int)
    parser.add_argument("--kill", default=None)
    parser.add_argument("--pad-mb", type=float, default=0.0)
    parser.add_argument("--fix-restart-counters", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(
        args.out_dir,
        args.devices,
        parse_kill(args.kill),
        args.pad_mb,
        fix_restart_counters=args.fix_restart_counters,
    )
