"""The committed zoo: every entry matches its index pin, reproduces its test accuracy, and is served at that pin.

* The folder's files have the sha256 the index pins, and the pinned revision is the entry's canonical
  publication commit (computed here without git, and built with git for the server).
* ``load_pretrained("zoo:<name>")`` serves the local folder offline, and evaluating the loaded network on the
  recipe's test split gives the stored test accuracy (digits: exactly; Fashion-MNIST when the data set is
  installed under /usr/share/datasets/fashion-mnist).
* Through a real Hub server (olah) serving the canonical repositories, a ``zoo:`` load with no local folder
  downloads the pinned commit and verifies it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lightning_dnn.cli._zoo_build import card_options
from lightning_dnn.cli._zoo_repo import canonical_commit, write_canonical_repo
from lightning_dnn.hub import load_pretrained, load_zoo_index
from lightning_dnn.hub._card import render_model_card
from lightning_dnn.hub._io import read_config
from lightning_dnn.hub.zoo import ZOO_INDEX_ENV, ZooEntry
from tests.hub.conftest import HubServer, write_zoo_index

ROOT = Path(__file__).resolve().parents[2]
INDEX = ROOT / "zoo" / "index.json"
ENTRIES = load_zoo_index(INDEX) if INDEX.is_file() else {}
NAMES = sorted(ENTRIES)
#: Pretrained encoders (lightning_dnn.pretrain): no classes, their metrics are checked in tests/pretrain.
PRETRAINED = {"fashion-autoencoder-5x100-elu", "fashion-siamese-5x100-elu"}
CLASSIFIERS = [name for name in NAMES if name not in PRETRAINED]
FILES = ("config.json", "model.safetensors", "README.md")
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The repository's index, and one intra-op thread (on a shared 2-core machine two threads make small ops
    several times slower)."""
    monkeypatch.delenv(ZOO_INDEX_ENV, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def is_unpublished(entry: ZooEntry) -> bool:
    """Whether the entry is pinned to its canonical local commit (``zoo publish`` pins the Hub's instead)."""
    assert entry.local_path is not None
    return canonical_commit(entry.local_path, entry.name) == entry.revision


def serve_zoo(server: HubServer) -> dict[str, str]:
    """Build each unpublished entry's canonical repo under olah's mirrors (once); return name -> git's sha."""
    shas = {}
    for name, entry in ENTRIES.items():
        assert entry.local_path is not None
        org, repo = entry.repo_id.split("/")
        target = server.server.mirrors / "models" / org / repo
        if not (target / ".git").is_dir():
            write_canonical_repo(entry.local_path, target, name)
        shas[name] = _git_head(target)
    return shas


def remote_index(path: Path) -> Path:
    """A copy of the zoo index without local folders: ``zoo:`` loads must come from the Hub."""
    raw = json.loads(INDEX.read_text())["models"]
    return write_zoo_index(path, {n: {k: v for k, v in e.items() if k != "path"} for n, e in raw.items()})


def recipe_datamodule(recipe: Path) -> object:
    """The recipe's data module, built from its ``data`` section (same preprocessing as in training)."""
    data = yaml.safe_load(recipe.read_text())["data"]
    module, _, name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    kwargs = dict(data.get("init_args") or {})
    if "Fashion" in name:
        if not FASHION_ROOT.is_dir():
            pytest.skip(f"Fashion-MNIST is not installed under {FASHION_ROOT}")
        kwargs.update(root=str(FASHION_ROOT), download=False)
    return cls(**kwargs)


def _git_head(repo: Path) -> str:
    return (repo / ".git" / "refs" / "heads" / "main").read_text().strip()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_zoo_has_the_six_entries() -> None:
    assert NAMES == [
        "digits-mlp-classes0-4",
        "fashion-5x100-elu-classes0-4",
        "fashion-autoencoder-5x100-elu",
        "fashion-convnet-small",
        "fashion-mlp-300-100-bn-elu",
        "fashion-siamese-5x100-elu",
    ]


@pytest.mark.parametrize("name", NAMES)
def test_folder_matches_the_index_pin(name: str) -> None:
    entry = ENTRIES[name]
    assert entry.local_path == ROOT / "zoo" / name
    assert {f: _sha256(entry.local_path / f) for f in FILES} == dict(entry.files)
    assert (entry.local_path / "model.safetensors").stat().st_size < 2_000_000
    config = json.loads((entry.local_path / "config.json").read_text())
    metadata = config["metadata"]
    assert metadata["metrics"] == dict(entry.metrics)
    assert metadata["license"] == entry.license == "apache-2.0"
    if name in PRETRAINED:  # an encoder trained without class outputs: its card names no classes
        assert "classes" not in metadata and "labels" not in metadata
    else:
        assert len(metadata["classes"]) == len(metadata["labels"]) == _outputs(config)
    card = (entry.local_path / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0" and front["library_name"] == "lightning-dnn"
    assert front["datasets"] == [metadata["dataset"]]
    assert ("test_loss" if name in PRETRAINED else "test_accuracy") in front["metrics"]
    assert f"lightning-dnn zoo build {name}" in card and "recipe.yaml" in card
    assert (entry.local_path / "recipe.yaml").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_card_is_what_the_one_renderer_writes(name: str) -> None:
    folder = ENTRIES[name].local_path
    assert folder is not None
    options = card_options(name, folder / "recipe.yaml")
    assert (folder / "README.md").read_text() == render_model_card(read_config(folder / "config.json"), options)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_loaded_entry_reproduces_its_test_accuracy(name: str, tmp_path: Path) -> None:
    entry = ENTRIES[name]
    assert entry.local_path is not None
    data = recipe_datamodule(entry.local_path / "recipe.yaml")
    net, report = load_pretrained(
        f"zoo:{name}", endpoint="http://127.0.0.1:9", cache_dir=tmp_path / "cache"
    )  # offline: an unusable endpoint, and nothing lands in the cache
    assert report.ok and not (tmp_path / "cache").exists()
    data.setup("test")  # type: ignore[attr-defined]
    x, y = data.tensors("test")  # type: ignore[attr-defined]
    batch = 100 if x.dim() == 4 else 1000  # conv activations of 100 images stay in cache: ~2x faster
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(y), batch):
            correct += int((net(x[start : start + batch]).argmax(dim=1) == y[start : start + batch]).sum())
    accuracy = correct / len(y)
    stored = entry.metrics["test_accuracy"]
    if name.startswith("digits"):
        assert accuracy == pytest.approx(stored, abs=1e-6)  # the same count of correct samples
        assert stored >= 0.97
    else:  # 10,000 samples: allow two near-tie flips from a different thread count in the matmuls
        assert accuracy == pytest.approx(stored, abs=2e-4)


def test_canonical_repos_built_with_git_have_the_pinned_sha(olah: HubServer) -> None:
    shas = serve_zoo(olah)
    for name, entry in ENTRIES.items():
        if is_unpublished(entry):
            assert shas[name] == entry.revision


@pytest.mark.parametrize("name", NAMES)
def test_zoo_load_without_local_folder_downloads_the_pin_and_verifies(
    name: str, olah: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = ENTRIES[name]
    assert entry.local_path is not None
    if not is_unpublished(entry):
        pytest.skip(f"{name} is published to the Hub; a local mirror cannot have the Hub's commit")
    serve_zoo(olah)
    monkeypatch.setenv(ZOO_INDEX_ENV, str(remote_index(tmp_path / "zoo" / "index.json")))
    cache = tmp_path / "cache"
    net, report = load_pretrained(f"zoo:{name}", endpoint=olah.url, cache_dir=cache)
    assert report.ok
    org, repo = entry.repo_id.split("/")
    snapshot = cache / f"models--{org}--{repo}" / "snapshots" / entry.revision
    assert {f: _sha256(snapshot / f) for f in FILES} == dict(entry.files)
    expected = load_file(str(entry.local_path / "model.safetensors"))
    state = net.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def _outputs(config: dict[str, object]) -> int:
    inner = config["config"]
    assert isinstance(inner, dict)
    return int(inner.get("out_features") or inner["num_classes"])
