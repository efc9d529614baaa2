"""Helpers for tests that run a script as a real 2-process CPU DDP job (gloo on loopback)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ddp_env() -> dict[str, str]:
    """The caller's environment without launcher variables, plus a loopback rendezvous and one thread."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "PMI_", "OMPI_", "TORCHELASTIC_"))
        and k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE")
    }
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def load_script(path: Path) -> ModuleType:
    """Import a DDP script by file path (to run its single-process reference in the test process)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_ddp_script(script: Path, tmp_path: Path, world_size: int = 2, timeout: float = 240) -> ModuleType:
    """Run ``script tmp_path world_size`` (a script that launches its own DDP job) to success, then import it
    (to run its single-process reference in the test process)."""
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(world_size)],
        env=ddp_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return load_script(script)


def run_ranks(commands: list[tuple[list[str], dict[str, str]]], timeout: float = 180) -> list[str]:
    """Start one process per ``(argv, env)``, wait for all, fail the test if one hangs or exits non-zero."""
    import pytest

    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for argv, env in commands
    ]
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a rank hung")
        outputs.append(out)
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)
    return outputs
