"""Pretraining under DDP: disjoint pair shares that add up to one process's batches; layer-wise phases on 2 ranks."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.ddp_utils import run_ddp_script

pytestmark = pytest.mark.ddp

SCRIPT = Path(__file__).resolve().parent / "_pairs_ddp_script.py"


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Path]:
    """One 2-process DDP run of the script (both fits) and its single-process reference."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("ddp")
    script = run_ddp_script(SCRIPT, out)
    script.run(out, devices=1)
    return script, out


def test_ranks_share_the_pairs_of_one_process(job: tuple[ModuleType, Path]) -> None:
    _, tmp_path = job
    rank0, rank1, single = (
        torch.load(tmp_path / name, weights_only=False)
        for name in ("devices2-rank0.pt", "devices2-rank1.pt", "devices1-rank0.pt")
    )
    assert (rank0["world_size"], rank1["world_size"], single["world_size"]) == (2, 2, 1)
    assert len(rank0["batches"]) == len(rank1["batches"]) == len(single["batches"]) == 8  # 2 epochs x 64/16
    for step, (a, b, ref) in enumerate(
        zip(rank0["batches"], rank1["batches"], single["batches"], strict=True)
    ):
        for k in range(3):  # rank r holds the pairs at positions r, r + 2, ...: interleaved, the global batch
            merged = torch.stack([a[k], b[k]], dim=1).reshape(-1, *a[k].shape[1:])
            assert torch.equal(merged, ref[k]), (step, k)
        assert int(a[2].sum() + b[2].sum()) == int(ref[2].sum())
    epoch0 = torch.cat([b[2] for b in single["batches"][:4]])
    assert int(epoch0.sum()) == 32  # exactly balanced over the epoch
    assert not torch.equal(single["batches"][0][0], single["batches"][4][0])  # new pairs in epoch 1
    for key, ref in single["final"].items():
        assert torch.equal(rank0["final"][key], rank1["final"][key]), key
        torch.testing.assert_close(rank0["final"][key], ref, rtol=0, atol=1e-5, msg=key)


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {".".join(k.split(".")[:2]) for k in a if not torch.equal(a[k], b[k])}


def test_layerwise_phases_under_ddp_leave_the_other_layers_bit_for_bit(job: tuple[ModuleType, Path]) -> None:
    script, tmp_path = job
    initial = script.layerwise_autoencoder().state_dict()
    ranks = [torch.load(tmp_path / f"devices2-rank{r}.pt", weights_only=False)["layerwise"] for r in (0, 1)]
    single = torch.load(tmp_path / "devices1-rank0.pt", weights_only=False)["layerwise"]
    assert len(single) == len(ranks[0]) == 2
    # epoch 0 trains hidden1 + mirror1, epoch 1 hidden2 + mirror2; nothing else moves, on any rank
    for r in (0, 1):
        assert _changed(initial, ranks[r][0]) == {"encoder.hidden1", "decoder.mirror1"}
        assert _changed(ranks[r][0], ranks[r][1]) == {"encoder.hidden2", "decoder.mirror2"}
    for r in (0, 1):
        for key, ref in single[1].items():
            assert torch.equal(ranks[0][1][key], ranks[r][1][key]), key
            torch.testing.assert_close(ranks[r][1][key], ref, rtol=0, atol=1e-5, msg=key)
