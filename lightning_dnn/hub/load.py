"""Load a network (or some of its layers) from a local folder, a Hub repo or the zoo.

``source`` is one of:

* a local folder written by :func:`~lightning_dnn.hub.save_pretrained` (``str`` or ``os.PathLike``);
* ``"hf://org/name"`` or ``"hf://org/name@revision"`` (branch, tag or commit), fetched through huggingface_hub
  into its cache (``HF_ENDPOINT``/``endpoint=``, ``HF_HUB_OFFLINE``/``local_files_only=``, tokens);
* ``"zoo:name"``: resolved through the zoo index (:mod:`lightning_dnn.hub.zoo`) to a Hub repo at a pinned commit,
  with the sha256 of each file verified after download (a mismatch deletes the file from the cache and raises);
  a local clone's zoo folder with matching hashes is used without any network access.

Only ``model.safetensors`` is ever read: a folder or repo that has only pickle files (``pytorch_model.bin``,
``*.pt``, ``*.pkl``, ``*.ckpt``) is refused with :class:`~lightning_dnn.hub.UnsafeWeightsError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from lightning_dnn._selection import Patterns
from lightning_dnn.hub._download import fetch_repo_folder, verify_sha256
from lightning_dnn.hub._io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    device_of,
    find_pickle_files,
    read_config,
    unsafe_weights_message,
)
from lightning_dnn.hub._names import REPO_ID
from lightning_dnn.hub._plan import (
    LoadReport,
    apply_rename,
    check_options,
    copy_pairs,
    enforce_strictness,
    plan_partial_load,
)
from lightning_dnn.hub.architectures import get_architecture
from lightning_dnn.hub.errors import UnsafeWeightsError
from lightning_dnn.hub.zoo import resolve_zoo

__all__ = ["load_pretrained", "resolve_source"]

log = logging.getLogger(__name__)

HF_PREFIX = "hf://"
ZOO_PREFIX = "zoo:"


def load_pretrained(
    source: str | os.PathLike[str],
    *,
    include: Patterns | None = None,
    exclude: Patterns | None = None,
    rename: Mapping[str, str] | None = None,
    revision: str | None = None,
    strict: bool = True,
    into: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> tuple[nn.Module, LoadReport]:
    """Build a network from ``source`` (or take ``into``) and load the selected tensors into it by name.

    Selection and strictness follow :func:`~lightning_dnn.hub.partial.load_state_dict_partial`: ``rename``
    maps prefixes of the file's names, then ``include``/``exclude`` select names by the library's selection rule
    (``include="hidden[123]"`` takes ``hidden1.*`` to ``hidden3.*``); with ``strict=True`` anything missing,
    unexpected or shape-mismatched in the selection raises :class:`~lightning_dnn.hub.StrictLoadError` with the
    full list, and nothing is copied.

    Args:
        source: a local folder, ``"hf://org/name[@revision]"`` or ``"zoo:name"`` (see the module docstring).
        include: regex(es) selecting the names to load; ``None`` selects every name.
        exclude: regex(es) removing names from the selection.
        rename: old prefix -> new prefix for the file's names (to load into differently named layers).
        revision: branch, tag or commit for ``hf://`` sources (or give it as ``hf://org/name@revision``; both
            given and different is an error). Not allowed for ``zoo:`` (entries are pinned) or local folders.
        strict: raise on any problem in the selection (copying nothing); ``False`` warns and copies what fits.
        into: an existing network to load into (e.g. a bigger one, or one with a new head) instead of building
            the one ``config.json`` describes. It is modified in place and returned.
        map_location: where the tensors are loaded; a network built from ``config.json`` is placed there too.
        endpoint: the Hub endpoint (default ``HF_ENDPOINT``, i.e. https://huggingface.co).
        token: a Hub token (default: huggingface_hub's, from ``HF_TOKEN`` or ``hf auth login``).
        cache_dir: the Hugging Face cache folder (default ``HF_HUB_CACHE``).
        local_files_only: use the cache only, never the network (like ``HF_HUB_OFFLINE=1``).

    Returns:
        ``(network, report)``. A network built from ``config.json`` is returned in eval mode; ``into`` keeps its
        mode.

    Raises:
        StrictLoadError: with ``strict=True``, for missing, unexpected or mismatched names.
        UnsafeWeightsError: if the weights exist only as pickle files.
        HubDownloadError: if a Hub file cannot be fetched (names the repo, file, revision, endpoint and whether
            a cached copy exists); :class:`~lightning_dnn.hub.ChecksumMismatchError` for a zoo hash mismatch.
        FileNotFoundError: for a local folder that does not exist or lacks a file.
        TypeError, ValueError: for invalid arguments.

    Example:
        >>> import tempfile
        >>> from lightning_dnn.hub import save_pretrained
        >>> from lightning_dnn.nn import MLP
        >>> trained = MLP(8, (6, 4), 3).eval()
        >>> x = torch.randn(2, 8)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = save_pretrained(trained, tmp)
        ...     net, report = load_pretrained(tmp)
        ...     head_swapped, partial = load_pretrained(tmp, include="hidden[12]", into=MLP(8, (6, 4), 5))
        >>> torch.equal(net(x), trained(x))
        True
        >>> partial.loaded[:2], partial.skipped
        (['hidden1.linear.weight', 'hidden1.linear.bias'], ['output.linear.weight', 'output.linear.bias'])
    """
    device = device_of(map_location)
    check_options(include, exclude, rename, strict)
    if into is not None and not isinstance(into, nn.Module):
        raise TypeError(f"`into` must be an nn.Module or None, got {type(into).__name__}")
    if not isinstance(local_files_only, bool):
        raise TypeError(f"`local_files_only` must be a bool, got {type(local_files_only).__name__}")
    folder, described = resolve_source(
        source,
        revision=revision,
        endpoint=endpoint,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    document = read_config(folder / CONFIG_NAME)
    tensors = load_file(str(folder / WEIGHTS_NAME), device=str(device))
    if into is not None:
        report, pairs = plan_partial_load(into, tensors, include=include, exclude=exclude, rename=rename)
        enforce_strictness(report, strict=strict, source=described, target=into)
        copy_pairs(pairs)
        return into, report
    net, report = _build_and_load(document, tensors, device, include, exclude, rename, strict, described)
    return net.eval(), report


def resolve_source(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> tuple[Path, str]:
    """Turn ``source`` into a local folder holding config.json and model.safetensors (downloading if needed).

    Returns:
        ``(folder, description)``, the description naming the source for messages.

    Raises:
        see :func:`load_pretrained`.

    Example:
        >>> import tempfile
        >>> from lightning_dnn.hub import save_pretrained
        >>> from lightning_dnn.nn import MLP
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = save_pretrained(MLP(4, 3, 2), tmp)
        ...     folder, described = resolve_source(tmp)
        ...     print(folder == Path(tmp), described.startswith("local folder"))
        True True
    """
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise TypeError(f"`revision` must be a non-empty string or None, got {revision!r}")
    if endpoint is not None and not isinstance(endpoint, str):
        raise TypeError(
            f"`endpoint` must be a URL string or None, got {type(endpoint).__name__} {endpoint!r}"
        )
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        repo_id, rev = _parse_hf(source, revision)
        folder = fetch_repo_folder(
            repo_id,
            rev,
            endpoint=endpoint,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        return folder, f"hf://{repo_id}@{rev or 'main'}"
    if isinstance(source, str) and source.startswith(ZOO_PREFIX):
        return _resolve_zoo_source(
            source,
            revision,
            endpoint=endpoint,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"`source` must be a folder path, 'hf://org/name[@revision]' or 'zoo:name', got {type(source).__name__}"
        )
    if revision is not None:
        raise ValueError(
            f"`revision`={revision!r} applies to hf:// sources only, not to the local folder {source!r}"
        )
    folder = Path(source)
    if not folder.is_dir():
        hint = ""
        if isinstance(source, str) and REPO_ID.fullmatch(source):
            hint = f" For a Hub repo write 'hf://{source}'."
        raise FileNotFoundError(f"`source` {str(source)!r} is not an existing folder.{hint}")
    _check_local_folder(folder)
    return folder, f"local folder {str(folder)!r}"


def _parse_hf(source: str, revision: str | None) -> tuple[str, str | None]:
    rest = source[len(HF_PREFIX) :]
    repo_id, sep, rev = rest.partition("@")
    if not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"`source`={source!r}: expected 'hf://org/name' or 'hf://org/name@revision'")
    if sep and not rev:
        raise ValueError(f"`source`={source!r} has an empty revision after '@'")
    in_source = rev or None
    if in_source is not None and revision is not None and in_source != revision:
        raise ValueError(
            f"`source`={source!r} names revision {in_source!r} but `revision`={revision!r}; give one of them"
        )
    return repo_id, in_source or revision


def _resolve_zoo_source(
    source: str,
    revision: str | None,
    *,
    endpoint: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
) -> tuple[Path, str]:
    name = source[len(ZOO_PREFIX) :]
    repo_id, pinned, hashes, local = resolve_zoo(name)
    if revision is not None and revision != pinned:
        raise ValueError(
            f"`revision`={revision!r} cannot override zoo entry {name!r}, which is pinned to {pinned}; "
            f"load 'hf://{repo_id}@{revision}' to get another revision (without the zoo's hash check)"
        )
    if local is not None:
        stale = [f for f, sha in hashes.items() if not (local / f).is_file() or verify_sha256(local / f, sha)]
        if not stale:
            return local, f"zoo:{name} (local folder {str(local)!r})"
        log.info("zoo:%s: local folder %s differs from the index for %s; using the Hub", name, local, stale)
    folder = fetch_repo_folder(
        repo_id,
        pinned,
        endpoint=endpoint,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        sha256=hashes,
    )
    return folder, f"zoo:{name} (hf://{repo_id}@{pinned})"


def _check_local_folder(folder: Path) -> None:
    if (folder / WEIGHTS_NAME).is_file():
        return
    pickles = find_pickle_files(p.name for p in folder.iterdir() if p.is_file())
    if pickles:
        raise UnsafeWeightsError(unsafe_weights_message(f"Folder {str(folder)!r}", pickles), pickles)
    raise FileNotFoundError(
        f"Folder {str(folder)!r} has no {WEIGHTS_NAME} (a lightning-dnn folder holds {CONFIG_NAME}, "
        f"{WEIGHTS_NAME} and README.md, written by lightning_dnn.hub.save_pretrained)"
    )


def _build_and_load(
    document: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
    device: torch.device,
    include: Patterns | None,
    exclude: Patterns | None,
    rename: Mapping[str, str] | None,
    strict: bool,
    described: str,
) -> tuple[nn.Module, LoadReport]:
    """Build the network config.json describes and load into it.

    When the file provides every tensor of the network (same dtypes, no tied or non-persistent tensors), the
    network is built on the meta device (no memory, no random initialization) and the file's tensors become its
    parameters and buffers (``load_state_dict(assign=True)``): no initialization and no copy. Otherwise it is
    built normally, so the names the file does not provide keep their initialization.
    """
    spec = get_architecture(document["architecture"])
    try:
        with torch.device("meta"):
            skeleton: nn.Module | None = spec.build(document["config"])
    except Exception:  # an architecture whose constructor cannot run on meta: build it normally below
        skeleton = None
    if skeleton is None:
        net = spec.build(document["config"]).to(device)
        report, pairs = plan_partial_load(net, tensors, include=include, exclude=exclude, rename=rename)
        enforce_strictness(report, strict=strict, source=described, target=net)
        copy_pairs(pairs)
        return net, report
    report, _ = plan_partial_load(skeleton, tensors, include=include, exclude=exclude, rename=rename)
    enforce_strictness(report, strict=strict, source=described, target=skeleton)
    state = skeleton.state_dict(keep_vars=True)
    renamed = apply_rename(tensors, rename)
    takes_file_tensors = (
        set(report.loaded) == set(state)
        and all(n in state for n, _ in skeleton.named_buffers())  # no non-persistent buffers
        and len({id(t) for t in state.values()}) == len(state)  # no tied tensors
        and all(renamed[n].dtype == state[n].dtype for n in state)
    )
    if takes_file_tensors:
        skeleton.load_state_dict({n: renamed[n] for n in state}, strict=True, assign=True)
        return skeleton, report
    net = spec.build(document["config"]).to(device)
    _, pairs = plan_partial_load(net, tensors, include=include, exclude=exclude, rename=rename)
    copy_pairs(pairs)
    return net, report
