"""Per-step cost of MaxNorm + GradientClipping + LayerFreezer against the same training without them.

The network is the chapter's 784-300-100-10 ``MLP`` (ELU, He init) trained by ``DNNClassifier`` (cross-entropy,
Adam) on 60,000 x 784 samples (random ``[0, 1)`` floats by default, or Fashion-MNIST with ``--data fashion``;
the values do not change the cost of a dense MLP), batch 200, served by ``DeviceBatchLoader``; no validation
loop, no logger, no checkpointing, no progress bar.

Freezing changes the compute (no gradient for ``hidden1``), so each callback set is compared with the baseline
that does the same arithmetic:

==============================  ===============================================================================
pair                            with callbacks / baseline
==============================  ===============================================================================
MaxNorm + GradientClipping      ``MaxNorm(1.0)`` on every Linear layer, ``GradientClipping(norm=1.0)`` (global
                                norm, default non-finite check and logging) / no callbacks
LayerFreezer                    ``LayerFreezer("hidden1")`` / ``hidden1`` frozen by hand
                                (``requires_grad_(False)`` before ``fit``)
all three                       the three callbacks above / ``hidden1`` frozen by hand
==============================  ===============================================================================

So the ratio measures the callbacks' own hooks, not a change of the work done. (``LayerFreezer`` runs without an
``unfreeze`` schedule: a milestone is a one-off event, not a per-step cost.)

Method: every configuration is a fresh model (same seed) fitted for ``1 + --epochs`` epochs; the first epoch is a
warm-up and is discarded, the others are timed by a callback from ``on_train_epoch_start`` to
``on_train_epoch_end`` (synchronising the GPU on CUDA). The five configurations are run interleaved, in a
rotating order, for ``--rounds`` rounds, so drift and the load of a shared machine hit all of them alike. The
table gives the median epoch time of each side, their ratio (goal: <= 1.05, i.e. <= 5% overhead), the overhead
per step in microseconds, and the spread of the per-round paired ratios. A last, untimed fit with every callback
hook wrapped in a timer says which hook costs what.

Usage::

    python bench/callback_overhead.py                 # CPU (cuda when available), 2 threads, 5 rounds x 3 epochs
    python bench/callback_overhead.py --quick         # 3 rounds x 2 epochs of 20,000 samples
    python bench/callback_overhead.py --device cuda   # prints the card's name
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from lightning_dnn.callbacks import GradientClipping, LayerFreezer, MaxNorm
from lightning_dnn.data import DeviceBatchLoader
from lightning_dnn.data.idx import read_idx
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP

FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
GOAL = 1.05


# ------------------------------------------------------------------------------------------- configurations --
@dataclass(frozen=True)
class Config:
    """One way of training: which callbacks, and whether ``hidden1`` is frozen by hand before ``fit``."""

    name: str
    make_callbacks: Callable[[], list[Callback]]
    freeze_by_hand: bool = False


def _no_callbacks() -> list[Callback]:
    return []


def _max_norm_and_clipping() -> list[Callback]:
    return [MaxNorm(1.0), GradientClipping(norm=1.0)]


def _freezer() -> list[Callback]:
    return [LayerFreezer("hidden1")]


def _all_three() -> list[Callback]:
    return [MaxNorm(1.0), GradientClipping(norm=1.0), LayerFreezer("hidden1")]


CONFIGS = {
    c.name: c
    for c in (
        Config("none", _no_callbacks),
        Config("MaxNorm+GradientClipping", _max_norm_and_clipping),
        Config("hidden1 frozen by hand", _no_callbacks, freeze_by_hand=True),
        Config("LayerFreezer", _freezer),
        Config("all three", _all_three),
    )
}
# (with callbacks, baseline doing the same arithmetic)
PAIRS = (
    ("MaxNorm+GradientClipping", "none"),
    ("LayerFreezer", "hidden1 frozen by hand"),
    ("all three", "hidden1 frozen by hand"),
)


# ------------------------------------------------------------------------------------------------ timing ------
class EpochTimer(Callback):
    """Wall (or process CPU) time of each training epoch, from epoch start to epoch end."""

    def __init__(self, clock: Callable[[], float], sync: Callable[[], None]) -> None:
        self.clock, self.sync = clock, sync
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sync()
        self._start = self.clock()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sync()
        self.times.append(self.clock() - self._start)


@dataclass
class HookTimes:
    """Accumulated seconds and calls per ``callback.hook`` label."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def wrap(self, label: str, fn: Callable[..., Any], sync: Callable[[], None]) -> Callable[..., Any]:
        @wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1

        return timed


_BASE_HOOKS = {name for name in vars(Callback) if name.startswith(("on_", "setup", "teardown"))}


def _instrument(callbacks: list[Callback], times: HookTimes, sync: Callable[[], None]) -> Callback:
    """Wrap every hook the callbacks override, and return a callback that wraps optimizer step post-hooks.

    Lightning looks hooks up by name on the instance, so instance attributes take precedence. ``MaxNorm`` does its
    work in an optimizer step post-hook (``Optimizer.register_step_post_hook``) registered in ``on_fit_start``;
    those are wrapped in ``on_train_start`` through the optimizer's hook dict.
    """
    for cb in callbacks:
        for hook in sorted(_BASE_HOOKS):
            if getattr(type(cb), hook) is not getattr(Callback, hook):
                setattr(cb, hook, times.wrap(f"{type(cb).__name__}.{hook}", getattr(cb, hook), sync))

    class _WrapStepHooks(Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            for optimizer in trainer.optimizers:
                hooks = getattr(optimizer, "_optimizer_step_post_hooks", {})
                for key, hook in list(hooks.items()):
                    owner = type(getattr(hook, "__self__", hook)).__name__
                    hooks[key] = times.wrap(f"{owner}.optimizer step post-hook", hook, sync)

    return _WrapStepHooks()


# ------------------------------------------------------------------------------------------------ running -----
def _load_data(kind: str, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "fashion":
        x = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz").reshape(-1, 784)[:samples]
        y = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")[:samples]
        return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))
    generator = torch.Generator().manual_seed(0)
    return torch.rand(samples, 784, generator=generator), torch.randint(
        0, 10, (samples,), generator=generator
    )


def _fit(
    config: Config,
    loader: DeviceBatchLoader,
    device: torch.device,
    epochs: int,
    extra: list[Callback],
    callbacks: list[Callback] | None = None,
) -> None:
    torch.manual_seed(0)
    model = DNNClassifier(MLP(784, (300, 100), 10, activation="elu"), optimizer="adam", lr=1e-3)
    if config.freeze_by_hand:
        model.net.hidden1.requires_grad_(False)
    loader.set_epoch(0)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=[*extra, *(config.make_callbacks() if callbacks is None else callbacks)],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=loader)


def _hook_report(loader: DeviceBatchLoader, device: torch.device, sync: Callable[[], None]) -> None:
    """Fit 'all three' once more (untimed in the table) with every hook wrapped in a wall-clock timer, and print
    each hook's cost per call and per step, and the share of the step spent in the per-step hooks."""
    hook_times = HookTimes()
    callbacks = _all_three()
    wrapper = _instrument(callbacks, hook_times, sync)
    timer = EpochTimer(time.perf_counter, sync)
    epochs = 2
    _fit(CONFIGS["all three"], loader, device, epochs, [timer, wrapper], callbacks=callbacks)
    total_steps = epochs * len(loader)
    print()
    print(f"hooks of 'all three', one more {epochs}-epoch fit ({total_steps} steps), wall clock:")
    print(f"  {'hook':<50} {'calls':>6} {'µs/call':>9} {'µs/step':>9}")
    per_step = 0.0
    for label, seconds in sorted(hook_times.seconds.items(), key=lambda item: -item[1]):
        calls = hook_times.calls[label]
        every_step = calls >= total_steps  # one-off hooks (setup, fit start) are not a per-step cost
        if every_step:
            per_step += seconds / total_steps
        shown = f"{seconds / total_steps * 1e6:>9.1f}" if every_step else f"{'one-off':>9}"
        print(f"  {label:<50} {calls:>6} {seconds / calls * 1e6:>9.1f} {shown}")
    step = sum(timer.times) / total_steps
    print(f"  {'per-step hooks together':<50} {'':>6} {'':>9} {per_step * 1e6:>9.1f}")
    print(
        f"  step of this fit: {step * 1e6:.0f} µs, of which the per-step hooks take {per_step / step:.1%} "
        f"(direct estimate of the overhead: {1 / (1 - per_step / step):.3f}x)"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _quiet() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning_fabric", "lightning_dnn"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*(GPU|TPU|HPU) available.*")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per fit, after one warm-up epoch")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the configurations")
    parser.add_argument("--samples", type=int, default=60_000, help="training samples per epoch")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--data", choices=("random", "fashion"), default="random")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: process CPU time (steadier on a loaded machine; CPU only)",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds x 2 epochs of 20,000 samples")
    parser.add_argument("--no-hooks", action="store_true", help="skip the per-hook timing fit")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.rounds, args.samples = 2, 3, 20_000
    for arg in ("epochs", "rounds", "samples", "batch_size", "threads"):
        if getattr(args, arg) < 1:
            parser.error(f"--{arg.replace('_', '-')} must be >= 1, got {getattr(args, arg)}")

    load_before = os.getloadavg()
    _quiet()
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    if device.type == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu measures host CPU time only; use the wall clock on CUDA")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    x, y = _load_data(args.data, args.samples)
    loader = DeviceBatchLoader(x, y, batch_size=args.batch_size, shuffle=True, seed=0, device=device)
    steps = len(loader)

    card = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(
        f"callback overhead: 784-300-100-10 MLP (ELU), Adam, batch {args.batch_size}, {steps} steps/epoch "
        f"({args.data} data), {args.rounds} rounds x {args.epochs} timed epochs, {device.type}{card}"
    )

    names = list(CONFIGS)
    times: dict[str, list[float]] = {name: [] for name in names}
    per_round: dict[str, list[float]] = {name: [] for name in names}  # median epoch of each round
    started = time.perf_counter()
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            timer = EpochTimer(clock, sync)
            _fit(CONFIGS[name], loader, device, args.epochs + 1, [timer])
            timed = timer.times[1:]
            times[name] += timed
            per_round[name].append(statistics.median(timed))
        print(f"  round {round_ + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)", flush=True)
    load_after = os.getloadavg()

    medians = {name: statistics.median(values) for name, values in times.items()}
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else f"{device.type}{card}"
    machine = f"{_cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, pytorch-lightning "
    machine += f"{pl.__version__}, {threads}, {args.clock} clock"
    print()
    print(f"machine: {machine}")
    loads = ", ".join(f"{v:.2f}" for v in load_before)
    print(f"load average (1/5/15 min) before: {loads}; after: {', '.join(f'{v:.2f}' for v in load_after)}")
    if load_before[0] > 0.5:
        print(
            f"note: the machine was already busy before this run (1-min load {load_before[0]:.2f} on "
            f"{os.cpu_count()} CPUs): it is shared with other work, so expect noise of a few percent."
        )
    print()
    print(
        "| configuration (vs baseline) | baseline ms/epoch | with ms/epoch | ratio of medians | "
        "overhead µs/step | ratio of minimums | paired ratios min-max | goal <= 1.05x |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for with_cb, base in PAIRS:
        ratio = medians[with_cb] / medians[base]
        per_step = (medians[with_cb] - medians[base]) / steps * 1e6
        paired = [w / b for w, b in zip(per_round[with_cb], per_round[base], strict=True)]
        verdict = "met" if ratio <= GOAL else "MISSED"
        print(
            f"| {with_cb} (vs {base}) | {medians[base] * 1e3:.0f} | {medians[with_cb] * 1e3:.0f} | "
            f"{ratio:.3f}x | {per_step:+.0f} | {min(times[with_cb]) / min(times[base]):.3f}x | "
            f"{min(paired):.3f}-{max(paired):.3f} | {verdict} |"
        )
    print()
    print(
        f"{steps} steps/epoch, batch {args.batch_size}, median of {len(times[names[0]])} epochs per configuration "
        f"({args.rounds} interleaved rounds x {args.epochs} epochs, warm-up epoch dropped); {machine}."
    )
    for name in names:
        print(
            f"  {name}: median {medians[name] * 1e3:.0f} ms/epoch = {medians[name] / steps * 1e6:.0f} µs/step"
        )

    if not args.no_hooks:
        _hook_report(loader, device, sync)


if __name__ == "__main__":
    main()
