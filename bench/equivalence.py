"""Identical-RNG check: DNNClassifier + Trainer against the plain-PyTorch loop of bench/plain_pytorch.py.

Both start from the same weights (ours, copied into the plain ``nn.Sequential``), see the same batches in the same
order (the data module's per-epoch permutation) and draw the same dropout masks (the global RNG reseeded right
before the first step). If the two loops do the same arithmetic, their weights stay equal step for step and they
end at the same test accuracy; a gap between "ours" and "plain" in bench/results.py is then the seeds' spread
(other init draws, batch orders and dropout masks), not a difference between the implementations.

    python -m bench.equivalence [--config 2] [--seeds 0 1 2] [--epochs 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import warnings
from dataclasses import replace

import pytorch_lightning as pl
import torch

from bench import plain_pytorch as raw
from lightning_dnn import MLP, DNNClassifier
from lightning_dnn.data import FashionMNISTDataModule


class _Reseed(pl.Callback):
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.manual_seed(self.seed)  # the dropout masks' stream, as the plain loop reseeds it


def our_net(cfg: raw.RunConfig) -> MLP:
    return MLP(784, cfg.hidden, 10, activation=cfg.activation, norm="batch" if cfg.batch_norm else None,
               output_norm=cfg.output_norm, bn_momentum=cfg.bn_momentum, dropout=cfg.dropout, init="he_normal")


def run(cfg: raw.RunConfig, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    net = our_net(cfg)
    plain = raw.build_net(cfg)
    ours_state, plain_state = net.state_dict(), plain.state_dict()
    assert [t.shape for t in ours_state.values()] == [t.shape for t in plain_state.values()]
    plain.load_state_dict(dict(zip(plain_state, [t.clone() for t in ours_state.values()], strict=True)))

    data = FashionMNISTDataModule(raw.FASHION_DIR, download=False, batch_size=cfg.batch_size, seed=seed)
    data.setup("fit")
    loader = data.train_dataloader()
    xtr, ytr = loader.tensors[0], loader.tensors[1]
    orders = [loader.sampler.indices(epoch) for epoch in range(cfg.epochs)]

    model = DNNClassifier(net, optimizer=cfg.optimizer, lr=cfg.lr)
    trainer = pl.Trainer(max_epochs=cfg.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[_Reseed(10_000 + seed)])
    trainer.fit(model, datamodule=data)

    opt = raw.make_optimizer(cfg, plain.parameters())
    torch.manual_seed(10_000 + seed)
    for order in orders:
        raw.train_epoch(plain, opt, xtr, ytr, cfg.batch_size, None, order=order)

    diff = max((a - b).abs().max().item() for a, b in zip(net.state_dict().values(), plain.state_dict().values(),
                                                            strict=True) if a.is_floating_point())
    _, _, xte, yte = raw.load_fashion()
    return {"ours": raw.accuracy(net, xte, yte), "plain": raw.accuracy(plain, xte, yte), "max_weight_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=["1", "2"], default="2")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cfg = replace(raw.CONFIG1 if a.config == "1" else raw.CONFIG2, epochs=a.epochs)
    print(f"config {a.config}, {a.epochs} epochs, identical init, batch order and dropout masks\n")
    print("| seed | ours | plain | largest weight difference |")
    print("|---|---|---|---|")
    for seed in a.seeds:
        r = run(cfg, seed)
        print(f"| {seed} | {100 * r['ours']:.2f}% | {100 * r['plain']:.2f}% | {r['max_weight_diff']:.2e} |",
              flush=True)


if __name__ == "__main__":
    main()
