"""hf:// loads through a real Hub-compatible server (olah): revisions, partial loads, offline cache, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from lightning_dnn.hub import HubDownloadError, StrictLoadError, UnsafeWeightsError, load_pretrained
from lightning_dnn.nn import MLP
from tests.hub.conftest import HubServer, make_mlp


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("revision", "expected"),
    [("main", "b"), ("v1", "a"), ("dev", "a"), (None, "b"), ("first-commit", "a")],
)
def test_loads_by_branch_tag_and_commit(olah: HubServer, revision: str | None, expected: str) -> None:
    if revision == "first-commit":
        revision = olah.mlp.commits[0]
    net, report = load_pretrained("hf://org/mlp", revision=revision, endpoint=olah.url)
    reference = olah.net_a if expected == "a" else olah.net_b
    assert _same_weights(net, reference) and report.ok
    x = torch.randn(5, 12)
    assert torch.equal(net(x), reference(x))


def test_revision_in_the_source_string(olah: HubServer, tmp_path: Path) -> None:
    net, _ = load_pretrained("hf://org/mlp@v1", endpoint=olah.url, cache_dir=tmp_path / "cache")
    assert _same_weights(net, olah.net_a)
    assert (tmp_path / "cache" / "models--org--mlp" / "refs" / "v1").read_text() == olah.mlp.commits[0]
    with pytest.raises(ValueError, match="names revision 'v1' but `revision`='main'"):
        load_pretrained("hf://org/mlp@v1", revision="main", endpoint=olah.url)
    with pytest.raises(ValueError, match="expected 'hf://org/name"):
        load_pretrained("hf://just-a-name", endpoint=olah.url)


def test_partial_load_into_a_new_head(olah: HubServer) -> None:
    torch.manual_seed(3)
    target = MLP(12, (10, 8, 6), 7, norm="batch", dropout=0.1).eval()
    head = target.output.linear.weight.clone()
    net, report = load_pretrained("hf://org/mlp@v1", include="hidden[12]", into=target, endpoint=olah.url)

    assert net is target
    state_a = olah.net_a.state_dict()
    assert report.loaded == [n for n in state_a if n.startswith(("hidden1.", "hidden2."))]
    assert report.skipped == [n for n in state_a if not n.startswith(("hidden1.", "hidden2."))]
    x = torch.randn(4, 12)
    assert torch.equal(net.hidden2(net.hidden1(x)), olah.net_a.hidden2(olah.net_a.hidden1(x)))
    assert torch.equal(net.output.linear.weight, head)


def test_rename_into_a_differently_named_network(olah: HubServer) -> None:
    target = torch.nn.Module()
    target.body = MLP(12, (10, 8, 6), 4, norm="batch")
    net, report = load_pretrained(
        "hf://org/mlp",
        rename={"hidden": "body.hidden", "output": "body.output"},
        into=target,
        endpoint=olah.url,
    )
    assert report.ok and len(report.loaded) == len(olah.net_b.state_dict())
    assert _same_weights(net.body, olah.net_b)


def test_strict_failure_lists_everything_and_leaves_target_untouched(olah: HubServer) -> None:
    target = MLP(12, (10, 8, 5), 3, norm="batch")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(StrictLoadError) as info:
        load_pretrained("hf://org/mlp", into=target, endpoint=olah.url)
    message = str(info.value)
    for name, file_shape, target_shape in info.value.report.mismatched:
        assert f"{name} (file {file_shape} vs target {target_shape})" in message
    assert {n for n, _, _ in info.value.report.mismatched} == {
        n for n, v in target.state_dict().items() if v.shape != olah.net_b.state_dict()[n].shape
    }
    assert "hf://org/mlp@main" in message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_cache_serves_offline(olah: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(HubDownloadError, match="No cached copy exists") as info:
        load_pretrained("hf://org/mlp@dev", endpoint=olah.url, cache_dir=cache, local_files_only=True)
    assert info.value.cached is False
    online, _ = load_pretrained("hf://org/mlp@dev", endpoint=olah.url, cache_dir=cache)
    requests_before = len(olah.server.requests("/org/mlp/"))

    offline, _ = load_pretrained(
        "hf://org/mlp@dev", endpoint=olah.url, cache_dir=cache, local_files_only=True
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    env_offline, _ = load_pretrained("hf://org/mlp@dev", endpoint=olah.url, cache_dir=cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    unreachable, _ = load_pretrained("hf://org/mlp@dev", endpoint="http://127.0.0.1:9", cache_dir=cache)

    assert len(olah.server.requests("/org/mlp/")) == requests_before  # none of the three touched the server
    for net in (offline, env_offline, unreachable):
        assert _same_weights(net, online) and _same_weights(net, olah.net_a)


def test_unknown_repo_error_names_repo_file_revision_endpoint(olah: HubServer) -> None:
    with pytest.raises(HubDownloadError) as info:
        load_pretrained("hf://org/does-not-exist@v2", endpoint=olah.url)
    message = str(info.value)
    for part in ("'config.json'", "'org/does-not-exist'", "'v2'", olah.url, "No cached copy exists"):
        assert part in message
    assert (info.value.repo_id, info.value.filename, info.value.revision) == (
        "org/does-not-exist",
        "config.json",
        "v2",
    )


def test_pickle_only_repo_is_refused(olah: HubServer) -> None:
    with pytest.raises(UnsafeWeightsError, match=r"pytorch_model\.bin.*never unpickles") as info:
        load_pretrained("hf://org/pickle-only", endpoint=olah.url)
    assert info.value.files == ["pytorch_model.bin"]
    cached = list(olah.cache.glob("models--org--pickle-only/blobs/*"))
    assert len(cached) == 1  # only config.json was fetched; the pickle never was


def test_new_commits_are_seen_by_the_next_load(olah: HubServer, tmp_path: Path) -> None:
    repo = olah.server.add_repo("org/moving", [olah.folder_a])
    first, _ = load_pretrained("hf://org/moving", endpoint=olah.url, cache_dir=tmp_path / "c")
    olah.server.add_repo("org/moving", [olah.folder_b])
    second, _ = load_pretrained("hf://org/moving", endpoint=olah.url, cache_dir=tmp_path / "c")
    assert _same_weights(first, olah.net_a) and _same_weights(second, make_mlp(1))
    assert repo.path.is_dir()


def test_a_vanished_repo_still_loads_from_the_cache(olah: HubServer, tmp_path: Path) -> None:
    """huggingface_hub falls back to the cache when the Hub answers 401/5xx; our load goes along with it."""
    repo = olah.server.add_repo("org/vanishing", [olah.folder_a], tags={"t1": 0})
    cache = tmp_path / "cache"
    first, _ = load_pretrained("hf://org/vanishing@t1", endpoint=olah.url, cache_dir=cache)
    shutil.rmtree(repo.path)
    with pytest.raises(HubDownloadError, match="No cached copy exists"):
        load_pretrained("hf://org/vanishing@t1", endpoint=olah.url, cache_dir=tmp_path / "empty-cache")
    again, _ = load_pretrained("hf://org/vanishing@t1", endpoint=olah.url, cache_dir=cache)
    assert _same_weights(again, first)
