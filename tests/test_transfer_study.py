"""examples/transfer_study.py in its tiny mode (embedded digits): the table, the plot, and what each variant does."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from tests.ddp_utils import REPO, ddp_env

SCRIPT = REPO / "examples" / "transfer_study.py"
HIDDEN = [f"hidden{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def ts() -> ModuleType:
    """The script as a module (registered in sys.modules first: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location("transfer_study_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study_and_source(ts: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, nn.Module]:
    tmp = tmp_path_factory.mktemp("study")
    study = ts.Study(ts.settings_for("digits", tiny=True), [0], tmp / "out", workdir=tmp / "work")
    return study, study.pretrain(0)


def _tensors(net: nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if k.split(".")[0] in layers}


def _fresh_net(ts: ModuleType, study: object, seed: int) -> nn.Module:
    """The network a variant starts from before any reuse (the study seeds right before building it)."""
    pl.seed_everything(seed, verbose=False)
    return study.network(64)  # type: ignore[attr-defined]


def test_tiny_mode_writes_a_table_with_every_variant_and_a_plot(ts: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "out"
    study = ts.main(["--tiny", "--seeds", "2", "--out", str(out)])
    expected = list(ts.VARIANTS) if ts.pretrain_available() else ["a", "b", "c", "d"]
    assert study.variants == expected
    table = (out / "transfer_study.md").read_text()
    for key in expected:
        row = re.search(rf"^\| {key}\. [^|]+\| (\d+\.\d+) ± (\d+\.\d+) % \[", table, re.MULTILINE)
        assert row, (key, table)
        assert 0.0 <= float(row.group(1)) <= 100.0
    assert "1. pretraining on classes 0-4" in table
    results = json.loads((out / "results.json").read_text())
    for key in ["pretrain", *expected]:
        runs = results[key]
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert 1 <= r["best_epoch"] <= r["epochs"] == len(r["val_acc"])
            assert r["total_seconds"] > 0 and r["epoch_seconds"] > 0
    # the table's accuracy is the mean over seeds of the json's
    mean = sum(r["test_acc"] for r in results["a"]) / 2
    assert f"| a. from scratch | {100 * mean:.2f} ±" in table
    png = out / "transfer_study.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_b_trains_only_the_new_head(ts: ModuleType, study_and_source: tuple[object, nn.Module]) -> None:
    study, source = study_and_source
    initial_head = _tensors(_fresh_net(ts, study, 0), ["output"])
    outcome = study.run_variant("b", 0, source)  # type: ignore[attr-defined]
    assert sorted({n.split(".")[0] for n in outcome.report.loaded}) == HIDDEN
    pretrained, trained = _tensors(source, HIDDEN), _tensors(outcome.net, HIDDEN)
    assert pretrained.keys() == trained.keys() and pretrained
    for name, value in pretrained.items():
        assert torch.equal(trained[name], value), name  # bit for bit
    head = _tensors(outcome.net, ["output"])
    assert all(not torch.equal(head[k], initial_head[k]) for k in head)
    assert outcome.trainable == [["output"]] * outcome.epochs


def test_c_loads_exactly_hidden1_to_3_and_trains_new_hidden4_5(
    ts: ModuleType, study_and_source: tuple[object, nn.Module]
) -> None:
    study, source = study_and_source
    fresh = _tensors(_fresh_net(ts, study, 0), ["hidden4", "hidden5", "output"])
    outcome = study.run_variant("c", 0, source)  # type: ignore[attr-defined]
    report = outcome.report
    assert report.loaded == [f"hidden{i}.linear.{t}" for i in (1, 2, 3) for t in ("weight", "bias")]
    assert sorted(report.skipped) == sorted(
        f"{m}.linear.{t}" for m in ("hidden4", "hidden5", "output") for t in ("weight", "bias")
    )
    assert not (report.missing or report.unexpected or report.mismatched)
    trained = outcome.net.state_dict()
    for name, value in _tensors(source, ["hidden1", "hidden2", "hidden3"]).items():
        assert torch.equal(trained[name], value), name
    for name, value in fresh.items():  # new layers: not the source's, trained away from their init
        assert not torch.equal(trained[name], value), name
    assert outcome.trainable == [["hidden4", "hidden5", "output"]] * outcome.epochs


def test_d_unfreezes_hidden4_5_at_the_milestone_with_the_lower_lr(
    ts: ModuleType, study_and_source: tuple[object, nn.Module]
) -> None:
    study, source = study_and_source
    s = study.settings  # type: ignore[attr-defined]
    assert s.unfreeze_epoch == 1 and s.epochs == 3
    outcome = study.run_variant("d", 0, source)  # type: ignore[attr-defined]
    assert outcome.epochs >= s.unfreeze_epoch + 1  # min_epochs: early stopping cannot end the head phase
    assert outcome.trainable[0] == ["output"]
    for epoch in range(s.unfreeze_epoch, outcome.epochs):
        assert outcome.trainable[epoch] == ["hidden4", "hidden5", "output"]
    head_group = [(None, s.head_lr, 2)]
    assert outcome.groups[0] == head_group
    for groups in outcome.groups[s.unfreeze_epoch:]:
        assert groups[0] == head_group[0]
        name, lr, n_params = groups[1]
        assert (name, n_params) == (f"unfrozen-epoch{s.unfreeze_epoch}", 4)
        assert lr == pytest.approx(s.lr * s.unfrozen_lr_factor, rel=1e-12)
        assert lr < s.head_lr
    for name, value in _tensors(source, ["hidden1", "hidden2", "hidden3"]).items():
        assert torch.equal(outcome.net.state_dict()[name], value), name


def test_bad_arguments_are_refused(ts: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ts.parse_args(["--tiny", "--dataset", "fashion-mnist"])
    assert "--tiny runs on the digits only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ts.parse_args(["--pretrained", "zoo"])
    assert "--pretrained zoo needs --dataset fashion-mnist" in capsys.readouterr().err
    study = ts.Study(ts.settings_for("fashion-mnist", False), [0], tmp_path, data_dir=tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="--dataset fashion-mnist: no Fashion-MNIST files under"):
        study.source_data(0)
    study = ts.Study(ts.settings_for("digits", True), [0], tmp_path, strategy="ddp", devices=3)
    with pytest.raises(ValueError, match="global batch size 32 must divide by the number of processes 3"):
        study.source_data(0)


@pytest.mark.ddp
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_process_ddp_equals_one_process(ts: ModuleType, tmp_path: Path) -> None:
    args = ["--tiny", "--seeds", "1", "--variants", "a", "b", "c", "d"]
    ddp = [sys.executable, str(SCRIPT), *args, "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    proc = subprocess.run([*ddp, "--out", str(tmp_path / "ddp")], env=ddp_env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ts.main([*args, "--out", str(tmp_path / "one")])  # the single-process reference, in this process
    runs = {label: json.loads((tmp_path / label / "results.json").read_text()) for label in ("one", "ddp")}
    one, ddp = runs["one"], runs["ddp"]
    assert one.keys() == ddp.keys() == {"pretrain", "a", "b", "c", "d"}
    for name in ("pretrain", "a", "b", "c", "d"):
        (r1,), (r2,) = one[name], ddp[name]
        assert r1["epochs"] == r2["epochs"], name
        # the same global batches (interleaved shards of one permutation, batch / 2 per process, no short last
        # batch): the runs agree up to float rounding (a wrong batch split or a rank-local metric would not)
        assert r2["val_loss"] == pytest.approx(r1["val_loss"], abs=1e-4), name
        assert r2["val_acc"] == pytest.approx(r1["val_acc"], abs=0.01), name
        assert abs(r1["test_acc"] - r2["test_acc"]) <= 0.006, (name, r1["test_acc"], r2["test_acc"])
