"""The chapter's rules of thumb, measured: seven comparisons, each written as a PNG plot and a markdown table.

    python examples/compare.py all                          # the seven, seeds 0 1 2, into docs/comparisons/
    python examples/compare.py optimizers --seeds 0 --epochs 3 --out /tmp/cmp
    python examples/compare.py all --tiny --out /tmp/cmp    # seconds: digits, 1 epoch, 1 seed (the tests)

Comparisons: activations, init, batchnorm, clipping, optimizers, schedules, regularization (see
docs/COMPARISONS.md for the results). Every run is a ``DNNClassifier`` around the library's ``MLP``, trained
by a Lightning ``Trainer`` on a data module, with the library's callbacks, optimizers and schedules; only the
step-0 variances of the init comparison come from a plain forward/backward pass (forward hooks on the MLP).

Default data: a fixed subset of Fashion-MNIST read from its IDX files: 1,000 training images per class
(10,000), a 5,000-image validation set held out of the 60,000 training images, the full 10,000-image test set;
the subset depends on the seed, as do the weights and the batch order. ``--tiny`` uses scikit-learn's embedded
8x8 digits (1,150 train / 288 val / 359 test images), small networks, 1 epoch and 1 seed, so that it runs
offline in seconds; ``--data digits`` uses the digits with the full settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dnn import MLP, DNNClassifier, EarlyStopping, GradientClipping, MaxNorm
from lightning_dnn.data import ClassificationDataModule, DigitsDataModule, FashionMNISTDataModule
from lightning_dnn.profiler import NoOpProfiler

COMPARISONS: dict[str, Callable[[Setup], None]] = {}


def comparison(name: str) -> Callable[[Callable[[Setup], None]], Callable[[Setup], None]]:
    def register(fn: Callable[[Setup], None]) -> Callable[[Setup], None]:
        COMPARISONS[name] = fn
        return fn

    return register


# ------------------------------------------------------------------------------------------------ set-up
@dataclass
class Setup:
    """What every comparison shares: data, seeds, epochs, network sizes, output folder."""

    out: Path
    seeds: list[int]
    epochs: int | None
    tiny: bool
    data: str
    per_class: int = 1000
    val: int = 5000
    batch_size: int = 64
    command: str = ""
    started: float = 0.0
    _modules: dict[tuple[Any, ...], ClassificationDataModule] = field(default_factory=dict)

    @property
    def digits(self) -> bool:
        return self.data == "digits"

    def n_epochs(self, default: int) -> int:
        return self.epochs if self.epochs is not None else (1 if self.tiny else default)

    def deep(self, depth: int) -> tuple[int, ...]:
        """The deep plain nets: ``depth`` layers of 100 units (4 of 32 in tiny mode)."""
        return (32,) * 4 if self.tiny else (100,) * depth

    @property
    def wide(self) -> tuple[int, ...]:
        """The chapter's 300-100 network (32-16 in tiny mode)."""
        return (32, 16) if self.tiny else (300, 100)

    def datamodule(
        self, seed: int, scaling: str = "unit", augment: dict[str, Any] | None = None
    ) -> ClassificationDataModule:
        key = (seed, scaling, json.dumps(augment, sort_keys=True))
        if key not in self._modules:
            common: dict[str, Any] = {
                "batch_size": self.batch_size,
                "seed": seed,
                "scaling": scaling,
                "augment": augment,
            }
            if self.digits:
                dm: ClassificationDataModule = DigitsDataModule(val_split=0.2, **common)
            else:
                dm = FashionMNISTDataModule(
                    download=False, samples_per_class=self.per_class, val_split=self.val, **common
                )
            dm.setup()
            self._modules[key] = dm
        return self._modules[key]

    def describe(self) -> str:
        dm = self.datamodule(self.seeds[0])
        n = {split: len(dm.tensors(split)[1]) for split in ("train", "val", "test")}  # type: ignore[arg-type]
        source = "scikit-learn digits (8x8)" if self.digits else "Fashion-MNIST (28x28)"
        return (
            f"{source}: {n['train']:,} training images "
            f"({'' if self.digits else f'{self.per_class:,} per class, '}a seeded subset), "
            f"{n['val']:,} validation, {n['test']:,} test; batch {self.batch_size}; "
            f"seeds {' '.join(map(str, self.seeds))}; CPU, {torch.get_num_threads()} torch thread(s)"
        )


# ------------------------------------------------------------------------------------------------ one run
class Recorder(pl.Callback):
    """Per-epoch metrics with the training seconds (validation excluded) and the lr; optional per-step loss/lr
    and a probe of the network at the start and after every epoch."""

    def __init__(self, probe: Callable[[nn.Module], Any] | None = None, per_step: bool = False) -> None:
        self.probe = probe
        self.per_step = per_step
        self.history: list[dict[str, float]] = []
        self.steps: list[tuple[float, float]] = []
        self.probes: list[Any] = []
        self.seconds = 0.0
        self._mark: float | None = None

    def _stop_clock(self) -> None:
        if self._mark is not None:
            self.seconds += time.perf_counter() - self._mark
            self._mark = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is not None:
            self.probes.append(self.probe(cast(nn.Module, pl_module.net)))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.per_step:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.steps.append((float(loss), float(trainer.optimizers[0].param_groups[0]["lr"])))

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_clock()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_clock()
        row = {
            "epoch": float(trainer.current_epoch + 1),
            "seconds": self.seconds,
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
        }
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("train_", "val_")):
                row[key] = float(value)
        self.history.append(row)
        if self.probe is not None:
            self.probes.append(self.probe(cast(nn.Module, pl_module.net)))


@dataclass
class Run:
    history: list[dict[str, float]]
    steps: list[tuple[float, float]]
    probes: list[Any]
    test_acc: float
    train_acc: float
    val_acc: float
    seconds: float
    net: nn.Module
    diverged: bool = False

    def __post_init__(self) -> None:
        losses = [row.get("train_loss", math.nan) for row in self.history] + [s[0] for s in self.steps]
        weights = all(bool(torch.isfinite(p).all()) for p in self.net.parameters())
        self.diverged = self.diverged or not weights or any(not math.isfinite(v) for v in losses)

    def curve(self, key: str) -> list[float]:
        return [row.get(key, math.nan) for row in self.history]

    @property
    def epoch_seconds(self) -> float:
        return self.seconds / len(self.history) if self.history else math.nan


def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    was_training = net.training
    net.eval()
    with torch.no_grad():
        correct = sum(
            int((net(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(2000), y.split(2000), strict=True)
        )
    net.train(was_training)
    return correct / len(y)


def train(
    setup: Setup,
    seed: int,
    build: Callable[[], nn.Module],
    *,
    epochs: int,
    callbacks: Sequence[pl.Callback] = (),
    data: ClassificationDataModule | None = None,
    recorder: Recorder | None = None,
    **classifier: Any,
) -> Run:
    """Seed, build the network, fit a ``DNNClassifier`` on the data module and test it."""
    dm = data if data is not None else setup.datamodule(seed)
    pl.seed_everything(seed, verbose=False)
    net = build()
    model = DNNClassifier(net, **classifier)
    recorder = recorder if recorder is not None else Recorder()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        profiler=NoOpProfiler(),
        callbacks=[recorder, *callbacks],
    )
    stopped = False
    try:
        trainer.fit(model, datamodule=dm)
    except FloatingPointError as err:  # DNNClassifier ends a fit whose weights turned NaN/inf
        logging.debug("seed %d: %s", seed, err)
        stopped = True
    run = Run(
        history=recorder.history,
        steps=recorder.steps,
        probes=recorder.probes,
        test_acc=accuracy(net, *dm.tensors("test")),
        train_acc=accuracy(net, *dm.tensors("train")),
        val_acc=accuracy(net, *dm.tensors("val")),
        seconds=recorder.seconds,
        net=net,
    )
    run.diverged = stopped or run.diverged
    return run


def mlp(setup: Setup, hidden: Sequence[int], **kwargs: Any) -> Callable[[], MLP]:
    in_features = setup.datamodule(setup.seeds[0]).num_features
    return lambda: MLP(in_features, tuple(hidden), 10, **kwargs)


def run_variants(
    setup: Setup, variants: dict[str, dict[str, Any]], runner: Callable[..., Run]
) -> dict[str, list[Run]]:
    """``runner(seed, **variant)`` for every variant and seed, logging one line per variant."""
    results: dict[str, list[Run]] = {}
    for label, kwargs in variants.items():
        start = time.perf_counter()
        results[label] = [runner(seed, **kwargs) for seed in setup.seeds]
        accs = [r.test_acc for r in results[label]]
        logging.info("  %-32s test acc %s  (%.0f s)", label, fmt(accs), time.perf_counter() - start)
    return results


# ------------------------------------------------------------------------------------------------ numbers
def fmt(values: Sequence[float], digits: int = 3, percent: bool = False, kind: str = "f") -> str:
    """``mean ± std`` over seeds (sample std), or the single value; ``nan`` for a non-finite mean.

    ``kind`` is the format type: ``"f"`` (``digits`` decimals) or ``"e"`` (``digits`` significant digits)."""
    arr = np.asarray(values, dtype=float) * (100.0 if percent else 1.0)
    mean = float(np.mean(arr)) if len(arr) else math.nan
    if not math.isfinite(mean):
        return "nan"
    places = digits if kind == "f" else digits - 1
    if len(arr) < 2:
        return f"{mean:.{places}{kind}}"
    return f"{mean:.{places}{kind}} ± {float(np.std(arr, ddof=1)):.{places}{kind}}"


def last(runs: Sequence[Run], key: str) -> list[float]:
    return [r.history[-1].get(key, math.nan) if r.history else math.nan for r in runs]


def first(runs: Sequence[Run], key: str) -> list[float]:
    return [r.history[0].get(key, math.nan) if r.history else math.nan for r in runs]


def best(runs: Sequence[Run], key: str) -> list[float]:
    return [max((v for v in r.curve(key) if math.isfinite(v)), default=math.nan) for r in runs]


def stack(curves: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Curves of unequal length (early stopping) as one array padded with NaN; inf counts as NaN."""
    width = max((len(c) for c in curves), default=0)
    out = np.full((len(curves), width), np.nan)
    for i, c in enumerate(curves):
        out[i, : len(c)] = c
    out[~np.isfinite(out)] = np.nan
    return out


# ------------------------------------------------------------------------------------------------ plots
def figure(panels: int, title: str, width: float = 5.2) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(width * panels, 4.4), squeeze=False)
    fig.suptitle(title, fontsize=12)
    return fig, list(axes[0])


def band(ax: Any, x: Any, curves: Sequence[Sequence[float]] | np.ndarray, label: str, **style: Any) -> None:
    """Mean over seeds as a line, the min-max range over seeds as a shaded band."""
    ys = stack(curves)
    if ys.size == 0:  # every seed diverged before a first point: keep the legend entry
        ax.plot([], [], label=label, **style)
        return
    x = np.asarray(x, dtype=float)[: ys.shape[1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (diverged runs) stay NaN
        mean, low, high = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
    (line,) = ax.plot(x, mean, label=label, marker="o" if len(x) < 30 else None, markersize=3, **style)
    if ys.shape[0] > 1:
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)


def epochs_axis(ax: Any, ylabel: str, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def legend_label(label: str, runs: Sequence[Run]) -> str:
    diverged = sum(r.diverged for r in runs)
    return f"{label} ({diverged}/{len(runs)} diverged)" if diverged else label


def epoch_curves(ax: Any, results: dict[str, list[Run]], key: str, **style: Any) -> None:
    for i, (label, runs) in enumerate(results.items()):
        curves = [r.curve(key) for r in runs]
        x = range(1, stack(curves).shape[1] + 1)
        band(ax, x, curves, legend_label(label, runs), color=f"C{i % 10}", **style)


def save(fig: Any, setup: Setup, name: str, caption: str) -> None:
    import matplotlib.pyplot as plt

    spread = "line: mean over seeds; band: min-max over seeds" if len(setup.seeds) > 1 else "one seed"
    fig.text(0.5, 0.01, f"{caption}  ({spread})", ha="center", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    setup.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(setup.out / f"{name}.png", dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ tables
@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""

    def markdown(self) -> str:
        lines = [f"**{self.caption}**", ""] if self.caption else []
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        return "\n".join(lines)


def write_report(setup: Setup, name: str, title: str, tables: Sequence[Table], notes: Sequence[str]) -> Path:
    path = setup.out / f"{name}.md"
    setup.out.mkdir(parents=True, exist_ok=True)
    parts = [f"### {title}", "", f"Data: {setup.describe()}.", "", *notes, ""]
    for table in tables:
        parts += [table.markdown(), ""]
    seconds = time.perf_counter() - setup.started
    parts += [f"Command: `{setup.command}`; wall time {seconds:.0f} s.", "", f"![{title}]({name}.png)"]
    path.write_text("\n".join(parts) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ probes
def hidden_outputs(net: MLP, x: Tensor, grads: bool = False) -> list[Tensor]:
    """Each hidden block's activation output on ``x`` (forward hooks on the MLP's ``act`` modules)."""
    outs: list[Tensor] = []

    def keep(module: nn.Module, inputs: Any, output: Tensor) -> None:
        if grads:
            output.retain_grad()
        outs.append(output)

    hooks = [cast(nn.Module, block.act).register_forward_hook(keep) for block in net.hidden_blocks]
    try:
        logits = net(x)
    finally:
        for hook in hooks:
            hook.remove()
    outs.append(logits)
    return outs


def dead_relu_probe(x: Tensor) -> Callable[[nn.Module], list[float]]:
    """Per hidden layer, the share of units whose output is 0 for every probe image (a dead ReLU)."""

    def probe(net: nn.Module) -> list[float]:
        assert isinstance(net, MLP)
        was_training = net.training
        net.eval()
        with torch.no_grad():
            outs = hidden_outputs(net, x)[:-1]
        net.train(was_training)
        return [float((o <= 0).all(dim=0).float().mean()) for o in outs]

    return probe


def step0_variances(net: MLP, x: Tensor, y: Tensor) -> tuple[list[float], list[float]]:
    """Per hidden layer at initialization: Var of the activations, Var of the loss gradient w.r.t. them."""
    outs = hidden_outputs(net, x, grads=True)
    F.cross_entropy(outs[-1], y).backward()
    hidden = outs[:-1]
    grads = [cast(Tensor, o.grad) for o in hidden]
    return [float(o.detach().var()) for o in hidden], [float(g.var()) for g in grads]


def weight_sparsity(net: nn.Module, tol: float = 1e-3) -> tuple[float, float]:
    """Share of exactly-zero weights and of weights with ``|w| < tol`` (Linear weights, biases excluded)."""
    weights = [m.weight for m in net.modules() if isinstance(m, nn.Linear)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    small = sum(int((w.abs() < tol).sum()) for w in weights)
    return zeros / total, small / total


# ================================================================================================ 1
ACTIVATIONS: dict[str, dict[str, Any]] = {
    "ELU": {"activation": "elu", "init": "he_normal"},
    "leaky ReLU (0.2)": {"activation": {"name": "leaky_relu", "negative_slope": 0.2}, "init": "he_normal"},
    "RReLU": {"activation": "rrelu", "init": "he_normal"},
    "PReLU": {"activation": "prelu", "init": "he_normal"},
    "ReLU": {"activation": "relu", "init": "he_normal"},
    "tanh": {"activation": "tanh", "init": "glorot_normal"},
    "logistic": {"activation": "sigmoid", "init": "glorot_normal"},
    "SELU": {"activation": "selu", "init": "lecun_normal"},
    "SELU + alpha dropout": {"activation": "selu", "init": "lecun_normal", "alpha_dropout": 0.05},
}
DEEP_LR = 0.01


def build_with_alpha_dropout(build: Callable[[], MLP], rate: float) -> Callable[[], MLP]:
    """The MLP has ``nn.Dropout``; SELU needs ``nn.AlphaDropout`` (keeps mean and variance): swap it in."""

    def swapped() -> MLP:
        net = build()
        for block in net.hidden_blocks:
            block.dropout = nn.AlphaDropout(rate)
        return net

    return swapped


@comparison("activations")
def compare_activations(setup: Setup) -> None:
    epochs, hidden = setup.n_epochs(5), setup.deep(20)
    probe_x = setup.datamodule(setup.seeds[0], "standardize").tensors("val")[0][:2000]

    def runner(seed: int, activation: Any, init: str, alpha_dropout: float = 0.0) -> Run:
        p = {"num_parameters": hidden[0]} if activation == "prelu" else {}
        act = {"name": activation, **p} if p else activation
        build = mlp(setup, hidden, activation=act, init=init, dropout=alpha_dropout)
        if alpha_dropout:
            build = build_with_alpha_dropout(build, alpha_dropout)
        probe = dead_relu_probe(probe_x) if activation == "relu" else None
        return train(
            setup,
            seed,
            build,
            epochs=epochs,
            data=setup.datamodule(seed, "standardize"),
            recorder=Recorder(probe=probe),
            optimizer="momentum",
            lr=DEEP_LR,
        )

    results = run_variants(setup, ACTIVATIONS, runner)
    fig, axes = figure(3, f"Activations on a {len(hidden)}-layer plain MLP ({hidden[0]} units per layer)")
    epoch_curves(axes[0], results, "val_acc")
    epochs_axis(axes[0], "validation accuracy (fraction)", "validation accuracy")
    epoch_curves(axes[1], results, "train_loss")
    epochs_axis(axes[1], "training loss (cross-entropy, epoch mean)", "training loss")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    plot_dead_relus(axes[2], results["ReLU"])
    save(fig, setup, "activations", f"SGD momentum 0.9, lr {DEEP_LR}; standardized inputs; {epochs} epochs")
    rows = [
        [
            label,
            str(ACTIVATIONS[label]["init"]),
            fmt([r.test_acc for r in runs]),
            fmt(first(runs, "val_acc")),
            fmt(last(runs, "train_loss")),
            fmt([r.epoch_seconds for r in runs], 2),
            fmt(dead_share(runs, -1), 1, percent=True) if has_probes(runs) else "-",
        ]
        for label, runs in results.items()
    ]
    header = ["activation", "init", "test acc", "val acc after epoch 1", "final train loss", "s/epoch"]
    table = Table([*header, "dead units at end (%)"], rows)
    write_report(
        setup,
        "activations",
        "1. Activations on a deep plain MLP",
        [table],
        [
            f"Network: {len(hidden)} hidden layers of {hidden[0]} units, no batch norm; SGD momentum 0.9, "
            f"lr {DEEP_LR}; inputs standardized (SELU's self-normalization assumes it); {epochs} epochs. "
            "A dead unit outputs 0 for all of 2,000 validation images (ReLU only)."
        ],
    )


def has_probes(runs: Sequence[Run]) -> bool:
    return all(r.probes for r in runs)


def plot_dead_relus(ax: Any, runs: Sequence[Run]) -> None:
    probes = np.asarray([r.probes for r in runs]) * 100.0  # [seed, epoch (0 = init), layer]
    layers = np.arange(1, probes.shape[2] + 1)
    for e in sorted({0, 1, probes.shape[1] - 1}):
        band(ax, layers, probes[:, e, :], "at initialization" if e == 0 else f"after epoch {e}")
    ax.set_xticks(layers[:: max(len(layers) // 10, 1)])
    ax.set_xlabel("hidden layer (1 = next to the input)")
    ax.set_ylabel("dead units (% of the layer)")
    ax.set_title("ReLU: dead units per layer", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


# ================================================================================================ 2
INITS: dict[str, dict[str, Any]] = {
    "torch default (U(±1/sqrt(fan_in)))": {"init": "torch_default"},
    "Glorot (fan_avg, scale 1)": {"init": "glorot_normal"},
    "LeCun (fan_in, scale 1)": {"init": "lecun_normal"},
    "He (fan_in, scale 2)": {"init": "he_normal"},
    "He (fan_avg, scale 2)": {"init": "he_avg_normal"},
}


@comparison("init")
def compare_init(setup: Setup) -> None:
    epochs, hidden = setup.n_epochs(5), setup.deep(20)
    variances: dict[str, list[tuple[list[float], list[float]]]] = {}

    def runner(seed: int, init: str) -> Run:
        build = mlp(setup, hidden, activation="relu", init=init)
        x, y = (t[:1000] for t in setup.datamodule(seed).tensors("train"))
        pl.seed_everything(seed, verbose=False)
        variances.setdefault(init, []).append(
            step0_variances(build(), x, y)
        )  # the same weights train() draws
        return train(setup, seed, build, epochs=epochs, optimizer="momentum", lr=DEEP_LR)

    results = run_variants(setup, INITS, runner)
    fig, axes = figure(3, f"Initialization of a {len(hidden)}-layer ReLU MLP ({hidden[0]} units per layer)")
    layers = np.arange(1, len(hidden) + 1)
    for i, (label, spec) in enumerate(INITS.items()):
        pairs = variances[spec["init"]]
        band(axes[0], layers, [p[0] for p in pairs], label, color=f"C{i}")
        band(axes[1], layers, [p[1] for p in pairs], label, color=f"C{i}")
    for ax, what in ((axes[0], "Var(activation)"), (axes[1], "Var(dLoss/d activation)")):
        ax.set_yscale("log")
        ax.set_xlabel("hidden layer (1 = next to the input)")
        ax.set_ylabel(f"{what}, log scale")
        ax.grid(alpha=0.3)
    axes[0].set_title("forward: activation variance at step 0", fontsize=10)
    axes[1].set_title("backward: gradient variance at step 0", fontsize=10)
    axes[0].legend(fontsize=7)
    epoch_curves(axes[2], results, "val_acc")
    epochs_axis(axes[2], "validation accuracy (fraction)", "learning curves")
    save(
        fig,
        setup,
        "init",
        f"variances over 1,000 training images; SGD momentum 0.9, lr {DEEP_LR}, {epochs} epochs",
    )
    rows = []
    for label, runs in results.items():
        act, grad = zip(*variances[INITS[label]["init"]], strict=True)
        rows.append(
            [
                label,
                fmt([a[0] for a in act], 2, kind="e"),
                fmt([a[-1] for a in act], 2, kind="e"),
                f"{np.mean([g[0] / g[-1] for g in grad]):.3g}",
                fmt(first(runs, "val_acc")),
                fmt([r.test_acc for r in runs]),
            ]
        )
    header = [
        "init",
        "Var(act) layer 1",
        f"Var(act) layer {len(hidden)}",
        f"grad Var layer 1 / layer {len(hidden)}",
        "val acc after epoch 1",
        "test acc",
    ]
    write_report(
        setup,
        "init",
        "2. Initialization: variance per layer at step 0, and learning curves",
        [Table(header, rows)],
        [
            f"Network: {len(hidden)} hidden layers of {hidden[0]} ReLU units, no batch norm; "
            f"SGD momentum 0.9, lr {DEEP_LR}; {epochs} epochs. Step-0 variances over 1,000 training images, "
            "mean loss over them."
        ],
    )


# ================================================================================================ 3
BN_LR = 0.01
BATCHNORM: dict[str, dict[str, Any]] = {
    "ELU": {"activation": "elu", "init": "he_normal", "norm": None, "lr": BN_LR},
    "ELU + BN": {"activation": "elu", "init": "he_normal", "norm": "batch", "lr": BN_LR},
    "logistic": {"activation": "sigmoid", "init": "glorot_normal", "norm": None, "lr": BN_LR},
    "logistic + BN": {"activation": "sigmoid", "init": "glorot_normal", "norm": "batch", "lr": BN_LR},
    "tanh": {"activation": "tanh", "init": "glorot_normal", "norm": None, "lr": BN_LR},
    "tanh + BN": {"activation": "tanh", "init": "glorot_normal", "norm": "batch", "lr": BN_LR},
    "ELU, lr x10": {"activation": "elu", "init": "he_normal", "norm": None, "lr": 10 * BN_LR},
    "ELU + BN, lr x10": {"activation": "elu", "init": "he_normal", "norm": "batch", "lr": 10 * BN_LR},
}


@comparison("batchnorm")
def compare_batchnorm(setup: Setup) -> None:
    epochs, hidden = setup.n_epochs(5), setup.deep(10)

    def runner(seed: int, activation: str, init: str, norm: str | None, lr: float) -> Run:
        build = mlp(setup, hidden, activation=activation, init=init, norm=norm)
        return train(setup, seed, build, epochs=epochs, optimizer="momentum", lr=lr)

    results = run_variants(setup, BATCHNORM, runner)
    fig, axes = figure(
        4, f"Batch normalization in a {len(hidden)}-layer MLP ({hidden[0]} units per layer)", 4.2
    )
    for ax, (title, pair) in zip(axes, batchnorm_panels().items(), strict=True):
        for i, label in enumerate(pair):
            curves = [r.curve("val_acc") for r in results[label]]
            shown = legend_label(label, results[label])
            band(ax, range(1, epochs + 1), curves, shown, color=f"C{i}", linestyle="-" if i else "--")
        epochs_axis(ax, "validation accuracy (fraction)", title)
        ax.legend(fontsize=8)
    save(fig, setup, "batchnorm", f"SGD momentum 0.9, lr {BN_LR} (x10: {10 * BN_LR}); {epochs} epochs")
    rows = [
        [
            label,
            fmt([r.test_acc for r in runs]),
            fmt(first(runs, "val_acc")),
            fmt(last(runs, "train_loss")),
            f"{sum(r.diverged for r in runs)}/{len(runs)}",
            fmt([r.epoch_seconds for r in runs], 2),
        ]
        for label, runs in results.items()
    ]
    header = ["variant", "test acc", "val acc after epoch 1", "final train loss", "diverged", "s/epoch"]
    write_report(
        setup,
        "batchnorm",
        "3. Batch normalization: with and without, saturating activations, 10x lr",
        [Table(header, rows)],
        [
            f"Network: {len(hidden)} hidden layers of {hidden[0]} units; BN between each linear layer and "
            "its activation (no bias before BN); He init for ELU, Glorot for logistic/tanh; "
            f"SGD momentum 0.9, lr {BN_LR} or {10 * BN_LR}; {epochs} epochs."
        ],
    )


def batchnorm_panels() -> dict[str, tuple[str, str]]:
    return {
        "ELU": ("ELU", "ELU + BN"),
        "logistic (sigmoid)": ("logistic", "logistic + BN"),
        "tanh": ("tanh", "tanh + BN"),
        f"ELU at lr {10 * BN_LR}": ("ELU, lr x10", "ELU + BN, lr x10"),
    }


# ================================================================================================ 4
CLIP_LR = 0.2
CLIPPING: dict[str, dict[str, Any]] = {
    f"no clipping, lr {CLIP_LR}": {"lr": CLIP_LR},
    "clip by value 1.0": {"lr": CLIP_LR, "clip": {"value": 1.0}},
    "clip by norm 1.0": {"lr": CLIP_LR, "clip": {"norm": 1.0}},
    f"no clipping, lr {DEEP_LR} (reference)": {"lr": DEEP_LR},
}


@comparison("clipping")
def compare_clipping(setup: Setup) -> None:
    epochs, hidden = setup.n_epochs(5), setup.deep(20)
    probe = dead_relu_probe(setup.datamodule(setup.seeds[0]).tensors("val")[0][:2000])

    def runner(seed: int, lr: float, clip: dict[str, Any] | None = None) -> Run:
        callbacks = [GradientClipping(**clip, skip_nonfinite=False, log_norm=False)] if clip else []
        build = mlp(setup, hidden, activation="relu", init="he_normal")
        return train(
            setup,
            seed,
            build,
            epochs=epochs,
            callbacks=callbacks,
            recorder=Recorder(probe, per_step=True),
            optimizer="momentum",
            lr=lr,
        )

    results = run_variants(setup, CLIPPING, runner)
    fig, axes = figure(2, f"Gradient clipping: a {len(hidden)}-layer ReLU MLP at lr {CLIP_LR}", 6.5)
    for i, (label, runs) in enumerate(results.items()):
        smooth = [running_mean([s[0] for s in r.steps], 20) for r in runs]
        x = np.arange(1, stack(smooth).shape[1] + 1)
        band(axes[0], x, smooth, legend_label(label, runs), color=f"C{i}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("optimizer step")
    axes[0].set_ylabel("training loss (cross-entropy, mean of 20 steps), log")
    axes[0].set_title("training loss per step (gaps: NaN)", fontsize=10)
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    epoch_curves(axes[1], results, "val_acc")
    epochs_axis(axes[1], "validation accuracy (fraction)", "validation accuracy")
    save(fig, setup, "clipping", f"SGD momentum 0.9; He init; GradientClipping callback; {epochs} epochs")
    rows = [
        [
            label,
            f"{sum(r.diverged for r in runs)}/{len(runs)}",
            fmt([r.test_acc for r in runs]),
            fmt(last(runs, "train_loss")),
            fmt(dead_share(runs, 0), 1, percent=True),
            fmt(dead_share(runs, -1), 1, percent=True),
            fmt([r.epoch_seconds for r in runs], 2),
        ]
        for label, runs in results.items()
    ]
    header = [
        "variant",
        "diverged (NaN loss)",
        "test acc",
        "final train loss",
        "dead ReLUs at init (%)",
        "dead ReLUs at end (%)",
        "s/epoch",
    ]
    write_report(
        setup,
        "clipping",
        "4. Gradient clipping at a learning rate that diverges",
        [Table(header, rows)],
        [
            f"Network: {len(hidden)} hidden layers of {hidden[0]} ReLU units, He init, no batch norm; "
            f"SGD momentum 0.9; {epochs} epochs. Clipping: the library's GradientClipping callback, global "
            "L2 norm or per element, with skip_nonfinite=False so that only the clipping itself is measured. "
            "A dead ReLU outputs 0 for all of 2,000 validation images (the share over all hidden units; "
            "NaN weights count as not dead)."
        ],
    )


def dead_share(runs: Sequence[Run], index: int) -> list[float]:
    """The share of dead ReLUs over all hidden layers, at probe ``index`` (0: initialization, -1: the last
    completed epoch; NaN for a run that diverged before completing one)."""
    return [float(np.mean(r.probes[index])) if len(r.probes) > (index < 0) else math.nan for r in runs]


def running_mean(values: Sequence[float], window: int) -> list[float]:
    arr = np.asarray(values, dtype=float)
    if len(arr) < window:
        return arr.tolist()
    kernel = np.ones(window) / window
    return np.convolve(arr, kernel, mode="valid").tolist()


# ================================================================================================ 5
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "GD (lr 0.01)": {"optimizer": "sgd", "lr": 0.01},
    "momentum 0.9 (lr 0.01)": {"optimizer": "momentum", "lr": 0.01},
    "Nesterov 0.9 (lr 0.01)": {"optimizer": "nesterov", "lr": 0.01},
    "AdaGrad (lr 0.01)": {"optimizer": "adagrad", "lr": 0.01},
    "RMSProp (lr 0.001, rho 0.9)": {"optimizer": "rmsprop", "lr": 0.001, "optimizer_kwargs": {"alpha": 0.9}},
    "Adam (lr 0.001)": {"optimizer": "adam", "lr": 0.001},
    "FTRL (lr 0.1)": {"optimizer": "ftrl", "lr": 0.1},
    "FTRL (lr 0.01, accumulator 1e-6)": {
        "optimizer": "ftrl",
        "lr": 0.01,
        "optimizer_kwargs": {"initial_accumulator_value": 1e-6},
    },
}
SPARSE: dict[str, dict[str, Any]] = {
    "Adam + L1 1e-4": {"optimizer": "adam", "lr": 0.001, "l1": 1e-4},
    "Adam + L1 1e-3": {"optimizer": "adam", "lr": 0.001, "l1": 1e-3},
    "FTRL + L1 0.001": {"optimizer": "ftrl", "lr": 0.1, "optimizer_kwargs": {"l1": 0.001}},
    "FTRL + L1 0.01": {"optimizer": "ftrl", "lr": 0.1, "optimizer_kwargs": {"l1": 0.01}},
    "FTRL + L1 0.03": {"optimizer": "ftrl", "lr": 0.1, "optimizer_kwargs": {"l1": 0.03}},
}


@comparison("optimizers")
def compare_optimizers(setup: Setup) -> None:
    epochs, hidden = setup.n_epochs(5), setup.wide

    def runner(seed: int, **classifier: Any) -> Run:
        build = mlp(setup, hidden, activation="elu", init="he_normal")
        return train(setup, seed, build, epochs=epochs, **classifier)

    results = run_variants(setup, OPTIMIZERS, runner)
    sparse = run_variants(setup, SPARSE, runner)
    fig, axes = figure(3, f"Optimizers on a {'-'.join(map(str, hidden))} ELU MLP")
    epoch_curves(axes[0], results, "val_acc")
    epochs_axis(axes[0], "validation accuracy (fraction)", "per epoch")
    axes[0].legend(fontsize=7)
    for i, (label, runs) in enumerate(results.items()):
        seconds = np.nanmean(stack([r.curve("seconds") for r in runs]), 0)
        band(axes[1], seconds, [r.curve("val_acc") for r in runs], label, color=f"C{i}")
    axes[1].set_xlabel("training time (s, validation excluded, mean over seeds)")
    axes[1].set_ylabel("validation accuracy (fraction)")
    axes[1].set_title("per second of training", fontsize=10)
    axes[1].grid(alpha=0.3)
    plot_sparsity(axes[2], {k: results[k] for k in ("Adam (lr 0.001)", "FTRL (lr 0.1)")} | sparse)
    save(
        fig, setup, "optimizers", f"He init, no batch norm; {epochs} epochs; usual settings of each optimizer"
    )
    rows = [
        [
            label,
            fmt([r.test_acc for r in runs]),
            fmt(first(runs, "val_acc")),
            fmt(last(runs, "train_loss")),
            fmt([r.epoch_seconds for r in runs], 2),
        ]
        for label, runs in results.items()
    ]
    table = Table(["optimizer", "test acc", "val acc after epoch 1", "final train loss", "s/epoch"], rows)
    write_report(
        setup,
        "optimizers",
        "5. Optimizers at their usual settings, and sparsity with L1",
        [table, sparsity_table({k: results[k] for k in ("Adam (lr 0.001)", "FTRL (lr 0.1)")} | sparse)],
        [
            f"Network: {'-'.join(map(str, hidden))} ELU, He init, no batch norm; {epochs} epochs. "
            "L1 for Adam is DNNClassifier's penalty l1 * sum|w| added to the loss; FTRL's is its own l1 "
            "argument (TensorFlow's FTRL-Proximal), which sets weights to exact zeros. FTRL keeps "
            "TensorFlow's defaults (initial accumulator 0.1, lr_power -0.5) with lr 0.1, the best of "
            "0.01/0.1/0.5 in a one-seed pilot; with accumulator 1e-6 it is AdaGrad-like and keeps the "
            "initial weights."
        ],
    )


def sparsity_table(results: dict[str, list[Run]]) -> Table:
    rows = []
    for label, runs in results.items():
        shares = [weight_sparsity(r.net) for r in runs]
        rows.append(
            [
                label,
                fmt([s[0] for s in shares], 1, percent=True),
                fmt([s[1] for s in shares], 1, percent=True),
                fmt([r.test_acc for r in runs]),
            ]
        )
    header = ["run", "exact zeros (% of weights)", "weights with abs(w) < 1e-3 (%)", "test acc"]
    return Table(header, rows, "Sparsity: share of weights at zero after training")


def plot_sparsity(ax: Any, results: dict[str, list[Run]]) -> None:
    """Adam runs as blue circles, FTRL runs as orange squares, darker with more L1."""
    import matplotlib.pyplot as plt

    for family, cmap, marker in (("Adam", plt.cm.Blues, "o"), ("FTRL", plt.cm.Oranges, "s")):
        labels = [label for label in results if label.startswith(family)]
        for shade, label in zip(np.linspace(0.45, 1.0, len(labels)), labels, strict=True):
            zeros = np.asarray([weight_sparsity(r.net)[0] for r in results[label]]) * 100.0
            accs = np.asarray([r.test_acc for r in results[label]])
            ax.errorbar(
                zeros.mean(),
                accs.mean(),
                xerr=np.ptp(zeros) / 2,
                yerr=np.ptp(accs) / 2,
                fmt=marker,
                color=cmap(shade),
                label=label,
                capsize=3,
                markersize=7,
            )
    ax.set_xlabel("weights exactly zero (% of all weights)")
    ax.set_ylabel("test accuracy (fraction)")
    ax.set_title("sparsity vs accuracy (error bars: half the seed range)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


# ================================================================================================ 6
SCHEDULE_LR = 0.05


def schedules(steps: int, epoch_steps: int) -> dict[str, dict[str, Any]]:
    """The five schedules for a run of ``steps`` optimizer steps (``epoch_steps`` per epoch)."""
    half, three_quarters = max(steps // 2, 1), max(3 * steps // 4, 2)
    return {
        "constant": {"lr_schedule": None},
        "piecewise constant (x0.1 at 50%, 75%)": {
            "lr_schedule": {
                "name": "piecewise_constant",
                "boundaries": [half, three_quarters],
                "values": [1.0, 0.1, 0.01],
                "relative": True,
            }
        },
        "performance (x0.5, patience 1)": {
            "lr_schedule": {"name": "performance", "factor": 0.5, "patience": 1}
        },
        "exponential (x0.1 over the run)": {
            "lr_schedule": {"name": "exponential", "decay_steps": steps, "decay_rate": 0.1}
        },
        "power (c 1, s 1 epoch)": {
            "lr_schedule": {"name": "power", "decay_steps": epoch_steps, "power": 1.0}
        },
    }


@comparison("schedules")
def compare_schedules(setup: Setup) -> None:
    epochs, hidden = setup.n_epochs(10), setup.wide
    epoch_steps = math.ceil(len(setup.datamodule(setup.seeds[0]).tensors("train")[1]) / setup.batch_size)
    variants = schedules(epochs * epoch_steps, epoch_steps)

    def runner(seed: int, lr_schedule: dict[str, Any] | None) -> Run:
        build = mlp(setup, hidden, activation="elu", init="he_normal")
        return train(
            setup,
            seed,
            build,
            epochs=epochs,
            recorder=Recorder(per_step=True),
            optimizer="momentum",
            lr=SCHEDULE_LR,
            lr_schedule=lr_schedule,
        )

    results = run_variants(setup, variants, runner)
    fig, axes = figure(
        3, f"Learning-rate schedules for SGD momentum 0.9 (lr0 {SCHEDULE_LR}), {epochs} epochs"
    )
    for i, (label, runs) in enumerate(results.items()):
        lrs = [[s[1] for s in r.steps] for r in runs]
        band(axes[0], np.arange(1, stack(lrs).shape[1] + 1) / epoch_steps, lrs, label, color=f"C{i}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("learning rate, log scale")
    axes[0].set_title("learning rate per step", fontsize=10)
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    epoch_curves(axes[1], results, "val_acc")
    epochs_axis(axes[1], "validation accuracy (fraction)", "validation accuracy")
    epoch_curves(axes[2], results, "train_loss")
    epochs_axis(axes[2], "training loss (cross-entropy, epoch mean)", "training loss")
    save(
        fig,
        setup,
        "schedules",
        f"{'-'.join(map(str, hidden))} ELU MLP, He init; {epoch_steps} steps per epoch",
    )
    rows = [
        [
            label,
            fmt(last(runs, "lr"), 2, kind="e"),
            fmt([r.test_acc for r in runs]),
            fmt(best(runs, "val_acc")),
            fmt(last(runs, "train_loss")),
        ]
        for label, runs in results.items()
    ]
    header = ["schedule", "final lr", "test acc", "best val acc", "final train loss"]
    write_report(
        setup,
        "schedules",
        "6. Learning-rate schedules for momentum SGD",
        [Table(header, rows)],
        [
            f"Network: {'-'.join(map(str, hidden))} ELU, He init; SGD momentum 0.9, lr0 {SCHEDULE_LR}; "
            f"{epochs} epochs of {epoch_steps} steps. TF-style schedules step per optimizer step; the "
            "performance schedule (ReduceLROnPlateau on val_loss) per epoch."
        ],
    )


# ================================================================================================ 7
AUGMENT = {"degrees": 10, "translate": 0.1}
REGULARIZATION: dict[str, dict[str, Any]] = {
    "none": {},
    "L1 1e-4": {"l1": 1e-4},
    "L2 1e-3": {"l2": 1e-3},
    "dropout 0.2": {"dropout": 0.2},
    "max-norm 1.0": {"max_norm": 1.0},
    "data augmentation": {"augment": AUGMENT},
    "early stopping (patience 2)": {"early_stopping": 2},
}


@comparison("regularization")
def compare_regularization(setup: Setup) -> None:
    epochs, hidden = setup.n_epochs(12), setup.wide

    def runner(
        seed: int,
        dropout: float = 0.0,
        max_norm: float | None = None,
        augment: dict[str, Any] | None = None,
        early_stopping: int | None = None,
        **penalties: Any,
    ) -> Run:
        callbacks: list[pl.Callback] = []
        if max_norm is not None:
            callbacks.append(MaxNorm(max_norm, pattern=r"hidden\d+"))
        if early_stopping is not None:
            callbacks.append(EarlyStopping("val_loss", patience=early_stopping, restore_best_weights=True))
        build = mlp(setup, hidden, activation="elu", init="he_normal", dropout=dropout)
        return train(
            setup,
            seed,
            build,
            epochs=epochs,
            callbacks=callbacks,
            data=setup.datamodule(seed, augment=augment),
            optimizer="adam",
            lr=0.001,
            **penalties,
        )

    results = run_variants(setup, REGULARIZATION, runner)
    fig, axes = figure(3, f"Regularization of a {'-'.join(map(str, hidden))} ELU MLP (Adam), {epochs} epochs")
    epoch_curves(axes[0], results, "val_loss")
    epochs_axis(axes[0], "validation loss (cross-entropy)", "validation loss (rising = overfitting)")
    axes[0].legend(fontsize=7)
    epoch_curves(axes[1], results, "train_acc")
    epochs_axis(axes[1], "training accuracy (fraction, in training mode)", "training accuracy")
    plot_gaps(axes[2], results)
    save(fig, setup, "regularization", "train/val accuracy measured at the end, in evaluation mode")
    rows = [
        [
            label,
            fmt([r.train_acc for r in runs]),
            fmt([r.val_acc for r in runs]),
            fmt([r.train_acc - r.val_acc for r in runs]),
            fmt([r.test_acc for r in runs]),
            fmt([float(len(r.history)) for r in runs], 1),
        ]
        for label, runs in results.items()
    ]
    header = ["regularization", "train acc", "val acc", "train - val gap", "test acc", "epochs run"]
    write_report(
        setup,
        "regularization",
        "7. Regularization: train/validation gap and test accuracy",
        [Table(header, rows)],
        [
            f"Network: {'-'.join(map(str, hidden))} ELU, He init, Adam lr 0.001, {epochs} epochs. Train and "
            "val accuracy of the final (for early stopping: restored best) weights, in evaluation mode (no "
            "dropout, no augmentation). L1/L2 as DNNClassifier penalties (l1 * sum|w|, l2 * sum w^2) on all "
            "weights; "
            "dropout after each hidden layer; max-norm on the hidden layers' incoming weights per unit; "
            f"augmentation: random affine {AUGMENT}; early stopping on val_loss, best weights restored."
        ],
    )


def plot_gaps(ax: Any, results: dict[str, list[Run]]) -> None:
    labels = list(results)
    x = np.arange(len(labels))
    for offset, (what, color) in zip(
        (-0.27, 0.0, 0.27), (("train", "C0"), ("val", "C1"), ("test", "C2")), strict=True
    ):
        values = np.asarray([[getattr(r, f"{what}_acc") for r in results[k]] for k in labels])
        ax.bar(
            x + offset, values.mean(1), 0.27, yerr=np.ptp(values, 1) / 2, color=color, label=what, capsize=2
        )
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    low = min(float(np.min([[r.val_acc, r.test_acc] for runs in results.values() for r in runs])), 1.0)
    ax.set_ylim(max(low - 0.05, 0.0), 1.0)
    ax.set_ylabel("accuracy (fraction, end of training)")
    ax.set_title("train / val / test accuracy (error bars: half the seed range)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


# ================================================================================================ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("name", choices=[*COMPARISONS, "all"], help="the comparison to run, or all")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (tiny: 0)")
    parser.add_argument("--epochs", type=int, default=None, help="override every comparison's epochs")
    parser.add_argument("--out", type=Path, default=Path("docs/comparisons"), help="output folder")
    parser.add_argument("--tiny", action="store_true", help="digits data, small nets, 1 epoch, 1 seed")
    parser.add_argument(
        "--data", choices=["fashion", "digits"], default=None, help="default: fashion (tiny: digits)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return parser.parse_args(argv)


def quiet() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning_dnn"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*LeafSpec.*",
        ".*GPU available.*",
        ".*TPU available.*",
    ):
        warnings.filterwarnings("ignore", pattern)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    setup = Setup(
        out=args.out,
        seeds=args.seeds if args.seeds is not None else ([0] if args.tiny else [0, 1, 2]),
        epochs=args.epochs,
        tiny=args.tiny,
        data=args.data or ("digits" if args.tiny else "fashion"),
    )
    names = list(COMPARISONS) if args.name == "all" else [args.name]
    options = ["--tiny"] if args.tiny else []
    options += [] if args.seeds is None else ["--seeds", *map(str, args.seeds)]
    options += [] if args.epochs is None else ["--epochs", str(args.epochs)]
    options += [] if args.data is None else ["--data", args.data]
    for name in names:
        setup.started = time.perf_counter()
        setup.command = " ".join(["python examples/compare.py", name, *options])
        logging.info("%s ...", name)
        COMPARISONS[name](setup)
        logging.info("%s: %.0f s -> %s", name, time.perf_counter() - setup.started, setup.out / f"{name}.md")


if __name__ == "__main__":
    main()
