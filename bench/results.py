"""Issue 3's results table: configs 1 and 2 on full Fashion-MNIST (60k/10k), ours vs. a plain-PyTorch baseline.

"ours" runs the example config through the CLI code path (``DNNCLI`` with ``examples/configs/<name>.yaml``);
"plain" is the hand-written loop in bench/plain_pytorch.py. Each over the same seeds; prints a markdown table of
mean and spread (sample std, min-max) of the final test accuracy and writes bench/results.json.

    python -m bench.results [--seeds 0 1 2] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from bench import plain_pytorch as raw
from lightning_dnn.cli import DNNCLI

HERE = Path(__file__).resolve().parent

CONFIGS = {"1": ("tf1_notebook", raw.CONFIG1), "2": ("chapter_defaults", raw.CONFIG2)}


def run_ours(name: str, seed: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        cli = DNNCLI(
            args=[
                "--config", str(HERE.parent / "examples" / "configs" / f"{name}.yaml"),
                "--seed_everything", str(seed),
                "--data.init_args.seed", str(seed),
                "--data.init_args.root", raw.FASHION_DIR,
                "--trainer.max_epochs", str(epochs),
                "--trainer.default_root_dir", root,
                "--trainer.enable_progress_bar", "false",
                "--trainer.logger", "false",
                "--trainer.enable_model_summary", "false",
            ],
            run=False,
        )
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return float(cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test_acc"])


def summary(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f}% ± {100 * std:.2f} (min {100 * min(values):.2f}, max {100 * max(values):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--configs", nargs="+", default=["1", "2"], choices=sorted(CONFIGS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = raw.load_fashion()
    results: dict[str, dict[str, list[float]]] = {}
    for key in a.configs:
        name, cfg = CONFIGS[key]
        cfg = replace(cfg, epochs=a.epochs)
        res = results.setdefault(name, {"ours": [], "plain": []})
        for seed in a.seeds:
            res["plain"].append(raw.run(cfg, seed, data)["test_acc"])
            res["ours"].append(run_ours(name, seed, a.epochs))
            print(f"config {key} ({name}) seed {seed}: plain {res['plain'][-1]:.4f}  ours {res['ours'][-1]:.4f}",
                  flush=True)
    Path(a.out).write_text(json.dumps({"epochs": a.epochs, "seeds": a.seeds, "results": results}, indent=2))
    print(f"\nFashion-MNIST test accuracy after {a.epochs} epochs, seeds {a.seeds}\n")
    print("| config | plain PyTorch | lightning-dnn |")
    print("|---|---|---|")
    for name, res in results.items():
        print(f"| {name} | {summary(res['plain'])} | {summary(res['ours'])} |")


if __name__ == "__main__":
    main()
