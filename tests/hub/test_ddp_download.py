"""Under torch.distributed, rank 0 downloads once and the others read the cache; failures reach every rank.

Two real processes (gloo on loopback) load from the session's olah server; olah's access log counts the
downloads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.ddp_utils import ddp_env, run_ranks
from tests.hub.conftest import HubServer

pytestmark = pytest.mark.ddp

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "_ddp_fetch_script.py"


def _env(workdir: Path) -> dict[str, str]:
    """The DDP environment plus a private HF_HOME, without any endpoint or offline setting of the caller's."""
    env = ddp_env()
    for key in ("HF_ENDPOINT", "HF_HUB_OFFLINE"):
        env.pop(key, None)
    env.update(HF_HOME=str(workdir / "hf-home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_rank_zero_downloads_first_and_failures_reach_every_rank(olah: HubServer, tmp_path: Path) -> None:
    gets_before = len(olah.server.requests("GET /org/mlp/resolve/"))
    env = _env(tmp_path)
    run_ranks([([sys.executable, str(SCRIPT), str(rank), "2", olah.url, str(tmp_path)], env) for rank in (0, 1)])

    expected = olah.net_a.state_dict()
    for rank in (0, 1):
        for case in ("shared", "own-cache"):
            loaded = load_file(str(tmp_path / f"rank{rank}-{case}.safetensors"))
            assert loaded.keys() == expected.keys()
            assert all(torch.equal(loaded[k], expected[k]) for k in expected), (rank, case)
    rank0_error = (tmp_path / "rank0-missing.error").read_text()
    rank1_error = (tmp_path / "rank1-missing.error").read_text()
    assert rank0_error.startswith(
        "HubDownloadError: Could not fetch 'config.json' from Hub repo 'org/does-not-exist'"
    )
    assert rank1_error.startswith("HubDownloadError: Rank 0 failed to fetch 'org/does-not-exist'")

    gets = olah.server.requests("GET /org/mlp/resolve/")[gets_before:]
    weights = [line for line in gets if "/model.safetensors HTTP/" in line]
    # one download for the shared cache (rank 0), then one per rank for the separate caches
    assert len(weights) == 3, gets
