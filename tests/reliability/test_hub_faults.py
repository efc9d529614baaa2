"""Hub faults through a real Hub-compatible server on loopback: each ends in one clear error, or in a correct load.

Down (port closed), stalled, 5xx, missing repo/file, bad revision, a transfer cut halfway, bytes changed on the
server, a tampered local zoo folder, offline with and without a cache, and several processes loading one entry at
once. huggingface_hub's retry waits are recorded instead of slept (``hub_backoff``), so a test counts the retries
without waiting 23 s for them; everything else is real HTTP.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from lightning_dnn.hub import ChecksumMismatchError, HubDownloadError, load_pretrained
from lightning_dnn.hub.zoo import ZOO_INDEX_ENV
from tests.hub.conftest import write_zoo_index
from tests.reliability._hub_fixtures import HubFaults
from tests.reliability._hub_servers import (
    BackoffRecorder,
    StallServer,
    StatusServer,
    TruncatingProxy,
    closed_port_url,
)

FILES = ("config.json", "model.safetensors", "README.md")
# huggingface_hub 2.x retries a failed metadata request 5 times, waiting 1, 2, 4, 8 and 8 s.
ONE_RETRIED_REQUEST = 23.0
HERE = Path(__file__).resolve().parent


def _hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()] if folder.exists() else []


def _zoo_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: dict[str, dict[str, object]]
) -> Path:
    index = write_zoo_index(tmp_path / "clone" / "zoo" / "index.json", entries)
    monkeypatch.setenv(ZOO_INDEX_ENV, str(index))
    return index.parent.parent


def test_server_down_fails_once_with_one_clear_error(
    hub: HubFaults, hub_backoff: BackoffRecorder, tmp_path: Path
) -> None:
    url = closed_port_url()
    with pytest.raises(HubDownloadError) as info:
        load_pretrained("hf://org/mlp", endpoint=url, cache_dir=tmp_path / "cache")
    # one retried request (huggingface_hub's own budget), not a second round for the pickle-only check
    assert hub_backoff.total == ONE_RETRIED_REQUEST, hub_backoff.waits
    message = str(info.value)
    assert "'config.json'" in message and url in message and "'org/mlp'" in message
    assert "could not connect" in message and "No cached copy exists" in message
    assert info.value.cached is False


def test_server_error_5xx_fails_once_without_asking_the_api(
    hub: HubFaults, hub_backoff: BackoffRecorder, tmp_path: Path
) -> None:
    with StatusServer(500) as server, pytest.raises(HubDownloadError) as info:
        load_pretrained("hf://org/mlp", endpoint=server.url, cache_dir=tmp_path / "cache")
    assert {path for _, path in server.requests} == {"/org/mlp/resolve/main/config.json"}
    assert len(server.requests) == 7  # the first request and huggingface_hub's 6 tries
    assert hub_backoff.total == ONE_RETRIED_REQUEST
    assert "HTTP 500" in str(info.value) and server.url in str(info.value)


def test_stalled_server_times_out_once(
    hub: HubFaults, hub_backoff: BackoffRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that accepts and never answers: one timeout error after huggingface_hub's retries.

    huggingface_hub waits ``HF_HUB_ETAG_TIMEOUT`` for the first answer, then retries 6 times with its own fixed
    60 s timeout (``_ETAG_RETRY_TIMEOUT``); both are shortened here to keep the test short.
    """
    from huggingface_hub import file_download

    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    monkeypatch.setattr(file_download, "_ETAG_RETRY_TIMEOUT", 0.5, raising=False)
    with StallServer() as server, pytest.raises(HubDownloadError) as info:
        load_pretrained("hf://org/mlp", endpoint=server.url, cache_dir=tmp_path / "cache")
    assert "did not answer in time" in str(info.value) and "HF_HUB_ETAG_TIMEOUT" in str(info.value)
    assert len(server.connections) == 7
    assert hub_backoff.total == ONE_RETRIED_REQUEST


@pytest.mark.parametrize(
    ("source", "missing"),
    [("hf://org/nowhere", "config.json"), ("hf://org/no-weights", "model.safetensors")],
)
def test_missing_repo_or_file_is_named_without_retries(
    hub: HubFaults, hub_backoff: BackoffRecorder, tmp_path: Path, source: str, missing: str
) -> None:
    with pytest.raises(HubDownloadError) as info:
        load_pretrained(source, endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert info.value.filename == missing and f"'{missing}'" in str(info.value)
    assert f"'{source[5:]}'" in str(info.value)
    assert "not found" in str(info.value) or "does not exist" in str(info.value)
    assert hub_backoff.waits == []


def test_bad_revision_is_named(hub: HubFaults, hub_backoff: BackoffRecorder, tmp_path: Path) -> None:
    with pytest.raises(HubDownloadError) as info:
        load_pretrained("hf://org/mlp@no-such-branch", endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert info.value.revision == "no-such-branch" and "'no-such-branch'" in str(info.value)
    assert hub_backoff.waits == []


def test_transfer_cut_halfway_leaves_nothing_and_the_next_load_works(
    hub: HubFaults, hub_backoff: BackoffRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _zoo_index(
        tmp_path,
        monkeypatch,
        {"a": {"repo_id": "org/mlp", "revision": hub.mlp.commits[0], "files": _hashes(hub.folder_a)}},
    )
    cache = tmp_path / "cache"
    with TruncatingProxy(hub.url, "/model.safetensors") as proxy, pytest.raises(HubDownloadError) as info:
        load_pretrained("zoo:a", endpoint=proxy.url, cache_dir=cache)
    assert proxy.broken and info.value.filename == "model.safetensors"
    leftovers = [p.name for p in _files_under(cache / "models--org--mlp")]
    assert not [n for n in leftovers if n.endswith(".incomplete")]
    assert "model.safetensors" not in leftovers

    net, _ = load_pretrained("zoo:a", endpoint=hub.url, cache_dir=cache)
    assert _same_weights(net, hub.net_a)


def test_bytes_changed_on_the_server_are_refused_and_the_cache_stays_intact(
    hub: HubFaults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    _zoo_index(
        tmp_path,
        monkeypatch,
        {
            "a": {"repo_id": "org/mlp", "revision": hub.mlp.commits[0], "files": _hashes(hub.folder_a)},
            "t": {"repo_id": "org/tamper-me", "revision": hub.tamper_me.head, "files": _hashes(hub.folder_a)},
        },
    )
    load_pretrained("zoo:a", endpoint=hub.url, cache_dir=cache)  # another entry, cached before the fault
    before = {p: p.read_bytes() for p in _files_under(cache / "models--org--mlp") if p.is_file()}

    pinned = _hashes(hub.folder_a)["model.safetensors"]
    lfs = hub.tamper_me.path / ".git" / "lfs" / "objects" / pinned[:2] / pinned[2:4] / pinned
    data = bytearray(lfs.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight: same size, same etag, different bytes
    lfs.write_bytes(bytes(data))
    served = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(ChecksumMismatchError) as info:
        load_pretrained("zoo:t", endpoint=hub.url, cache_dir=cache)
    message = str(info.value)
    assert pinned in message and served in message and "'model.safetensors'" in message
    tampered = _files_under(cache / "models--org--tamper-me")
    assert not [p for p in tampered if p.name == "model.safetensors" or p.name.endswith(".incomplete")]
    assert not [p for p in tampered if p.parent.name == "blobs" and p.stat().st_size == len(data)]
    after = {p: p.read_bytes() for p in _files_under(cache / "models--org--mlp") if p.is_file()}
    assert after == before
    net, _ = load_pretrained("zoo:a", endpoint=closed_port_url(), cache_dir=cache, local_files_only=True)
    assert _same_weights(net, hub.net_a)


def test_tampered_local_zoo_folder_offline_reports_the_hash_mismatch(
    hub: HubFaults, hub_backoff: BackoffRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _zoo_index(
        tmp_path,
        monkeypatch,
        {
            "local": {
                "repo_id": "org/mlp",
                "revision": hub.mlp.commits[0],
                "files": _hashes(hub.folder_a),
                "path": "zoo/local",
            }
        },
    )
    local = shutil.copytree(hub.folder_a, root / "zoo" / "local")
    weights = local / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(ChecksumMismatchError) as info:
        load_pretrained("zoo:local", endpoint=closed_port_url(), cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(weights) in message
    assert _hashes(hub.folder_a)["model.safetensors"] in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert "git checkout" in message and info.value.filename == "model.safetensors"
    assert weights.read_bytes() == bytes(data)  # the user's folder is reported, never changed
    assert hub_backoff.waits == []


def test_offline_with_a_cache_loads_without_any_request(
    hub: HubFaults, hub_backoff: BackoffRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    load_pretrained("hf://org/mlp@v1", endpoint=hub.url, cache_dir=cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    net, report = load_pretrained("hf://org/mlp@v1", endpoint=closed_port_url(), cache_dir=cache)
    assert _same_weights(net, hub.net_a) and report.ok
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    net, _ = load_pretrained(
        "hf://org/mlp@v1", endpoint=closed_port_url(), cache_dir=cache, local_files_only=True
    )
    assert _same_weights(net, hub.net_a)
    assert hub_backoff.waits == []


def test_offline_without_a_cache_says_so(
    hub: HubFaults, hub_backoff: BackoffRecorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubDownloadError) as info:
        load_pretrained("hf://org/mlp@v1", endpoint=hub.url, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "HF_HUB_OFFLINE is set" in message and "No cached copy exists" in message
    assert "offline" in message and info.value.cached is False
    assert hub_backoff.waits == []


@pytest.mark.slow  # four fresh interpreters importing torch: ~50 s on two shared cores
def test_processes_loading_one_entry_at_once_all_succeed_with_one_copy(
    hub: HubFaults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = _zoo_index(
        tmp_path,
        monkeypatch,
        {"a": {"repo_id": "org/mlp", "revision": hub.mlp.commits[0], "files": _hashes(hub.folder_a)}},
    )
    cache = tmp_path / "cache"
    gets_before = len(hub.server.requests("/model.safetensors"))
    env = {
        **_clean_env(),
        ZOO_INDEX_ENV: str(clone / "zoo" / "index.json"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "OMP_NUM_THREADS": "1",
    }
    script = HERE / "_hub_concurrent_load.py"
    outputs = [tmp_path / f"worker{i}.json" for i in range(4)]
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), hub.url, str(cache), str(out)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for out in outputs
    ]
    for worker in workers:  # every worker has imported everything: start them together
        assert worker.stdout is not None and worker.stdout.readline().strip() == b"ready"
    errors = [w.communicate(b"go\n", timeout=300)[1].decode(errors="replace") for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, errors
    expected = {k: v.tolist() for k, v in hub.net_a.state_dict().items()}
    assert all(json.loads(out.read_text()) == expected for out in outputs)

    storage = cache / "models--org--mlp"
    blobs = sorted(p.name for p in (storage / "blobs").iterdir())
    assert len(blobs) == 3 and _hashes(hub.folder_a)["model.safetensors"] in blobs  # one copy of each file
    assert not [p for p in _files_under(storage) if p.name.endswith(".incomplete")]
    gets = [line for line in hub.server.requests("/model.safetensors")[gets_before:] if '"GET ' in line]
    assert len(gets) == 1, gets  # huggingface_hub's file lock: one process downloads, the others wait for it


def _clean_env() -> dict[str, str]:
    import os

    drop = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN")
    return {k: v for k, v in os.environ.items() if k not in drop}
