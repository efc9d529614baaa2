"""Fetch a lightning-dnn folder from the Hub through huggingface_hub, verify it, and explain failures.

Everything goes through ``hf_hub_download``: its cache (``HF_HUB_CACHE``/``cache_dir``), ``HF_ENDPOINT`` or
``endpoint=``, ``HF_HUB_OFFLINE``, and tokens. ``config.json`` is fetched first at the requested revision (which
writes the branch/tag -> commit ref into the cache); the other files are fetched at the commit it resolved to, so
one load never mixes files of two commits. A repo without ``config.json`` (weights only) is fetched from
``model.safetensors`` on; one without ``model.safetensors`` from ``model.safetensors.index.json`` and its shards; a repo whose config.json
no format rule recognises also has its ``README.md`` fetched (PyTorchModelHubMixin's card tags it). huggingface_hub downloads into a process-unique ``*.incomplete`` file
and renames it into the cache only when complete (a failed transfer deletes it), so a later load never finds a
partial file.

A failure is reported once, with its cause in words (refused, timed out, an HTTP status, offline): the repo's
file list is asked for (to recognise a pickle-only repo) only when the server answered that a file is missing,
never after huggingface_hub has already spent its retries on a server that is down, stalls or fails.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    FileMetadataError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lightning_dnn._version import __version__
from lightning_dnn.hub._distributed import rank_zero_first
from lightning_dnn.hub._formats import UNKNOWN, folder_format, pickle_hint
from lightning_dnn.hub._io import (
    CARD_NAME,
    CONFIG_NAME,
    INDEX_NAME,
    LIBRARY_NAME,
    WEIGHTS_NAME,
    find_pickle_files,
    sha256_file,
    unsafe_weights_message,
)
from lightning_dnn.hub._names import COMMIT
from lightning_dnn.hub._weights import read_index
from lightning_dnn.hub.errors import ChecksumMismatchError, HubDownloadError, UnsafeWeightsError

log = logging.getLogger(__name__)


def fetch_repo_folder(
    repo_id: str,
    revision: str | None,
    *,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    sha256: Mapping[str, str] | None = None,
) -> Path:
    """Fetch config.json (if any), the weights and every file in ``sha256`` (verified); return the snapshot folder.

    The weights are ``model.safetensors`` or, when the repo has none, ``model.safetensors.index.json`` and the
    shards its ``weight_map`` names.

    Under torch.distributed, rank 0 fetches first and the other ranks then read the cache
    (see :mod:`lightning_dnn.hub._distributed`).
    """
    what = f"{repo_id!r} at revision {revision or 'main'!r}"
    cache = os.fspath(cache_dir) if cache_dir is not None else None

    def fetch(local_only: bool) -> Path:
        return _fetch(
            repo_id,
            revision,
            endpoint=endpoint,
            token=token,
            cache_dir=cache,
            local_files_only=local_files_only or local_only,
            sha256=sha256,
        )

    return rank_zero_first(fetch, what)


# (real path, inode, size, mtime_ns) -> sha256: a file already hashed in this process is not read again.
_HASHED: dict[tuple[str, int, int, int], str] = {}


def verify_sha256(path: Path, expected: str) -> str | None:
    """The actual sha256 of ``path`` when it differs from ``expected``, else ``None``."""
    real = path.resolve()
    stat = real.stat()
    key = (str(real), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    actual = _HASHED.get(key)
    if actual is None:
        actual = sha256_file(real)
        if len(_HASHED) > 4096:
            _HASHED.clear()
        _HASHED[key] = actual
    return actual if actual != expected.lower() else None


def _fetch(
    repo_id: str,
    revision: str | None,
    *,
    endpoint: str | None,
    token: str | bool | None,
    cache_dir: str | None,
    local_files_only: bool,
    sha256: Mapping[str, str] | None,
) -> Path:
    download = partial(
        _download, endpoint=endpoint, token=token, cache_dir=cache_dir, local_files_only=local_files_only
    )
    config_path = download(repo_id, CONFIG_NAME, revision, missing_ok=True)
    paths: dict[str, Path] = {} if config_path is None else {CONFIG_NAME: config_path}
    commit = _commit_of(config_path) if config_path else None
    if config_path is not None and folder_format(config_path.parent).name == UNKNOWN:
        # another library's config.json: its model card may say which (PyTorchModelHubMixin tags its cards)
        download(repo_id, CARD_NAME, commit or revision, missing_ok=True)
    weights = _fetch_weights(download, repo_id, revision, commit)
    if not weights:  # raise the error that explains it: the repo's (no config either) or the weights'
        try:
            download(repo_id, WEIGHTS_NAME if config_path else CONFIG_NAME, commit or revision)
        except UnsafeWeightsError as err:
            hint = pickle_hint(folder_format(config_path.parent)) if config_path is not None else ""
            if not hint:
                raise
            raise UnsafeWeightsError(f"{err}{hint}", err.files) from None
        raise AssertionError("unreachable")  # pragma: no cover
    paths.update(weights)
    commit = _commit_of(next(iter(paths.values())))
    for name in sha256 or {}:
        if name not in paths:
            paths[name] = _required(download(repo_id, name, commit or revision))
    for name, expected in (sha256 or {}).items():
        actual = verify_sha256(paths[name], expected)
        if actual is not None:
            removed = _remove_cached(paths[name])
            raise ChecksumMismatchError(
                f"sha256 mismatch for {name!r} from Hub repo {repo_id!r} at revision {revision or 'main'!r} "
                f"(endpoint {_endpoint(endpoint)}): the zoo index pins {expected}, the downloaded file has {actual}. "
                f"The file was removed from the cache ({', '.join(removed)}); the repo no longer holds the pinned "
                "file, or the download was tampered with.",
                repo_id=repo_id,
                filename=name,
                revision=revision,
                endpoint=_endpoint(endpoint),
                cached=False,
            )
    return next(iter(paths.values())).parent


def _fetch_weights(
    download: Callable[..., Path | None], repo_id: str, revision: str | None, commit: str | None
) -> dict[str, Path]:
    """``model.safetensors``, or else the index and every shard it names, at one commit; ``{}`` when neither."""
    weights = download(repo_id, WEIGHTS_NAME, commit or revision, missing_ok=True)
    if weights is not None:
        return {WEIGHTS_NAME: weights}
    index = download(repo_id, INDEX_NAME, commit or revision, missing_ok=True)
    if index is None:
        return {}
    commit = commit or _commit_of(index)
    paths = {INDEX_NAME: index}
    for shard in read_index(index):
        paths[shard] = _required(download(repo_id, shard, commit or revision))
    return paths


def _required(path: Path | None) -> Path:
    if path is None:  # only a download with missing_ok=True answers None
        raise AssertionError("a required download returned no file")  # pragma: no cover
    return path


def _download(
    repo_id: str,
    filename: str,
    revision: str | None,
    *,
    endpoint: str | None,
    token: str | bool | None,
    cache_dir: str | None,
    local_files_only: bool,
    missing_ok: bool = False,
) -> Path | None:
    """Download one file; ``None`` when ``missing_ok`` and the server answered that it is not there."""
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                endpoint=endpoint,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                library_name=LIBRARY_NAME,
                library_version=__version__,
            )
        )
    except HFValidationError as err:
        raise ValueError(f"Invalid Hub repo id or revision ({repo_id!r}, {revision!r}): {err}") from None
    except Exception as err:
        if not isinstance(err, _download_errors()):
            raise
        if missing_ok and (_server_said_missing(err) or _offline_cache_miss(err, local_files_only)):
            return None
        if filename in (CONFIG_NAME, WEIGHTS_NAME) and _server_said_missing(err):
            _refuse_pickle_only_repo(
                repo_id, revision, endpoint=endpoint, token=token, offline=local_files_only
            )
        raise _download_error(
            err,
            repo_id,
            filename,
            revision,
            endpoint=endpoint,
            cache_dir=cache_dir,
            offline=local_files_only,
        ) from err


def _server_said_missing(err: BaseException) -> bool:
    """Whether the server answered that the repo or file is not there (the only case where listing it helps).

    A server that is down, stalls or fails (5xx) has already cost huggingface_hub's retries; asking it again
    for the file list would double that and then hide the real cause.
    """
    return isinstance(err, RemoteEntryNotFoundError | RepositoryNotFoundError) and not isinstance(
        err, RevisionNotFoundError
    )


def _offline_cache_miss(err: BaseException, local_files_only: bool) -> bool:
    """Whether ``err`` is a file absent from the cache in offline mode (an optional file: the next one may be there).

    A weights-only repo loaded offline has no cached config.json (the Hub had none); when no file of the repo is
    cached at all, the last, required download raises the offline error that explains it.
    """
    offline = local_files_only or constants.HF_HUB_OFFLINE
    return offline and isinstance(err, LocalEntryNotFoundError | OfflineModeIsEnabled)


def _refuse_pickle_only_repo(
    repo_id: str, revision: str | None, *, endpoint: str | None, token: str | bool | None, offline: bool
) -> None:
    """Raise UnsafeWeightsError when the repo offers weights only as pickle files (best effort, online only)."""
    if offline or constants.HF_HUB_OFFLINE:
        return
    try:
        files = HfApi(endpoint=endpoint, token=token).list_repo_files(repo_id, revision=revision)
    except Exception as err:
        if not isinstance(err, _download_errors()):
            raise
        return  # the original error explains the failure better
    pickles = find_pickle_files(files)
    if pickles and WEIGHTS_NAME not in files and INDEX_NAME not in files:
        raise UnsafeWeightsError(
            unsafe_weights_message(f"Hub repo {repo_id!r} at revision {revision or 'main'!r}", pickles),
            pickles,
        )


def _download_error(
    err: BaseException,
    repo_id: str,
    filename: str,
    revision: str | None,
    *,
    endpoint: str | None,
    cache_dir: str | None,
    offline: bool = False,
) -> HubDownloadError:
    reason = _reason(err, offline=offline or constants.HF_HUB_OFFLINE)
    try:
        cached_path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    except Exception:  # a malformed cache must not hide the download error
        cached_path = None
    cached = isinstance(cached_path, str)
    cache = str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    if cached:
        cache_note = f"A cached copy exists ({cached_path}); pass local_files_only=True or set HF_HUB_OFFLINE=1 to use it."
    else:
        cache_note = f"No cached copy exists in {cache} (load once while online to use it offline)."
    offline_note = " HF_HUB_OFFLINE is set." if constants.HF_HUB_OFFLINE else ""
    message = (
        f"Could not fetch {filename!r} from Hub repo {repo_id!r} at revision {revision or 'main'!r} "
        f"(endpoint {_endpoint(endpoint)}): {reason}.{offline_note} {cache_note}\n"
        f"Cause: {type(err).__name__}: {first_line(err)}{_underlying(err)}"
    )
    return HubDownloadError(
        message,
        repo_id=repo_id,
        filename=filename,
        revision=revision,
        endpoint=_endpoint(endpoint),
        cached=cached,
    )


def _reason(err: BaseException, *, offline: bool) -> str:
    """What went wrong, in words, from huggingface_hub's error and the error it was raised from."""
    if isinstance(err, RevisionNotFoundError):
        return "the revision does not exist in the repo"
    if isinstance(err, RepositoryNotFoundError):
        return (
            "the repo, revision or file was not found, or access was denied (a private or gated repo needs "
            "token=... or `hf auth login`)"
        )
    if isinstance(err, RemoteEntryNotFoundError):
        return "the file does not exist in the repo at that revision"
    if offline:
        return "the file is not in the local cache, and offline mode (local_files_only=True or HF_HUB_OFFLINE=1) forbids contacting the Hub"
    for cause in _causes(err):
        reason = _transport_reason(cause)
        if reason is not None:
            return reason
    if isinstance(err, LocalEntryNotFoundError | EntryNotFoundError):
        return "the file is not in the local cache and the Hub could not be reached"
    return "the Hub could not be reached or the transfer failed"


def _transport_reason(cause: BaseException) -> str | None:
    """Why the endpoint gave no file, when ``cause`` says it (offline, timeout, refused, an HTTP status)."""
    if isinstance(cause, OfflineModeIsEnabled):
        return "the file is not in the local cache, and offline mode forbids contacting the Hub"
    if _is_timeout(cause):
        return (
            "the endpoint did not answer in time, after huggingface_hub's retries (HF_HUB_ETAG_TIMEOUT="
            f"{constants.HF_HUB_ETAG_TIMEOUT} s for file metadata, HF_HUB_DOWNLOAD_TIMEOUT="
            f"{constants.HF_HUB_DOWNLOAD_TIMEOUT} s for downloads; raise them for a slow network)"
        )
    if _is_connect_error(cause):
        return (
            "could not connect to the endpoint (connection refused or no route), after huggingface_hub's "
            "retries; check the network and the endpoint (HF_ENDPOINT or endpoint=...)"
        )
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if isinstance(cause, HfHubHTTPError) and isinstance(status, int):
        if status >= 500 or status in (408, 429):  # the statuses huggingface_hub retries
            return f"the server answered HTTP {status}, also to huggingface_hub's retries; try again later"
        return f"the server answered HTTP {status}"
    if isinstance(cause, FileMetadataError):
        return "the endpoint's answer lacks the Hub's headers (is the endpoint a Hub-compatible server?)"
    return None


def _underlying(err: BaseException) -> str:
    """`` (from <error>)`` for the transport error ``err`` was raised from, if any."""
    for cause in _causes(err)[1:]:
        if _transport_reason(cause) is not None:
            return f" (from {type(cause).__name__}: {first_line(cause)})"
    return ""


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and the errors it was raised from (its ``__cause__`` chain, at most a few links)."""
    chain = [err]
    while chain[-1].__cause__ is not None and len(chain) < 8:
        chain.append(chain[-1].__cause__)
    return chain


def _is_timeout(err: BaseException) -> bool:
    return isinstance(err, (TimeoutError, *_client_errors("TimeoutException", "Timeout")))


def _is_connect_error(err: BaseException) -> bool:
    return isinstance(err, (ConnectionError, *_client_errors("ConnectError", "ConnectionError")))


def _client_errors(httpx_name: str, requests_name: str) -> tuple[type[BaseException], ...]:
    """One exception class of each HTTP client huggingface_hub may use (httpx2, httpx, requests) that is installed."""
    found: list[type[BaseException]] = []
    for module, attr in (("httpx2", httpx_name), ("httpx", httpx_name), ("requests", requests_name)):
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _download_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "this download failed" across huggingface_hub versions."""
    classes: list[type[BaseException]] = [HfHubHTTPError, EntryNotFoundError, OSError]
    for module, attr in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        classes.append(cls)
    return tuple(classes)


def _commit_of(path: Path) -> str | None:
    """The commit sha of a file in ``.../snapshots/<commit>/<file>``, if it lies there."""
    commit = path.parent.name
    return commit if path.parent.parent.name == "snapshots" and COMMIT.fullmatch(commit) else None


def _remove_cached(path: Path) -> list[str]:
    """Delete a cached file: the blob the snapshot entry links to, and the entry itself."""
    removed = []
    blob = path.resolve()
    for item in {blob, path.absolute()}:
        if item.is_symlink() or item.exists():
            item.unlink()
            removed.append(str(item))
    return sorted(removed)


def _endpoint(endpoint: str | None) -> str:
    return endpoint or constants.ENDPOINT


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (or ``"(no message)"``)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"
