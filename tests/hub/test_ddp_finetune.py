"""A 2-process DDP fine-tune that pulls the digits zoo network's hidden layers from a real Hub server once.

The zoo folder ``zoo/digits-mlp-classes0-4`` is served through the session's olah server; two real processes
(Lightning ``strategy="ddp"``, gloo on loopback, CPU) load its hidden layers in the LightningModule's ``setup``,
freeze them with ``LayerFreezer`` and train a new 5-way head on digits 5-9 (see ``_ddp_finetune_script.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightning_dnn.data import DigitsDataModule
from lightning_dnn.nn import MLP
from tests.ddp_utils import REPO, run_ranks
from tests.hub.conftest import HubServer
from tests.hub.test_ddp_download import _env

pytestmark = pytest.mark.ddp

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "_ddp_finetune_script.py"
ZOO_FOLDER = REPO / "zoo" / "digits-mlp-classes0-4"
REPO_ID = "ddp-finetune/digits-mlp-classes0-4"


def _run_ranks(args: list[str], env: dict[str, str]) -> None:
    run_ranks([([sys.executable, str(SCRIPT), *args], {**env, "LOCAL_RANK": str(r), "NODE_RANK": "0"}) for r in (0, 1)])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_finetune_pulls_once_and_trains_only_the_head(olah: HubServer, tmp_path: Path) -> None:
    olah.server.add_repo(REPO_ID, [ZOO_FOLDER])
    gets_before = len(olah.server.requests(f"GET /{REPO_ID}/resolve/"))
    cache = tmp_path / "shared-cache"
    _run_ranks([f"hf://{REPO_ID}", olah.url, str(cache), str(tmp_path)], _env(tmp_path))

    gets = olah.server.requests(f"GET /{REPO_ID}/resolve/")[gets_before:]
    weights = [line for line in gets if "/model.safetensors HTTP/" in line]
    assert len(weights) == 1, gets  # rank 0 downloaded; rank 1 read the shared cache

    pretrained = load_file(str(ZOO_FOLDER / "model.safetensors"))
    hidden = sorted(k for k in pretrained if k.startswith("hidden"))
    head = ["output.linear.bias", "output.linear.weight"]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}-report.json").read_text())
        assert sorted(report["loaded"]) == hidden
        assert sorted(report["skipped"]) == head  # the file's own head (digits 0-4) stays behind
        assert not (report["missing"] or report["unexpected"] or report["mismatched"])

    initial = [load_file(str(tmp_path / f"rank{rank}-initial.safetensors")) for rank in (0, 1)]
    final = [load_file(str(tmp_path / f"rank{rank}-final.safetensors")) for rank in (0, 1)]
    assert final[0].keys() == final[1].keys() == initial[0].keys()
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0]), "ranks diverged"
    for rank in (0, 1):
        for name in hidden:  # weights, BN affine parameters and running statistics, bit for bit
            assert torch.equal(initial[rank][name], pretrained[name]), (rank, name)
            assert torch.equal(final[rank][name], pretrained[name]), (rank, name)
    for name in head:
        assert not torch.equal(final[0][name], initial[0][name]), name

    # Test accuracy on digits 5-9, computed here from the final weights (chance is 0.2).
    net = MLP(64, (100, 50), 5, activation="elu", init="he_normal", norm="batch")
    net.load_state_dict(final[0])
    data = DigitsDataModule(classes=[5, 6, 7, 8, 9])
    data.setup("test")
    x, y = data.tensors("test")
    with torch.no_grad():
        accuracy = (net.eval()(x).argmax(dim=1) == y).float().mean().item()
    assert accuracy > 0.5, accuracy
