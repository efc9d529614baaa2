"""examples/compare.py: each comparison runs in tiny mode, writing a PNG and a table of the expected variants.

Tiny mode uses scikit-learn's embedded digits, so these tests need no download and always run.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: Each comparison's tables, as their first-column labels, in order.
EXPECTED: dict[str, list[list[str]]] = {
    "activations": [
        [
            "ELU",
            "leaky ReLU (0.2)",
            "RReLU",
            "PReLU",
            "ReLU",
            "tanh",
            "logistic",
            "SELU",
            "SELU + alpha dropout",
        ]
    ],
    "init": [
        [
            "torch default (U(±1/sqrt(fan_in)))",
            "Glorot (fan_avg, scale 1)",
            "LeCun (fan_in, scale 1)",
            "He (fan_in, scale 2)",
            "He (fan_avg, scale 2)",
        ]
    ],
    "batchnorm": [
        [
            "ELU",
            "ELU + BN",
            "logistic",
            "logistic + BN",
            "tanh",
            "tanh + BN",
            "ELU, lr x10",
            "ELU + BN, lr x10",
        ]
    ],
    "clipping": [
        ["no clipping, lr 0.2", "clip by value 1.0", "clip by norm 1.0", "no clipping, lr 0.01 (reference)"]
    ],
    "optimizers": [
        [
            "GD (lr 0.01)",
            "momentum 0.9 (lr 0.01)",
            "Nesterov 0.9 (lr 0.01)",
            "AdaGrad (lr 0.01)",
            "RMSProp (lr 0.001, rho 0.9)",
            "Adam (lr 0.001)",
            "FTRL (lr 0.1)",
            "FTRL (lr 0.01, accumulator 1e-6)",
        ],
        [
            "Adam (lr 0.001)",
            "FTRL (lr 0.1)",
            "Adam + L1 1e-4",
            "Adam + L1 1e-3",
            "FTRL + L1 0.001",
            "FTRL + L1 0.01",
            "FTRL + L1 0.03",
        ],
    ],
    "schedules": [
        [
            "constant",
            "piecewise constant (x0.1 at 50%, 75%)",
            "performance (x0.5, patience 1)",
            "exponential (x0.1 over the run)",
            "power (c 1, s 1 epoch)",
        ]
    ],
    "regularization": [
        [
            "none",
            "L1 1e-4",
            "L2 1e-3",
            "dropout 0.2",
            "max-norm 1.0",
            "data augmentation",
            "early stopping (patience 2)",
        ]
    ],
}

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|nan")


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_example", EXAMPLES / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every comparison run once, in tiny mode, in this process (a few seconds each)."""
    out = tmp_path_factory.mktemp("comparisons")
    compare = _load_example()
    assert list(compare.COMPARISONS) == list(EXPECTED)
    # the script quiets Lightning's and our loggers for its own run: keep that from leaking into later tests
    names = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning_dnn", "")
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    with warnings.catch_warnings():
        compare.main(["all", "--tiny", "--out", str(out)])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers
    return out


def _tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """Each markdown table as (header cells, rows of cells)."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    block: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            assert set(block[1][0]) == {"-"}, block  # the separator line
            tables.append((block[0], block[2:]))
            block = []
    return tables


def _numbers(cell: str) -> list[float]:
    return [float(v) for v in _NUMBER.findall(cell)]


def _check_cell(column: str, cell: str) -> None:
    values = _numbers(cell)
    if column.startswith("diverged"):
        assert re.fullmatch(r"\d+/\d+", cell), (column, cell)
        return
    finite = [v for v in values if not math.isnan(v)]
    if column in ("test acc", "train acc", "val acc"):
        assert finite and len(finite) == len(values), (column, cell)  # always a number, never nan
    if "acc" in column and "gap" not in column:
        assert all(0.0 <= v <= 1.0 for v in finite), (column, cell)
    elif "gap" in column:
        assert all(-1.0 <= v <= 1.0 for v in finite), (column, cell)
    elif "%" in column:
        assert all(0.0 <= v <= 100.0 for v in finite), (column, cell)
    elif "loss" in column or "s/epoch" in column or "Var" in column or "lr" in column:
        assert all(v >= 0.0 for v in finite), (column, cell)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_tiny_comparison_writes_a_plot_and_a_table_of_its_variants(outputs: Path, name: str) -> None:
    png = outputs / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    report = (outputs / f"{name}.md").read_text()
    assert "![" in report and f"({name}.png)" in report
    assert f"Command: `python examples/compare.py {name} --tiny`" in report
    tables = _tables(report)
    assert [[row[0] for row in rows] for _, rows in tables] == EXPECTED[name]
    for header, rows in tables:
        assert "test acc" in header, header
        for row in rows:
            assert len(row) == len(header), row
            for column, cell in zip(header[1:], row[1:], strict=True):
                _check_cell(column, cell)


def test_sparsity_table_counts_exact_zeros(outputs: Path) -> None:
    """A dense optimizer (Adam, even with an L1 penalty) never lands exactly on zero; FTRL's L1 does."""
    _, sparsity = _tables((outputs / "optimizers.md").read_text())[1]
    zeros = {row[0]: _numbers(row[1])[0] for row in sparsity}
    assert zeros["Adam (lr 0.001)"] == zeros["Adam + L1 1e-4"] == zeros["Adam + L1 1e-3"] == 0.0
    assert 0.0 < zeros["FTRL + L1 0.001"] <= zeros["FTRL + L1 0.03"]


def test_command_line_runs_a_comparison_with_seeds_and_epochs(tmp_path: Path) -> None:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0")
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "compare.py"),
            "schedules",
            "--tiny",
            "--seeds",
            "0",
            "1",
            "--out",
            "out",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "out" / "schedules.md").read_text()
    assert "seeds 0 1" in report and "--seeds 0 1" in report
    assert " ± " in report  # two seeds: mean ± std
    assert (tmp_path / "out" / "schedules.png").stat().st_size > 10_000
