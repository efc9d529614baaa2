"""Every script in examples/ runs from a fresh clone in a tiny mode and prints the results it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

#: The tiny-mode arguments of each runnable example; a new example must add itself here (the test below fails
#: until it does), so no example goes untested.
TINY_ARGS: dict[str, list[str]] = {
    "main_job.py": ["--samples-per-class", "5", "--epochs", "2", "--seeds", "0"],
    "finetune_digits.py": ["--samples-per-class", "5", "0", "--epochs", "2", "--seeds", "0"],
    "sparse_digits.py": ["--epochs", "2", "--l1", "0.05"],
    "compare.py": ["all", "--tiny", "--out", "comparisons"],  # relative: lands in the runner's tmp cwd
    "finetune_resnet.py": ["--train-samples", "48", "--test-samples", "16", "--size", "16", "--head-epochs", "1",
                           "--epochs", "2", "--out", "curve.png"],
    "transfer_study.py": ["--tiny", "--seeds", "1", "--out", "transfer_study"],
}

_NUMBER = r"(\d+\.\d+)"


def _run(script: str, tmp_path: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONHASHSEED="0", MPLBACKEND="Agg")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *TINY_ARGS[script]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_every_example_has_a_tiny_mode() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts, "no example scripts found"
    assert sorted(TINY_ARGS) == scripts


@pytest.mark.parametrize(("script", "expected"), [("main_job.py", ["5"]), ("finetune_digits.py", ["5", "all"])])
def test_transfer_examples_print_one_row_per_label_count(script: str, expected: list[str], tmp_path: Path) -> None:
    out = _run(script, tmp_path)
    rows = re.findall(rf"^\s*(\w+) \| +{_NUMBER} \| +{_NUMBER} \| +{_NUMBER} / {_NUMBER}", out, re.MULTILINE)
    assert [r[0] for r in rows] == expected, out
    for _, scratch, reused, t_scratch, t_reused in rows:
        assert 0.0 <= float(scratch) <= 1.0 and 0.0 <= float(reused) <= 1.0
        assert float(t_scratch) > 0 and float(t_reused) > 0
    # five classes: chance is 0.2; the reused frozen layers carry over features from digits 0-4
    assert float(rows[-1][2]) > 0.4, out


def test_sparse_example_reports_exact_zeros_only_for_ftrl(tmp_path: Path) -> None:
    out = _run("sparse_digits.py", tmp_path)
    adam = re.search(rf"Adam \(dense\)\s+{_NUMBER}\s+{_NUMBER}%", out)
    ftrl = re.search(rf"FTRL \+ L1=0\.05 \(sparse\)\s+{_NUMBER}\s+{_NUMBER}%", out)
    assert adam and ftrl, out
    assert float(adam.group(2)) == 0.0  # a dense optimizer never lands exactly on zero
    assert float(ftrl.group(2)) > 0.0  # FTRL's L1 sets weights to exact zeros
    assert 0.0 <= float(adam.group(1)) <= 1.0 and 0.0 <= float(ftrl.group(1)) <= 1.0


def test_finetune_resnet_caches_the_head_then_unfreezes_top_down(tmp_path: Path) -> None:
    out = _run("finetune_resnet.py", tmp_path)
    rows = re.findall(r"^\s*(\d+) \| (\S+)\s+\| (\S+)\s+\|\s+(\d+\.\d+) \|\s+(\d+\.\d+)", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["0", "1"], out
    # head first on features cached at layer4's output, then layer4 unfrozen: the cache moves down to layer3
    assert (rows[0][1], rows[0][2]) == ("fc", "net.layer4"), out
    assert (rows[1][1], rows[1][2]) == ("fc,layer4", "net.layer3"), out
    accuracy = re.search(r"test accuracy: (\d\.\d+)", out)
    assert accuracy and 0.0 <= float(accuracy.group(1)) <= 1.0
    assert (tmp_path / "curve.png").stat().st_size > 1000
