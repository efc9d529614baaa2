"""FeatureCache's safety checks and the freeze audit under a real 2-process CPU DDP run (gloo on loopback).

``verify=True`` must agree on every rank and leave the run equal to a single-process live one; a refused cut must
be refused by every rank (no rank left waiting in a collective); the audit run at fit start must read the DDP
wrapper's real settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.ddp_utils import ddp_env, load_script, run_ranks

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]

SCRIPT = Path(__file__).resolve().parent / "_feature_cache_safety_ddp_script.py"


def ranks(tmp_path: Path, scenario: str) -> None:
    env = ddp_env()
    run_ranks(
        [
            (
                [sys.executable, str(SCRIPT), str(tmp_path), scenario],
                {**env, "LOCAL_RANK": str(r), "NODE_RANK": "0"},
            )
            for r in (0, 1)
        ]
    )


def test_verify_agrees_across_ranks_and_the_audit_reads_the_ddp_wrapper(tmp_path: Path) -> None:
    ranks(tmp_path, "verify")
    load_script(SCRIPT).run(tmp_path, 1, "verify", cached=False)
    rank0, rank1, live = (
        torch.load(tmp_path / name, weights_only=False)
        for name in (
            "verify-cached-devices2-rank0.pt",
            "verify-cached-devices2-rank1.pt",
            "verify-live-devices1-rank0.pt",
        )
    )
    assert (rank0["world_size"], rank1["world_size"]) == (2, 2)
    assert rank0["boundary"] == rank1["boundary"] == rank0["cut"] == "net.trunk.hidden2"
    for key, ref in live["state"].items():
        assert torch.equal(rank0["state"][key], rank1["state"][key]), f"replicas differ: {key}"
        torch.testing.assert_close(rank0["state"][key], ref, rtol=0, atol=1e-6, msg=key)
    # the audit ran inside DDP: a fact, not an "under DDP" conditional; the frozen batch norm stays in eval mode
    # (kept by LayerFreezer), so no sentence about batch statistics. hidden1/2: 10*12 + 24 + 12*12 + 24 scalars
    assert rank0["ddp"] == [
        "6 frozen parameter tensors (312 scalars) are not in the gradient buckets: DDP registers the parameters "
        "that require grad when it wraps the model, so one unfrozen later is not averaged by DDP (LayerFreezer "
        "averages those itself)"
    ]


def test_a_refused_cut_is_refused_by_every_rank(tmp_path: Path) -> None:
    ranks(tmp_path, "refuse")
    for rank in (0, 1):
        result = torch.load(tmp_path / f"refuse-rank{rank}.pt", weights_only=False)
        assert "depends on trainable parameters the frozen modules do not hold: net.shift" in result["error"]
        # the audit read the wrapper's buffer setting (off): the head's batch norm statistics diverge across ranks
        assert "net.output.0" in result["ddp"][1] and "diverge across ranks" in result["ddp"][1]
