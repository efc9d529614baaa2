"""FeatureCache under a real 2-process CPU DDP run (gloo on loopback).

Each sample's features must be computed once in all (rank r builds samples r, r + 2, ..., an all_gather gives
every rank the full cache, local rank 0 writes it to disk), every rank must serve the indices its shard of each
epoch's permutation asks for, and the result must equal a single-process live run with the same global batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.ddp_utils import run_ddp_script

pytestmark = pytest.mark.ddp

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "_feature_cache_ddp_script.py"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_builds_each_sample_once_and_equals_a_single_process_live_run(tmp_path: Path) -> None:
    script = run_ddp_script(SCRIPT, tmp_path)
    script.run(tmp_path, devices=1, cached=False)

    rank0, rank1, live = (
        torch.load(tmp_path / name, weights_only=False)
        for name in ("cached-devices2-rank0.pt", "cached-devices2-rank1.pt", "live-devices1-rank0.pt")
    )
    assert (rank0["world_size"], rank1["world_size"]) == (2, 2)
    for name in script.TRUNK:  # the trunk processed every sample once across the two ranks, then never again
        assert rank0["counts"][name] + rank1["counts"][name] == script.N
        assert rank0["counts"][name] == rank1["counts"][name] == script.N // 2
    assert rank0["boundary"] == rank1["boundary"] == "net.hidden2"
    assert rank0["storage"] == rank1["storage"] == "disk"
    entries = [p for p in (tmp_path / "fc").iterdir() if (p / "manifest.json").exists()]
    assert len(entries) == 1  # one entry, written by local rank 0
    for key, ref in live["state"].items():
        assert torch.equal(rank0["state"][key], rank1["state"][key]), f"replicas differ: {key}"
        torch.testing.assert_close(rank0["state"][key], ref, rtol=0, atol=1e-6, msg=key)
