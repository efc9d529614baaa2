"""Metric-driven LayerFreezer steps with restore-best under a real 2-process CPU DDP run (gloo on loopback).

Each rank logs a different score; the decision is rank 0's, so both ranks advance at the same epochs, restore the
same best weights and stay bit-identical, and match a single-process run with the same global batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.ddp_utils import run_ddp_script

pytestmark = pytest.mark.ddp

SCRIPT = Path(__file__).resolve().parent / "_freezing_phases_ddp_script.py"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_metric_steps_and_restore_best_keep_ddp_replicas_identical(tmp_path: Path) -> None:
    script = run_ddp_script(SCRIPT, tmp_path)
    script.run(tmp_path, devices=1)
    initial = script.Net().state_dict()
    rank0, rank1, single = (
        torch.load(tmp_path / name, weights_only=False)
        for name in ("devices2-rank0.pt", "devices2-rank1.pt", "devices1-rank0.pt")
    )
    assert (rank0["world_size"], rank1["world_size"], single["world_size"]) == (2, 2, 1)
    # rank 1's own scores never plateau: it advanced at rank 0's epochs
    assert rank0["applied"] == rank1["applied"] == single["applied"] == [4, 7]
    assert (
        rank0["groups"] == rank1["groups"] == single["groups"] == [None, "unfrozen-step1", "unfrozen-step2"]
    )

    for epoch, (a, b, ref) in enumerate(zip(rank0["epochs"], rank1["epochs"], single["epochs"], strict=True)):
        for key in ref:
            assert torch.equal(a[key], b[key]), f"replicas differ at epoch {epoch}: {key}"
            torch.testing.assert_close(a[key], ref[key], rtol=0, atol=1e-6, msg=f"epoch {epoch}: {key}")

    for result in (rank0, rank1, single):
        states = result["epochs"]
        # the plateaus at epochs 3 and 6 restored the weights of epochs 1 and 4 (bit for bit, BN statistics too)
        for epoch, best in ((3, 1), (6, 4)):
            for key, value in states[best].items():
                assert torch.equal(states[epoch][key], value), (epoch, key)
        # hidden3 never moved before epoch 4, hidden2 before epoch 7; hidden1 never
        for key in initial:
            if key.startswith("net.hidden1."):
                assert torch.equal(states[-1][key], initial[key]), key
        assert torch.equal(states[3]["net.hidden3.0.weight"], initial["net.hidden3.0.weight"])
        assert not torch.equal(states[4]["net.hidden3.0.weight"], initial["net.hidden3.0.weight"])
        assert torch.equal(states[6]["net.hidden2.0.weight"], initial["net.hidden2.0.weight"])
        assert not torch.equal(states[7]["net.hidden2.0.weight"], initial["net.hidden2.0.weight"])
