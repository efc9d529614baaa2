"""Plot bench/results_config*.json (issue 3's results table) as bench/results.png: per-seed test accuracy.

    python -m bench.plot_results
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent


def main() -> None:
    runs: dict[str, dict[str, list[float]]] = {}
    for path in sorted(HERE.glob("results_config*.json")):
        runs.update(json.loads(path.read_text())["results"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, res in enumerate(runs.values()):
        for j, (impl, color) in enumerate((("plain", "tab:gray"), ("ours", "tab:blue"))):
            xs = [i + (j - 0.5) * 0.3] * len(res[impl])
            ys = [100 * v for v in res[impl]]
            ax.scatter(xs, ys, color=color, label=("plain PyTorch" if impl == "plain" else "lightning-dnn") if i == 0 else None)
            ax.hlines(sum(ys) / len(ys), xs[0] - 0.1, xs[0] + 0.1, color=color)
    ax.set_xticks(range(len(runs)), list(runs))
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("Chapter runs, 20 epochs, 3 seeds (dots) and mean (bars)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "results.png", dpi=100)
    print(HERE / "results.png")


if __name__ == "__main__":
    main()
