"""LayerFreezer and EarlyStopping under a real 2-process CPU DDP run (gloo on loopback).

DDP all-reduces only the parameters that required grad when it wrapped the model; hidden2/hidden3 are frozen then
and unfrozen later. The replicas must stay bit-identical and match a single-process run with the same global
batch, epoch by epoch, and EarlyStopping(store="disk") must restore the same best epoch on every rank.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.ddp_utils import run_ddp_script

pytestmark = pytest.mark.ddp

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "_freezing_ddp_script.py"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_unfreezing_under_ddp_keeps_replicas_identical_and_equal_to_one_process(tmp_path: Path) -> None:
    script = run_ddp_script(SCRIPT, tmp_path)
    script.run(tmp_path, devices=1)
    initial = script.Net().state_dict()

    rank0, rank1, single = (
        torch.load(tmp_path / name, weights_only=False)
        for name in ("devices2-rank0.pt", "devices2-rank1.pt", "devices1-rank0.pt")
    )
    assert (rank0["world_size"], rank1["world_size"], single["world_size"]) == (2, 2, 1)
    groups = [None, "unfrozen-epoch1", "unfrozen-epoch2"]
    assert rank0["groups"] == rank1["groups"] == single["groups"] == groups
    assert len(rank0["epochs"]) == len(single["epochs"]) == 3

    for epoch, (a, b, ref) in enumerate(zip(rank0["epochs"], rank1["epochs"], single["epochs"], strict=True)):
        for key in ref:
            assert torch.equal(a[key], b[key]), f"replicas differ at epoch {epoch}: {key}"
            torch.testing.assert_close(a[key], ref[key], rtol=0, atol=1e-6, msg=f"epoch {epoch}: {key}")

    # hidden1 (and its batch-norm statistics) never moves; hidden3 trains from epoch 1, hidden2 from epoch 2.
    for state in (*single["epochs"], *rank0["epochs"], rank0["final"], rank1["final"]):
        for key in initial:
            if key.startswith("net.hidden1."):
                assert torch.equal(state[key], initial[key]), key
    e0, e1, e2 = single["epochs"]
    assert torch.equal(e0["net.hidden3.0.weight"], initial["net.hidden3.0.weight"])
    assert not torch.equal(e0["net.hidden3.0.weight"], e1["net.hidden3.0.weight"])
    assert torch.equal(e1["net.hidden2.0.weight"], e0["net.hidden2.0.weight"])
    assert not torch.equal(e1["net.hidden2.0.weight"], e2["net.hidden2.0.weight"])

    # EarlyStopping restored epoch 1 (the best score) on both ranks, from the file rank 0 wrote.
    for result in (rank0, rank1, single):
        for key, value in result["epochs"][1].items():
            assert torch.equal(result["final"][key], value), key
