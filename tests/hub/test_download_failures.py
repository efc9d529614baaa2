"""A transfer that breaks mid-file leaves nothing in the cache that a later load could pick up.

A small HTTP proxy sits between huggingface_hub and olah. For the weights file it sends the real headers
(full Content-Length) and then only half of the body before closing the connection; huggingface_hub retries the
transfer after a second, which the proxy answers with HTTP 500 (not retried), so the download fails for good.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lightning_dnn.hub import HubDownloadError, load_pretrained
from lightning_dnn.hub._download import _download_error
from tests.hub.conftest import HubServer
from tests.reliability._hub_servers import TruncatingProxy


@pytest.fixture
def proxy(olah: HubServer) -> Iterator[TruncatingProxy]:
    with TruncatingProxy(olah.url, "/model.safetensors") as running:
        yield running


def test_broken_transfer_leaves_no_partial_file(
    olah: HubServer, proxy: TruncatingProxy, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(HubDownloadError) as info:
        load_pretrained("hf://org/mlp@v1", endpoint=proxy.url, cache_dir=cache)
    assert proxy.broken, "the proxy did not cut the transfer"
    message = str(info.value)
    assert "'model.safetensors'" in message and proxy.url in message and info.value.cached is False

    storage = cache / "models--org--mlp"
    leftovers = [p.name for p in storage.rglob("*") if p.is_file()]
    assert not [name for name in leftovers if "incomplete" in name]
    assert not list(storage.glob("snapshots/*/model.safetensors"))
    assert [p.name for p in storage.glob("snapshots/*/*")] == ["config.json"]
    assert len(list(storage.glob("blobs/*"))) == 1  # config.json's blob only
    with pytest.raises(HubDownloadError, match="No cached copy exists"):
        load_pretrained("hf://org/mlp@v1", endpoint=proxy.url, cache_dir=cache, local_files_only=True)

    net, _ = load_pretrained(
        "hf://org/mlp@v1", endpoint=olah.url, cache_dir=cache
    )  # the real server completes it
    x = torch.randn(3, 12)
    assert torch.equal(net(x), olah.net_a(x))


def _http_error(cls: type[Exception], status: int) -> Exception:
    """A huggingface_hub HTTP error carrying a response, built with the HTTP client huggingface_hub uses."""
    import importlib

    from huggingface_hub import errors

    client = importlib.import_module(errors.Response.__module__.split(".")[0])  # httpx2 (or httpx)
    request = client.Request("HEAD", "http://hub.test/org/m/resolve/v9/config.json")
    return cls(f"{status} from the server", response=errors.Response(status, request=request))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("error_name", "reason"),
    [
        ("RevisionNotFoundError", "the revision does not exist in the repo"),
        ("RemoteEntryNotFoundError", "the file does not exist in the repo at that revision"),
        ("RepositoryNotFoundError", "repo, revision or file was not found, or access was denied"),
        ("HfHubHTTPError", "the server answered HTTP 404"),
    ],
)
def test_each_hub_error_gets_a_reason_and_the_cache_state(
    olah: HubServer, tmp_path: Path, error_name: str, reason: str
) -> None:
    """The Hub's own error answers (which olah does not produce) are mapped to our message."""
    from huggingface_hub import errors

    cache = tmp_path / "cache"
    error = _http_error(getattr(errors, error_name), 404)
    fresh = _download_error(
        error, "org/mlp", "config.json", "v1", endpoint="http://hub.test", cache_dir=str(cache)
    )
    assert reason in str(fresh) and "http://hub.test" in str(fresh) and "'v1'" in str(fresh)
    assert fresh.cached is False and "No cached copy exists" in str(fresh)

    load_pretrained("hf://org/mlp@v1", endpoint=olah.url, cache_dir=cache)
    cached = _download_error(
        error, "org/mlp", "config.json", "v1", endpoint="http://hub.test", cache_dir=str(cache)
    )
    assert cached.cached is True
    assert "A cached copy exists" in str(cached) and "local_files_only=True" in str(cached)
