"""A sparse classifier with FTRL-Proximal + L1 on scikit-learn's embedded digits (offline, ~10 s on a CPU).

Trains the same 64-100-10 ELU network twice, with Adam and with FTRL(l1), and prints test accuracy and the
fraction of weights that are exactly zero: FTRL's proximal L1 step is what makes them zero.

    python examples/sparse_digits.py
"""

from __future__ import annotations

import argparse
import logging
import warnings

import pytorch_lightning as pl
import torch

from lightning_dnn import MLP, DNNClassifier
from lightning_dnn.data import DigitsDataModule


def train(optimizer: str, optimizer_kwargs: dict[str, float], lr: float, epochs: int, seed: int) -> dict[str, float]:
    pl.seed_everything(seed, verbose=False)
    data = DigitsDataModule(batch_size=32, val_split=0.1, seed=seed)
    net = MLP(data.num_features, (100,), data.num_classes, activation="elu", init="he_normal")
    model = DNNClassifier(net, optimizer=optimizer, lr=lr, optimizer_kwargs=optimizer_kwargs)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=data)
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    return {"test_acc": test["test_acc"], "zero_weights": zeros / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--l1", type=float, default=0.05, help="FTRL's L1 strength")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    torch.set_num_threads(2)
    rows = {
        "Adam (dense)": train("adam", {}, 1e-3, args.epochs, args.seed),
        f"FTRL + L1={args.l1} (sparse)": train("ftrl", {"l1": args.l1}, 0.5, args.epochs, args.seed),
    }
    print(f"\n{'run':<28} {'test accuracy':>14} {'zero weights':>13}")
    for name, r in rows.items():
        print(f"{name:<28} {r['test_acc']:>14.3f} {r['zero_weights']:>12.1%}")


if __name__ == "__main__":
    main()
