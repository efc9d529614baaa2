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
table gives the median epoch time of each side and their ratio, with the spread of the per-round paired ratios.
On CPU a second timer takes every step (batch start to batch end: all the callbacks' per-step hooks included,
the data fetch excluded); the median step is barely moved by other processes' load, which lands on a minority
of steps, whereas every such burst lengthens some epoch. So on CPU the overhead per step (in microseconds) and
the verdict against the goal (ratio <= 1.05, i.e. <= 5% overhead) come from the median steps; on CUDA, where a
per-step synchronisation would hide the host syncs being measured, from the median epochs.

Two last fits ("all three", then "MaxNorm+GradientClipping" on the unfrozen network) wrap every callback hook
and every training step in a wall-clock timer and print each hook's cost per call (mean, median, minimum) and the
share of the step spent in the per-step hooks: a direct estimate of the overhead that needs no A/B difference,
hence the steadier figure on a loaded machine.

Usage::

    python -m bench.callback_overhead                 # CPU (cuda when available), 2 threads, 5 rounds x 3 epochs
    python -m bench.callback_overhead --quick         # 3 rounds x 2 epochs of 20,000 samples
    python -m bench.callback_overhead --device cuda   # prints the card's name
"""

from __future__ import annotations

import argparse
import logging
import math
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


class StepTimer(Callback):
    """Time of each training step (hooks included, data fetch excluded), from ``on_train_batch_start`` to ``on_train_batch_end``."""

    def __init__(self, clock: Callable[[], float], sync: Callable[[], None]) -> None:
        self.clock, self.sync = clock, sync
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.sync()
        self._start = self.clock()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.sync()
        self.times.append(self.clock() - self._start)


@dataclass
class HookTimes:
    """Wall time of every call, per ``callback.hook`` label."""

    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def wrap(self, label: str, fn: Callable[..., Any], sync: Callable[[], None]) -> Callable[..., Any]:
        @wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                self.samples[label].append(time.perf_counter() - start)

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


def _hook_report(
    loader: DeviceBatchLoader, device: torch.device, sync: Callable[[], None], name: str = "all three"
) -> None:
    """Fit configuration ``name`` once more with every hook and every training step wrapped in a wall-clock
    timer; print each hook's cost per call (mean, median, min) and the share of the step spent in the per-step
    hooks. "all three" runs on the hidden1-frozen network (the cheaper step), "MaxNorm+GradientClipping" on the
    whole one.

    Medians and minimums are little affected by other processes on a shared machine (a preempted call is an
    outlier), so the median-based share is the steadier overhead estimate there.
    """
    hook_times = HookTimes()
    callbacks = CONFIGS[name].make_callbacks()
    wrapper = _instrument(callbacks, hook_times, sync)
    steps = StepTimer(time.perf_counter, sync)
    epochs = 2
    _fit(CONFIGS[name], loader, device, epochs, [steps, wrapper], callbacks=callbacks)
    n = len(steps.times)
    print()
    print(f"hooks of {name!r}, one more {epochs}-epoch fit ({n} steps), wall clock, µs per call:")
    print(f"  {'hook':<50} {'calls':>6} {'mean':>8} {'median':>8} {'min':>8}")
    mean_sum = median_sum = min_sum = 0.0
    for label, samples in sorted(hook_times.samples.items(), key=lambda item: -sum(item[1])):
        per_step = len(samples) >= n  # one-off and per-epoch hooks (setup, fit start) are not a per-step cost
        mean, median, low = statistics.fmean(samples), statistics.median(samples), min(samples)
        if per_step:
            mean_sum, median_sum, min_sum = mean_sum + mean, median_sum + median, min_sum + low
        note = "" if per_step else "  (not per step)"
        print(
            f"  {label:<50} {len(samples):>6} {mean * 1e6:>8.1f} {median * 1e6:>8.1f} {low * 1e6:>8.1f}{note}"
        )
    print(
        f"  {'per-step hooks together':<50} {n:>6} {mean_sum * 1e6:>8.1f} {median_sum * 1e6:>8.1f} "
        f"{min_sum * 1e6:>8.1f}"
    )
    step_mean, step_median = statistics.fmean(steps.times), statistics.median(steps.times)
    print(
        f"  {'training step (batch start to end, hooks included)':<50} {n:>6} {step_mean * 1e6:>8.1f} "
        f"{step_median * 1e6:>8.1f} {min(steps.times) * 1e6:>8.1f}"
    )
    for what, hooks, step in (("means", mean_sum, step_mean), ("medians", median_sum, step_median)):
        print(
            f"  by {what}: the per-step hooks take {hooks / step:.1%} of the step; "
            f"direct overhead estimate {step / (step - hooks):.3f}x"
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


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    if device.type == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu measures host CPU time only; use the wall clock on CUDA")
    args.device = device
    return args


@dataclass
class _Measured:
    times: dict[str, list[float]]  # epoch times, warm-up epochs dropped
    per_round: dict[str, list[float]]  # median epoch of each round
    step_times: dict[str, list[float]]  # CPU only (see _measure)


def _measure(args: argparse.Namespace, loader: DeviceBatchLoader, sync: Callable[[], None]) -> _Measured:
    device: torch.device = args.device
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    steps = len(loader)
    names = list(CONFIGS)
    out = _Measured({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names})
    started = time.perf_counter()
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            epoch_timer = EpochTimer(clock, sync)
            # On CUDA a per-step synchronisation would hide the host syncs being measured: epochs only there.
            step_timer = StepTimer(clock, sync) if device.type == "cpu" else None
            timers: list[Callback] = [epoch_timer] if step_timer is None else [epoch_timer, step_timer]
            _fit(CONFIGS[name], loader, device, args.epochs + 1, timers)
            timed = epoch_timer.times[1:]
            out.times[name] += timed
            out.per_round[name].append(statistics.median(timed))
            if step_timer is not None:
                out.step_times[name] += step_timer.times[steps:]
        print(f"  round {round_ + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)", flush=True)
    return out


def _print_load(load_before: tuple[float, float, float], load_after: tuple[float, float, float]) -> None:
    loads = ", ".join(f"{v:.2f}" for v in load_before)
    print(f"load average (1/5/15 min) before: {loads}; after: {', '.join(f'{v:.2f}' for v in load_after)}")
    if load_before[0] > 0.5:
        print(
            f"note: the machine was already busy before this run (1-min load {load_before[0]:.2f} on "
            f"{os.cpu_count()} CPUs): it is shared with other work, whose load makes epoch times noisy (see "
            "each configuration's range below); the median step times and the hook timings are the steadier "
            "figures then."
        )


def _print_table(m: _Measured, device: torch.device, steps: int) -> None:
    medians = {name: statistics.median(values) for name, values in m.times.items()}
    step_medians = {name: statistics.median(v) if v else math.nan for name, v in m.step_times.items()}
    print(
        "| configuration (vs baseline) | ms/epoch baseline -> with | epoch ratio (paired min-max) | "
        "median step µs baseline -> with | step ratio | overhead µs/step | goal <= 1.05x |"
    )
    print("|---|---|---|---|---|---|---|")
    for with_cb, base in PAIRS:
        ratio = medians[with_cb] / medians[base]
        paired = [w / b for w, b in zip(m.per_round[with_cb], m.per_round[base], strict=True)]
        step_ratio = step_medians[with_cb] / step_medians[base]
        if device.type == "cpu":
            overhead = (step_medians[with_cb] - step_medians[base]) * 1e6
            judged = step_ratio
        else:
            overhead = (medians[with_cb] - medians[base]) / steps * 1e6
            judged = ratio
        print(
            f"| {with_cb} (vs {base}) | {medians[base] * 1e3:.0f} -> {medians[with_cb] * 1e3:.0f} | "
            f"{ratio:.3f}x ({min(paired):.3f}-{max(paired):.3f}) | "
            f"{step_medians[base] * 1e6:.0f} -> {step_medians[with_cb] * 1e6:.0f} | {step_ratio:.3f}x | "
            f"{overhead:+.0f} | {'met' if judged <= GOAL else 'MISSED'} |"
        )


def _print_summary(m: _Measured, args: argparse.Namespace, steps: int, machine: str) -> None:
    medians = {name: statistics.median(values) for name, values in m.times.items()}
    step_medians = {name: statistics.median(v) if v else math.nan for name, v in m.step_times.items()}
    names = list(CONFIGS)
    judged_by = "median step times" if args.device.type == "cpu" else "median epoch times / steps per epoch"
    print(
        f"{steps} steps/epoch, batch {args.batch_size}; {len(m.times[names[0]])} epochs per configuration "
        f"({args.rounds} interleaved rounds x {args.epochs} epochs, warm-up epoch dropped); overhead and goal "
        f"from the {judged_by}; {machine}."
    )
    for name in names:
        print(
            f"  {name}: median {medians[name] * 1e3:.0f} ms/epoch (range {min(m.times[name]) * 1e3:.0f}-"
            f"{max(m.times[name]) * 1e3:.0f}), median step {step_medians[name] * 1e6:.0f} µs"
        )


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    device: torch.device = args.device
    load_before = os.getloadavg()
    _quiet()
    torch.set_num_threads(args.threads)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    x, y = _load_data(args.data, args.samples)
    loader = DeviceBatchLoader(x, y, batch_size=args.batch_size, shuffle=True, seed=0, device=device)
    steps = len(loader)
    card = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(
        f"callback overhead: 784-300-100-10 MLP (ELU), Adam, batch {args.batch_size}, {steps} steps/epoch "
        f"({args.data} data), {args.rounds} rounds x {args.epochs} timed epochs, {device.type}{card}"
    )
    measured = _measure(args, loader, sync)
    load_after = os.getloadavg()
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else f"{device.type}{card}"
    machine = f"{_cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, pytorch-lightning "
    machine += f"{pl.__version__}, {threads}, {args.clock} clock"
    print()
    print(f"machine: {machine}")
    _print_load(load_before, load_after)
    print()
    _print_table(measured, device, steps)
    print()
    _print_summary(measured, args, steps, machine)
    if not args.no_hooks:
        _hook_report(loader, device, sync, "all three")
        _hook_report(loader, device, sync, "MaxNorm+GradientClipping")


if __name__ == "__main__":
    main()
