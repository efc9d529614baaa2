"""Fixtures for the hub fault tests: one real olah server (tests/hub's helpers) with repos built to misbehave.

``hub`` (package-scoped) serves, through olah on loopback, with a private HF_HOME:

* ``org/mlp``: weights ``A`` (tag ``v1``) then ``B`` (``main``);
* ``org/no-weights``: ``config.json`` and ``README.md`` only;
* ``org/truncated``: ``A``'s config and the first half of ``A``'s ``model.safetensors``;
* ``org/pickle-renamed``: a pickle whose ``__reduce__`` would create ``marker`` if ever unpickled, committed as
  ``model.safetensors``;
* ``org/tamper-me``: ``A``; a test may change the bytes the server holds for its weights.

``hub_backoff`` records huggingface_hub's retry waits instead of sleeping them (see ``_hub_servers``).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.olah_server import BuiltRepo, OlahServer, find_olah_cli
from lightning_dnn.hub import save_pretrained
from lightning_dnn.nn import MLP
from tests.hub.conftest import METADATA, make_mlp, private_hf_home
from tests.reliability._hub_servers import BackoffRecorder, record_backoff


class MarkerPayload:
    """Unpickling this creates the file ``path`` (the proof that a pickle was loaded)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def marker_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when loaded."""
    return pickle.dumps({"hidden1.linear.weight": MarkerPayload(marker)})


@dataclass
class HubFaults:
    """What the ``hub`` fixture hands out."""

    server: OlahServer
    url: str
    mlp: BuiltRepo
    tamper_me: BuiltRepo
    net_a: MLP
    net_b: MLP
    folder_a: Path
    folder_b: Path
    marker: Path
    cache: Path


@pytest.fixture(scope="package")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubFaults]:
    """One olah server serving the repos listed in the module docstring, with a private HF_HOME."""
    if find_olah_cli() is None:
        pytest.skip("olah-cli not found (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("hub-faults")
    net_a, net_b = make_mlp(0), make_mlp(1)
    folder_a = save_pretrained(net_a, root / "folders" / "a", metadata=METADATA)
    folder_b = save_pretrained(net_b, root / "folders" / "b", metadata=METADATA)
    weights = (folder_a / "model.safetensors").read_bytes()
    config = (folder_a / "config.json").read_bytes()
    marker = root / "unpickled-marker"
    with private_hf_home(root / "hf-home") as cache, OlahServer(root / "server") as server:
        mlp = server.add_repo("org/mlp", [folder_a, folder_b], tags={"v1": 0})
        server.add_repo(
            "org/no-weights", [{"config.json": config, "README.md": (folder_a / "README.md").read_bytes()}]
        )
        server.add_repo(
            "org/truncated", [{"config.json": config, "model.safetensors": weights[: len(weights) // 2]}]
        )
        server.add_repo(
            "org/pickle-renamed", [{"config.json": config, "model.safetensors": marker_pickle(marker)}]
        )
        tamper_me = server.add_repo("org/tamper-me", [folder_a])
        url = server.start()
        yield HubFaults(server, url, mlp, tamper_me, net_a, net_b, folder_a, folder_b, marker, cache)


@pytest.fixture
def hub_backoff() -> Iterator[BackoffRecorder]:
    """huggingface_hub's retry waits, recorded instead of slept."""
    with record_backoff() as recorder:
        yield recorder
