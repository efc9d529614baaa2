"""zoo:name loads: pinned revision, sha256 verification (tampering deletes the cached file), local clones offline."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from lightning_dnn.hub import ChecksumMismatchError, HubDownloadError, load_pretrained
from lightning_dnn.hub.zoo import ZOO_INDEX_ENV, load_zoo_index, resolve_zoo
from tests.hub.conftest import HubServer, write_zoo_index

FILES = ("config.json", "model.safetensors", "README.md")


def _hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def zoo(olah: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clone-like layout: <root>/zoo/index.json, with a local copy of entry 'local'."""
    root = tmp_path / "clone"
    shutil.copytree(olah.folder_a, root / "zoo" / "local")
    shutil.copytree(olah.folder_b, root / "zoo" / "stale")  # its files differ from what the index pins
    pinned_a = {"repo_id": "org/mlp", "revision": olah.mlp.commits[0], "files": _hashes(olah.folder_a)}
    index = write_zoo_index(
        root / "zoo" / "index.json",
        {
            "good": {**pinned_a, "metrics": {"test_accuracy": 0.91}, "license": "apache-2.0"},
            "local": {**pinned_a, "path": "zoo/local"},
            "stale": {**pinned_a, "path": "zoo/stale"},
            "tampered": {
                "repo_id": "org/tampered",
                "revision": olah.tampered.head,
                "files": _hashes(olah.folder_a),
            },
        },
    )
    monkeypatch.setenv(ZOO_INDEX_ENV, str(index))
    return root


def test_zoo_entry_loads_the_pinned_commit_verified(olah: HubServer, zoo: Path, tmp_path: Path) -> None:
    net, report = load_pretrained("zoo:good", endpoint=olah.url, cache_dir=tmp_path / "cache")
    assert _same_weights(net, olah.net_a) and report.ok
    snapshot = tmp_path / "cache" / "models--org--mlp" / "snapshots" / olah.mlp.commits[0]
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(FILES)  # README.md too: it is pinned


def test_tampered_file_is_deleted_from_the_cache_and_raises(
    olah: HubServer, zoo: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError) as info:
        load_pretrained("zoo:tampered", endpoint=olah.url, cache_dir=cache)
    served = hashlib.sha256((olah.folder_b / "model.safetensors").read_bytes()).hexdigest()
    pinned = _hashes(olah.folder_a)["model.safetensors"]
    message = str(info.value)
    assert pinned in message and served in message and "'org/tampered'" in message
    assert info.value.filename == "model.safetensors"

    storage = cache / "models--org--tampered"
    snapshot = storage / "snapshots" / olah.tampered.head
    assert not (snapshot / "model.safetensors").exists() and not (snapshot / "model.safetensors").is_symlink()
    assert not (storage / "blobs" / served).exists()
    assert (snapshot / "config.json").is_file()  # the verified files stay
    with pytest.raises(HubDownloadError, match="No cached copy exists"):
        load_pretrained("zoo:tampered", endpoint=olah.url, cache_dir=cache, local_files_only=True)


def test_local_clone_serves_offline_without_any_request(olah: HubServer, zoo: Path, tmp_path: Path) -> None:
    before = len(olah.server.requests("/org/mlp/"))
    net, _ = load_pretrained("zoo:local", endpoint="http://127.0.0.1:9", cache_dir=tmp_path / "cache")
    assert _same_weights(net, olah.net_a)
    assert len(olah.server.requests("/org/mlp/")) == before
    assert not (tmp_path / "cache").exists()


def test_stale_local_folder_falls_back_to_the_hub(olah: HubServer, zoo: Path, tmp_path: Path) -> None:
    net, _ = load_pretrained("zoo:stale", endpoint=olah.url, cache_dir=tmp_path / "cache")
    assert _same_weights(net, olah.net_a)  # the pinned weights, not the local folder's


def test_zoo_names_and_revisions_are_checked(olah: HubServer, zoo: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown zoo model 'god'\. Did you mean 'good'"):
        load_pretrained("zoo:god")
    with pytest.raises(ValueError, match="pinned"):
        load_pretrained("zoo:good", revision="main")
    repo_id, revision, files, local = resolve_zoo("local")
    assert (repo_id, revision, local) == ("org/mlp", olah.mlp.commits[0], zoo / "zoo" / "local")
    assert files == _hashes(olah.folder_a)
    assert load_zoo_index()["good"].metrics == {"test_accuracy": 0.91}


def test_malformed_index_entries_are_named(tmp_path: Path) -> None:
    index = write_zoo_index(
        tmp_path / "zoo" / "index.json", {"bad": {"repo_id": "org/m", "revision": "main", "files": {}}}
    )
    with pytest.raises(ValueError, match=r"entry 'bad': 'revision' must be a pinned commit"):
        load_zoo_index(index)
    with pytest.raises(FileNotFoundError, match=ZOO_INDEX_ENV):
        load_zoo_index(tmp_path / "nowhere.json")
