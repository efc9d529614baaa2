"""Reuse pretrained lower layers from the zoo (the chapter's transfer study, offline on the embedded digits data).

The zoo's ``digits-mlp-classes0-4`` network was trained on digits 0-4. We pull its hidden layers, freeze them,
and train a new output layer for digits 5-9 -- with few labels per class, where reuse matters most -- against
the same network trained from scratch. The frozen run trains the head on cached outputs of the frozen layers
(:class:`~lightning_dnn.callbacks.FeatureCache`), so after the first pass an epoch never touches the lower layers.

    python examples/finetune_digits.py [--samples-per-class 10] [--epochs 60] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch

from lightning_dnn import DNNClassifier, LayerFreezer
from lightning_dnn.callbacks import FeatureCache
from lightning_dnn.data import DigitsDataModule
from lightning_dnn.hub import load_pretrained
from lightning_dnn.nn import MLP

ZOO_NAME = "digits-mlp-classes0-4"
REUSE = "hidden1"  # the lower layer(s) to reuse and freeze; upper hidden layers and the head train anew


def run(kind: str, samples_per_class: int | None, epochs: int, seed: int) -> tuple[float, float]:
    """Train one variant; return (test accuracy on digits 5-9, fit seconds)."""
    pl.seed_everything(seed, verbose=False)
    data = DigitsDataModule(classes=[5, 6, 7, 8, 9], samples_per_class=samples_per_class, batch_size=16, seed=seed)
    pretrained, _ = load_pretrained(f"zoo:{ZOO_NAME}")
    config = dict(pretrained.config, out_features=data.num_classes)  # same architecture, a new 5-way head
    net = MLP.from_config(config)
    callbacks: list[pl.Callback] = []
    lr = 1e-2
    if kind != "scratch":
        load_pretrained(f"zoo:{ZOO_NAME}", include=REUSE, into=net)  # the lower layers; the rest stays new
        callbacks = [LayerFreezer(REUSE), FeatureCache()]
    model = DNNClassifier(net, optimizer="adam", lr=lr)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - t0
    return float(trainer.test(model, datamodule=data, verbose=False)[0]["test_acc"]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-per-class", type=int, nargs="+", default=[5, 20, 0],
                        help="labelled training samples per class (0: all of them)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning_dnn"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # tiny networks: one thread avoids oversubscription
    print(f"Digits 5-9 with the hidden layers of zoo:{ZOO_NAME} (trained on digits 0-4), "
          f"{args.epochs} epochs, mean over seeds {args.seeds}\n")
    print(f"{'labels per class':>16} | {'from scratch':>12} | {'reused + frozen + cached':>24} | {'fit s (scratch / reused)':>24}")
    print(f"{'-' * 16}-+-{'-' * 12}-+-{'-' * 24}-+-{'-' * 24}")
    for n in args.samples_per_class:
        per_class = n or None
        scratch = [run("scratch", per_class, args.epochs, s) for s in args.seeds]
        reused = [run("reused", per_class, args.epochs, s) for s in args.seeds]
        acc_s = statistics.mean(a for a, _ in scratch)
        acc_r = statistics.mean(a for a, _ in reused)
        t_s = statistics.mean(t for _, t in scratch)
        t_r = statistics.mean(t for _, t in reused)
        print(f"{n or 'all':>16} | {acc_s:>12.3f} | {acc_r:>24.3f} | {t_s:>11.1f} / {t_r:<10.1f}")


if __name__ == "__main__":
    main()
