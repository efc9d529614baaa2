"""Fixtures for the hub tests: trained-looking tiny MLPs and a real olah server serving them as Hub repos.

``olah`` (package-scoped: torn down when tests/hub is done) builds these repos and starts one server:

* ``org/mlp``: two commits (weights ``A`` then ``B``); tag ``v1`` and branch ``dev`` at the first, ``main`` at
  the second;
* ``org/pickle-only``: ``config.json`` and a ``pytorch_model.bin``, no safetensors;
* ``org/tampered``: weights ``B`` (a zoo index that pins ``A``'s hash detects it).

huggingface_hub uses a temporary ``HF_HOME``/``HF_HUB_CACHE`` while these tests run (``hf_home``), so nothing leaks
into the user's cache, and tests pass ``endpoint=olah.url`` explicitly (``HF_ENDPOINT`` is read at import time).

None of the negative network tests triggers huggingface_hub's retries (~23 s of backoff for 5xx answers and
refused connections when no cached copy exists; huggingface_hub 2.x has no setting for that budget): olah answers
401 for unknown repos, files and revisions, which is not retried.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bench.olah_server import BuiltRepo, OlahServer, find_olah_cli
from lightning_dnn.hub import save_pretrained
from lightning_dnn.nn import MLP

METADATA = {"dataset": "digits", "classes": ["0", "1", "2", "3"], "metrics": {"test_accuracy": 0.91}}


def make_mlp(seed: int, out_features: int = 4) -> MLP:
    """A small batch-norm MLP with non-trivial running statistics, in eval mode."""
    torch.manual_seed(seed)
    net = MLP(12, (10, 8, 6), out_features, norm="batch", dropout=0.1)
    gen = torch.Generator().manual_seed(seed + 100)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            assert module.running_mean is not None and module.running_var is not None
            assert module.num_batches_tracked is not None
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen))
            module.num_batches_tracked.fill_(seed + 7)
    return net.eval()


@dataclass
class HubServer:
    """What the ``olah`` fixture hands out."""

    server: OlahServer
    url: str
    mlp: BuiltRepo
    pickle_only: BuiltRepo
    tampered: BuiltRepo
    net_a: MLP
    net_b: MLP
    folder_a: Path
    folder_b: Path
    cache: Path


@contextmanager
def private_hf_home(home: Path) -> Iterator[Path]:
    """Point huggingface_hub at ``home`` (env and its import-time constants) while inside; yield the cache folder.

    Also unsets any token, endpoint-independent offline flag and progress bars, and restores everything on exit.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    cache = home / "hub"
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HOME", str(home))
    patch.setenv("HF_HUB_CACHE", str(cache))
    patch.delenv("HF_TOKEN", raising=False)
    patch.delenv("HF_HUB_OFFLINE", raising=False)
    patch.setattr(constants, "HF_HOME", str(home))
    patch.setattr(constants, "HF_HUB_CACHE", str(cache))
    patch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    patch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    patch.setattr(constants, "HF_HUB_OFFLINE", False)
    patch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    disable_progress_bars()
    try:
        yield cache
    finally:
        enable_progress_bars()
        patch.undo()


@pytest.fixture(scope="package")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private HF_HOME/HF_HUB_CACHE for the hub tests (env and huggingface_hub's import-time constants)."""
    with private_hf_home(tmp_path_factory.mktemp("hf-home")) as cache:
        yield cache


@pytest.fixture(scope="package")
def olah(tmp_path_factory: pytest.TempPathFactory, hf_home: Path) -> Iterator[HubServer]:
    """One olah server for the hub tests, serving the repos listed in the module docstring."""
    if find_olah_cli() is None:
        pytest.skip("olah-cli not found (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("olah")
    net_a, net_b = make_mlp(0), make_mlp(1)
    folder_a = save_pretrained(net_a, root / "folders" / "a", metadata=METADATA)
    folder_b = save_pretrained(net_b, root / "folders" / "b", metadata=METADATA)
    with OlahServer(root / "server") as server:
        mlp = server.add_repo("org/mlp", [folder_a, folder_b], tags={"v1": 0}, branches={"dev": 0})
        pickle_only = server.add_repo(
            "org/pickle-only",
            [
                {
                    "config.json": (folder_a / "config.json").read_bytes(),
                    "pytorch_model.bin": b"\x80\x04pickle" * 40,
                }
            ],
        )
        tampered = server.add_repo("org/tampered", [folder_b])
        url = server.start()
        yield HubServer(server, url, mlp, pickle_only, tampered, net_a, net_b, folder_a, folder_b, hf_home)


def write_zoo_index(path: Path, entries: dict[str, dict[str, object]]) -> Path:
    """Write a zoo index file (``{"models": entries}``) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"models": entries}, indent=2))
    return path
