"""Under torch.distributed, rank 0 downloads once and the others read the cache; failures reach every rank.

Two real processes (gloo on loopback) load from the session's olah server; olah's access log counts the
downloads.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.hub.conftest import HubServer

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "_ddp_fetch_script.py"
REPO = HERE.parents[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(workdir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "PMI_", "OMPI_", "TORCHELASTIC_"))
        and k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "HF_ENDPOINT", "HF_HUB_OFFLINE")
    }
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        OMP_NUM_THREADS="1",
        HF_HOME=str(workdir / "hf-home"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_rank_zero_downloads_first_and_failures_reach_every_rank(olah: HubServer, tmp_path: Path) -> None:
    gets_before = len(olah.server.requests("GET /org/mlp/resolve/"))
    env = _env(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(rank), "2", olah.url, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a rank hung")
        outputs.append(out)
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)

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
