"""The chapter's transfer study: reuse a network trained on classes 0-4 to learn classes 5-9 from few labels.

    python examples/transfer_study.py                              # quick: embedded 8x8 digits, a few minutes
    python examples/transfer_study.py --dataset fashion-mnist      # the real run -> docs/transfer_study/
    python examples/transfer_study.py --tiny --seeds 0 --out /tmp/ts   # seconds (the tests)
    python examples/transfer_study.py --tiny --trainer.strategy ddp --trainer.devices 2   # 2-process CPU DDP

Step 1 pretrains the source network (5 hidden layers of 100 ELU units, He init, Adam, early stopping that
restores the best weights) on classes 0-4 (or takes ``zoo:fashion-5x100-elu-classes0-4`` with
``--pretrained zoo``). Step 2 learns classes 5-9 from ``N`` labelled images per class (Fashion-MNIST and
MNIST: 100; digits: 20) in six ways:

    a  scratch   the same network from scratch
    b  frozen    hidden1-5 reused and frozen, a new head trained on cached hidden5 features (FeatureCache)
    c  lower3    hidden1-3 reused, frozen and cached; new hidden4-5 and head
    d  unfreeze  (b), then hidden4-5 unfrozen at a lower learning rate (LayerFreezer's schedule)
    e  autoenc   encoder of an autoencoder pretrained on all training images without labels, fine-tuned
    f  siamese   hidden1-5 of a siamese network pretrained on pairs of classes 0-4, frozen, cached; new head

Every fit early-stops and restores its best weights: the target classifiers (a-f) on the validation accuracy,
step 1 (as the zoo recipe) and the label-free pretraining of e and f on the validation loss. Test accuracy is measured on the whole
test split of the task's classes. The batch size is the global one: under DDP each of the W processes gets
``batch / W`` samples of every step (the loaders shard each epoch's permutation by interleaving), so a DDP run
follows the single-process one up to float rounding. Outputs in ``--out``: ``transfer_study.md`` (table),
``transfer_study.png`` (validation curves) and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from lightning_dnn import MLP, DNNClassifier, EarlyStopping, FeatureCache, LayerFreezer
from lightning_dnn.data import (
    ClassificationDataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from lightning_dnn.hub import LoadReport, load_pretrained, load_state_dict_partial
from lightning_dnn.profiler import NoOpProfiler

# the sibling example's helpers (Recorder, accuracy, fmt, band, figure, Table, quiet), imported from its folder
sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare

SOURCE_CLASSES = [0, 1, 2, 3, 4]
TARGET_CLASSES = [5, 6, 7, 8, 9]
ZOO_NAME = "fashion-5x100-elu-classes0-4"
VARIANTS: dict[str, str] = {
    "a": "from scratch",
    "b": "hidden1-5 reused, frozen, cached; new head",
    "c": "hidden1-3 reused, frozen, cached; new hidden4-5 + head",
    "d": "(b), then hidden4-5 unfrozen at lr/10",
    "e": "autoencoder encoder (all images, no labels), fine-tuned",
    "f": "siamese hidden1-5 (pairs of classes 0-4), frozen, cached; new head",
}
PRETRAINED_VARIANTS = ("e", "f")  # need lightning_dnn.pretrain
ALL_HIDDEN, LOWER3, TOP2 = "hidden[1-5]", "hidden[1-3]", "hidden[45]"


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of one mode (quick digits, tiny, Fashion-MNIST / MNIST).

    Validation sizes are even, so that 2 DDP processes validate on equal halves without padding (a padded
    duplicate would make their validation metrics differ slightly from one process's).
    """

    dataset: str
    hidden: tuple[int, ...] = (100,) * 5
    per_class: int = 100
    source_val: int | float = 3000
    target_val: int | float = 500
    unlabelled_val: int | float = 5000
    source_batch: int = 128
    batch: int = 32
    lr: float = 1e-3
    head_lr: float = 1e-2  # variants that train only a new head on frozen features (b, d before unfreezing, f)
    monitor: str = "val_acc"  # the target variants' early stopping (the source network's: source_monitor)
    source_monitor: str = "val_loss"  # as the zoo recipe; val_acc: 90.75% on 0-4, no better transfer (see docs)
    source_epochs: int = 60
    source_patience: int = 8
    epochs: int = 200
    patience: int = 15
    unfreeze_epoch: int = 20
    unfrozen_lr_factor: float = 0.1
    pretrain_epochs: int = 20
    pretrain_patience: int = 3
    pairs_per_epoch: int = 20_000


def settings_for(dataset: str, tiny: bool) -> Settings:
    if dataset == "digits":
        base = Settings(
            "digits", per_class=20, source_val=144, target_val=140, unlabelled_val=144, source_batch=32,
            batch=20, source_patience=10, epochs=150, unfreeze_epoch=15, pretrain_epochs=40,
            pretrain_patience=5, pairs_per_epoch=2000,
        )
        if tiny:
            return replace(
                base, hidden=(16,) * 5, per_class=20, lr=1e-2, source_epochs=3, epochs=3, patience=2,
                unfreeze_epoch=1, pretrain_epochs=2, pairs_per_epoch=200,
            )
        return base
    return Settings(dataset)


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Outcome:
    """One fit: its test accuracy, when it was best, how long it took, and what the tests look at."""

    name: str
    seed: int
    test_acc: float
    best_epoch: int  # epochs to the best monitored validation metric (1-based)
    epochs: int
    epoch_seconds: float  # mean wall-clock seconds of a training epoch (validation excluded)
    total_seconds: float  # wall clock of the whole fit (cache builds and validation included)
    history: list[dict[str, float]]
    net: nn.Module
    report: LoadReport | None = None
    groups: list[list[tuple[str | None, float, int]]] = field(default_factory=list)
    trainable: list[list[str]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name, "seed": self.seed, "test_acc": self.test_acc, "best_epoch": self.best_epoch,
            "epochs": self.epochs, "epoch_seconds": self.epoch_seconds, "total_seconds": self.total_seconds,
            "val_acc": [row.get("val_acc", math.nan) for row in self.history],
            "val_loss": [row.get("val_loss", math.nan) for row in self.history],
        }


class OptimizerLog(pl.Callback):
    """At each epoch's first batch (after every milestone): the param groups and the trainable layers."""

    def __init__(self) -> None:
        self.groups: list[list[tuple[str | None, float, int]]] = []
        self.trainable: list[list[str]] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            groups = trainer.optimizers[0].param_groups
            self.groups.append([(g.get("name"), float(g["lr"]), len(g["params"])) for g in groups])
            names = {n.split(".")[1] for n, p in pl_module.named_parameters() if p.requires_grad}
            self.trainable.append(sorted(names))


# ------------------------------------------------------------------------------------------------ the study
@dataclass
class Study:
    settings: Settings
    seeds: list[int]
    out: Path
    data_dir: Path | None = None
    accelerator: str = "cpu"
    strategy: str = "auto"
    devices: int = 1
    pretrained: str = "self"
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "transfer_study")
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.devices if self.strategy.startswith("ddp") else 1

    def per_rank(self, batch: int) -> int:
        if batch % self.world_size:
            raise ValueError(
                f"the global batch size {batch} must divide by the number of processes {self.world_size}; "
                "choose --trainer.devices accordingly"
            )
        return batch // self.world_size

    # -------------------------------------------------------------------------------------------- data
    def data(self, seed: int, *, classes: list[int] | None, per_class: int | None, val: int | float,
             batch: int) -> ClassificationDataModule:
        common: dict[str, Any] = {
            "classes": classes, "samples_per_class": per_class, "val_split": val, "seed": seed,
            "batch_size": self.per_rank(batch), "eval_batch_size": 1000, "scaling": "unit",
            "drop_last": True,  # no short last batch: 1 process and W processes then take the same steps
        }
        name = self.settings.dataset
        if name == "digits":
            return DigitsDataModule(**common)
        module = FashionMNISTDataModule if name == "fashion-mnist" else MNISTDataModule
        root = self.data_dir if self.data_dir is not None else module.default_root()
        dm = module(root=root, download=False, **common)
        if dm.locate() is None:
            raise FileNotFoundError(
                f"--dataset {name}: no {module.INFO.name} files under {root} (expected the four IDX files "
                "train-images-idx3-ubyte ... t10k-labels-idx1-ubyte, gzipped or not); pass --data-dir DIR, or run "
                "the quick mode on the embedded digits (--dataset digits)"
            )
        return dm

    def source_data(self, seed: int) -> ClassificationDataModule:
        s = self.settings
        return self.data(seed, classes=SOURCE_CLASSES, per_class=None, val=s.source_val, batch=s.source_batch)

    def target_data(self, seed: int) -> ClassificationDataModule:
        s = self.settings
        return self.data(seed, classes=TARGET_CLASSES, per_class=s.per_class, val=s.target_val, batch=s.batch)

    def unlabelled_data(self, seed: int) -> ClassificationDataModule:
        s = self.settings
        return self.data(seed, classes=None, per_class=None, val=s.unlabelled_val, batch=s.source_batch)

    # -------------------------------------------------------------------------------------------- fitting
    def network(self, in_features: int) -> MLP:
        return MLP(in_features, self.settings.hidden, len(TARGET_CLASSES), activation="elu", init="he_normal")

    def trainer(self, max_epochs: int, callbacks: Sequence[pl.Callback], min_epochs: int | None = None) -> pl.Trainer:
        return pl.Trainer(
            max_epochs=max_epochs, min_epochs=min_epochs, accelerator=self.accelerator, strategy=self.strategy,
            devices=self.devices, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, profiler=NoOpProfiler(),
            default_root_dir=self.workdir, callbacks=list(callbacks),
        )

    def fit(
        self, name: str, seed: int, model: pl.LightningModule, data: pl.LightningDataModule, *,
        max_epochs: int, patience: int, callbacks: Sequence[pl.Callback] = (), min_epochs: int | None = None,
        test: ClassificationDataModule | None = None, monitor: str = "val_loss",
    ) -> Outcome:
        """Fit with early stopping on ``monitor`` (best weights restored) and test on ``test``'s test split."""
        mode = "max" if monitor.endswith("acc") else "min"
        recorder, log = compare.Recorder(), OptimizerLog()
        stopper = EarlyStopping(monitor, mode=mode, patience=patience)
        trainer = self.trainer(max_epochs, [recorder, *callbacks, stopper, log], min_epochs)
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        total = time.perf_counter() - start
        net: nn.Module = model.net if hasattr(model, "net") else model.encoder  # type: ignore[assignment]
        acc = math.nan
        if test is not None:
            test.setup("test")
            acc = compare.accuracy(net.cpu(), *test.tensors("test"))
        best = stopper.best_epoch if stopper.best_epoch is not None else len(recorder.history) - 1
        epochs = len(recorder.history)
        outcome = Outcome(
            name, seed, acc, best + 1, epochs, recorder.seconds / max(epochs, 1), total, recorder.history,
            net, groups=log.groups, trainable=log.trainable,
        )
        logging.info("  %-9s seed %d: test acc %.4f, best epoch %d/%d, %.1f s", name, seed, acc, best + 1, epochs,
                     total)
        self.outcomes.setdefault(name, []).append(outcome)
        return outcome

    def classifier(self, net: nn.Module, lr: float | None = None) -> DNNClassifier:
        return DNNClassifier(net, optimizer="adam", lr=self.settings.lr if lr is None else lr)

    # -------------------------------------------------------------------------------------------- step 1
    def pretrain(self, seed: int) -> nn.Module:
        """The source network on classes 0-4 (trained here, or the zoo entry)."""
        s = self.settings
        data = self.source_data(seed)
        if self.pretrained == "zoo":
            net, _ = load_pretrained(f"zoo:{ZOO_NAME}")
            data.setup("test")
            acc = compare.accuracy(net, *data.tensors("test"))
            self.outcomes.setdefault("pretrain-zoo", []).append(
                Outcome("pretrain-zoo", seed, acc, 0, 0, math.nan, math.nan, [], net)
            )
            return net
        pl.seed_everything(seed, verbose=False)
        net = MLP(data.num_features, s.hidden, len(SOURCE_CLASSES), activation="elu", init="he_normal")
        outcome = self.fit("pretrain", seed, self.classifier(net), data, max_epochs=s.source_epochs,
                           patience=s.source_patience, test=data, monitor=s.source_monitor)
        return outcome.net

    # -------------------------------------------------------------------------------------------- step 2
    def reuse(self, net: MLP, source: nn.Module, include: str) -> LoadReport:
        return load_state_dict_partial(net, source.state_dict(), include=include, source="the source network")

    def run_variant(self, key: str, seed: int, source: nn.Module) -> Outcome:
        s = self.settings
        data = self.target_data(seed)
        pl.seed_everything(seed, verbose=False)
        net = self.network(data.num_features)
        fit = {"max_epochs": s.epochs, "patience": s.patience, "test": data, "monitor": s.monitor}
        head_only = self.classifier(net, s.head_lr)
        if key == "a":
            return self.fit("a", seed, self.classifier(net), data, **fit)
        if key in ("b", "c"):
            report = self.reuse(net, source, ALL_HIDDEN if key == "b" else LOWER3)
            callbacks = [LayerFreezer(ALL_HIDDEN if key == "b" else LOWER3), FeatureCache()]
            model = head_only if key == "b" else self.classifier(net)
            outcome = self.fit(key, seed, model, data, callbacks=callbacks, **fit)
        elif key == "d":
            report = self.reuse(net, source, ALL_HIDDEN)
            freezer = LayerFreezer(ALL_HIDDEN, unfreeze={s.unfreeze_epoch: TOP2},
                                   unfrozen_lr=s.lr * s.unfrozen_lr_factor)
            outcome = self.fit("d", seed, head_only, data, callbacks=[freezer, FeatureCache()],
                               min_epochs=s.unfreeze_epoch + 1, **fit)
        elif key == "e":
            report = self.reuse(net, self.pretrain_autoencoder(seed), ALL_HIDDEN)
            outcome = self.fit("e", seed, self.classifier(net), data, **fit)
        elif key == "f":
            report = self.reuse(net, self.pretrain_siamese(seed), ALL_HIDDEN)
            callbacks = [LayerFreezer(ALL_HIDDEN), FeatureCache()]
            outcome = self.fit("f", seed, head_only, data, callbacks=callbacks, **fit)
        else:
            raise ValueError(f"unknown variant {key!r}; expected one of {list(VARIANTS)}")
        outcome.report = report
        return outcome

    def pretrain_autoencoder(self, seed: int) -> nn.Module:
        """(e): an autoencoder over every training image of all ten classes, labels unused."""
        from lightning_dnn.pretrain import Autoencoder

        s = self.settings
        data = self.unlabelled_data(seed)
        pl.seed_everything(seed, verbose=False)
        encoder = MLP(data.num_features, s.hidden, 10, activation="elu", init="he_normal")
        encoder.output.requires_grad_(False)  # unused by the autoencoder; DDP refuses trainable unused parameters
        model = Autoencoder(encoder, noise="gaussian", noise_std=0.1, loss="mse", lr=s.lr)
        return self.fit("e-pretrain", seed, model, data, max_epochs=s.pretrain_epochs,
                        patience=s.pretrain_patience).net

    def pretrain_siamese(self, seed: int) -> nn.Module:
        """(f): a siamese network on pairs of classes 0-4 (same class or not), the source task's cheap labels."""
        from lightning_dnn.pretrain import PairDataModule, SiamesePretrainer

        s = self.settings
        base = self.source_data(seed)
        data = PairDataModule(base, pairs_per_epoch=s.pairs_per_epoch, seed=seed)
        pl.seed_everything(seed, verbose=False)
        encoder = MLP(base.num_features, s.hidden, len(SOURCE_CLASSES), activation="elu", init="he_normal")
        encoder.output.requires_grad_(False)  # the siamese head works on hidden5's features
        model = SiamesePretrainer(encoder, combine="absdiff", lr=s.lr)
        return self.fit("f-pretrain", seed, model, data, max_epochs=s.pretrain_epochs,
                        patience=s.pretrain_patience).net

    def run(self) -> None:
        for seed in self.seeds:
            source = self.pretrain(seed)
            for key in self.variants:
                self.run_variant(key, seed, source)


# ------------------------------------------------------------------------------------------------ report
def pretrain_available() -> bool:
    try:
        from lightning_dnn.pretrain import (  # noqa: F401
            Autoencoder,
            PairDataModule,
            SiamesePretrainer,
        )
    except ImportError:
        return False
    return True


ROW_LABELS = {
    "pretrain": "1. pretraining on classes 0-4 (test acc on 0-4)",
    "pretrain-zoo": f"1. zoo:{ZOO_NAME}, not trained here (test acc on 0-4)",
    "e-pretrain": "e. autoencoder pretraining (no labels)",
    "f-pretrain": "f. siamese pretraining on pairs of 0-4",
}


def table(study: Study) -> compare.Table:
    rows = []
    for name, runs in study.outcomes.items():
        label = ROW_LABELS.get(name, f"{name}. {VARIANTS.get(name, name)}")
        accs = [r.test_acc for r in runs]
        acc = "—" if all(math.isnan(a) for a in accs) else compare.fmt(accs, 2, percent=True) + " %"
        spread = "" if len(accs) < 2 or math.isnan(accs[0]) else (
            f" [{100 * min(accs):.1f}, {100 * max(accs):.1f}]"
        )
        trained = any(r.epochs for r in runs)
        rows.append([
            label, acc + spread, compare.fmt([float(r.best_epoch) for r in runs], 1) if trained else "—",
            compare.fmt([r.epoch_seconds for r in runs], 3) if trained else "—",
            compare.fmt([r.total_seconds for r in runs], 1) if trained else "—",
        ])
    header = ["step / variant", "test accuracy (mean ± std [min, max])", "epochs to best", "s / epoch",
              "total s"]
    return compare.Table(header, rows)


def plot(study: Study, path: Path) -> None:
    fig, axes = compare.figure(2, f"Classes 5-9 from {study.settings.per_class} labels per class "
                                  f"({study.settings.dataset})")
    for i, key in enumerate(k for k in VARIANTS if k in study.outcomes):
        runs = study.outcomes[key]
        for ax, metric in zip(axes, ("val_acc", "val_loss"), strict=True):
            curves = [[row.get(metric, math.nan) for row in r.history] for r in runs]
            x = range(1, compare.stack(curves).shape[1] + 1)
            compare.band(ax, x, curves, f"{key}: {VARIANTS[key]}", color=f"C{i}")
    compare.epochs_axis(axes[0], "validation accuracy", "validation accuracy (best weights restored at the end)")
    compare.epochs_axis(axes[1], "validation loss", "validation loss")
    axes[0].legend(fontsize=7, loc="lower right")
    spread = "line: mean over seeds; band: min-max" if len(study.seeds) > 1 else "one seed"
    fig.text(0.5, 0.01, spread, ha="center", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)


def write_outputs(study: Study, command: str, seconds: float, skipped: Sequence[str]) -> None:
    study.out.mkdir(parents=True, exist_ok=True)
    plot(study, study.out / "transfer_study.png")
    s = study.settings
    data = study.target_data(study.seeds[0])
    data.setup()
    n = {split: len(data.tensors(split)[1]) for split in ("train", "val", "test")}  # type: ignore[arg-type]
    lines = [
        f"### Transfer study: classes 0-4 -> 5-9 ({s.dataset})", "",
        f"Target task: {n['train']} labelled training images ({s.per_class} per class), {n['val']} validation, "
        f"{n['test']} test images of classes 5-9. Network: MLP {'x'.join(map(str, s.hidden))} ELU, He init, "
        f"Adam lr {s.lr:g} (a new head alone on frozen features: {s.head_lr:g}), batch {s.batch}; early "
        f"stopping on {s.monitor} (patience {s.patience}; the source network: {s.source_monitor}, patience "
        f"{s.source_patience}) restoring the "
        f"best weights. Seeds {' '.join(map(str, study.seeds))}; {study.world_size} process(es) on "
        f"{study.accelerator}, {torch.get_num_threads()} torch thread(s). Time per epoch: training only "
        "(wall clock); total: the whole fit including cache builds and validation.", "",
        table(study).markdown(), "",
    ]
    if skipped:
        lines += [f"Not run: {', '.join(skipped)} (lightning_dnn.pretrain is not installed).", ""]
    lines += [f"Command: `{command}`; wall time {seconds:.0f} s.", "", "![learning curves](transfer_study.png)"]
    (study.out / "transfer_study.md").write_text("\n".join(lines) + "\n")
    payload = {name: [r.row() for r in runs] for name, runs in study.outcomes.items()}
    (study.out / "results.json").write_text(json.dumps(payload, indent=1))


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "fashion-mnist", "mnist"], default="digits")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the four IDX files")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    parser.add_argument("--out", type=Path, default=None, help="default: docs/transfer_study (digits: "
                        "transfer_study_out)")
    parser.add_argument("--tiny", action="store_true", help="digits, tiny network, 3 epochs (tests)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help="default: all (e and f when lightning_dnn.pretrain is installed)")
    parser.add_argument("--pretrained", choices=["self", "zoo"], default="self",
                        help=f"step 1: train the source network here, or use zoo:{ZOO_NAME} (Fashion-MNIST)")
    parser.add_argument("--trainer.accelerator", dest="accelerator", default="cpu")
    parser.add_argument("--trainer.strategy", dest="strategy", default="auto")
    parser.add_argument("--trainer.devices", dest="devices", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args(argv)
    if args.tiny and args.dataset != "digits":
        parser.error(f"--tiny runs on the digits only, got --dataset {args.dataset}")
    if args.pretrained == "zoo" and (args.dataset != "fashion-mnist" or args.tiny):
        parser.error(f"--pretrained zoo needs --dataset fashion-mnist (zoo:{ZOO_NAME}), got {args.dataset}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    return args


def main(argv: Sequence[str] | None = None) -> Study:
    args = parse_args(argv)
    compare.quiet()
    torch.set_num_threads(args.threads)
    variants = args.variants or list(VARIANTS)
    skipped: list[str] = []
    if not pretrain_available():
        if args.variants and set(args.variants) & set(PRETRAINED_VARIANTS):
            raise SystemExit("variants e and f need lightning_dnn.pretrain, which is not installed")
        skipped = [k for k in variants if k in PRETRAINED_VARIANTS]
        variants = [k for k in variants if k not in PRETRAINED_VARIANTS]
        logging.warning("lightning_dnn.pretrain is not available: variants %s are not run", skipped)
    default_out = Path("docs/transfer_study") if args.dataset == "fashion-mnist" else Path("transfer_study_out")
    study = Study(
        settings_for(args.dataset, args.tiny), list(range(args.seeds)), args.out or default_out,
        data_dir=args.data_dir, accelerator=args.accelerator, strategy=args.strategy, devices=args.devices,
        pretrained=args.pretrained, variants=variants,
    )
    start = time.perf_counter()
    study.run()
    seconds = time.perf_counter() - start
    if rank_zero_only.rank == 0:
        command = shlex.join(["python", "examples/transfer_study.py", *(sys.argv[1:] if argv is None else argv)])
        write_outputs(study, command, seconds, skipped)
        print(table(study).markdown())
        print(f"\nwrote {study.out / 'transfer_study.md'} and {study.out / 'transfer_study.png'}")
    return study


if __name__ == "__main__":
    main()
