"""Load a network (or some of its layers) from a local folder, a Hub repo or the zoo.

``source`` is one of:

* a local folder written by :func:`~lightning_dnn.hub.save_pretrained` (``str`` or ``os.PathLike``), or any
  folder with ``model.safetensors`` or a sharded ``model.safetensors.index.json`` (with ``into=``), or a single
  ``.safetensors`` file (with ``into=``);
* ``"hf://org/name"`` or ``"hf://org/name@revision"`` (branch, tag or commit), fetched through huggingface_hub
  into its cache (``HF_ENDPOINT``/``endpoint=``, ``HF_HUB_OFFLINE``/``local_files_only=``, tokens);
* ``"zoo:name"``: resolved through the zoo index (:mod:`lightning_dnn.hub.zoo`) to a Hub repo at a pinned commit,
  with the sha256 of each file verified after download (a mismatch deletes the file from the cache and raises);
  a local clone's zoo folder with matching hashes is used without any network access.

Folders written by other libraries are recognised (see ``docs/FOREIGN_FORMATS.md``): timm's ``save_for_hf``/
``push_to_hf_hub`` (``config.json`` with ``architecture``; built with torchvision for a known family or with timm,
or loaded ``into=`` any network) and huggingface_hub's ``PyTorchModelHubMixin`` (its card's tag; ``config.json``
holds constructor arguments, so it loads ``into=`` the user's network); :attr:`LoadReport.source_format` names the
format. A ``config.json`` that matches no format is refused without ``into`` with the list of formats recognised.

Only safetensors files are ever read (``model.safetensors``, or the shards an index's ``weight_map`` names:
plain file names next to the index, never paths): a folder or repo that has only pickle files (``pytorch_model.bin``,
``*.pt``, ``*.pkl``, ``*.ckpt``), or a pickle saved under that name, is refused with
:class:`~lightning_dnn.hub.UnsafeWeightsError`. Its header is checked before any tensor is read
(:class:`~lightning_dnn.hub.WeightsFileError` names the file and what is wrong), and the network ``config.json``
describes is first built on the meta device and compared with the file: a config that asks for far more
elements than the file holds is refused before anything is allocated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_dnn._selection import Patterns
from lightning_dnn.hub._build import (
    architecture_of_config,
    build_and_load,
    check_config_size,
    class_path_spec,
    meta_skeleton,
)
from lightning_dnn.hub._download import fetch_repo_folder, first_line, verify_sha256
from lightning_dnn.hub._formats import (
    LIGHTNING_DNN,
    TIMM,
    FolderFormat,
    detect_format,
    folder_format,
    pickle_hint,
    unbuildable_message,
)
from lightning_dnn.hub._io import (
    CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    device_of,
    find_pickle_files,
    read_config,
    read_json,
    unsafe_weights_message,
)
from lightning_dnn.hub._layouts import timm_layout
from lightning_dnn.hub._names import REPO_ID
from lightning_dnn.hub._plan import LoadReport, check_options, load_into
from lightning_dnn.hub._weights import load_all, read_headers, weight_files
from lightning_dnn.hub.architectures import ArchitectureSpec
from lightning_dnn.hub.errors import ChecksumMismatchError, HubDownloadError, UnsafeWeightsError
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
            the one ``config.json`` describes; needed when the source has no config.json (a bare
            ``model.safetensors``, a sharded repo, a single file) or records only a class path. It is modified in
            place and returned. When the file's names are relative to one of its children (a LightningModule
            holding ``self.net``), the tensors go into that child, ``include``/``exclude`` are relative to it, and
            :attr:`LoadReport.prefix` names it. A timm repo (``config.json`` with ``architecture``) has its names
            mapped onto the torchvision network of that name (see ``hub/_layouts.py``); without ``into`` that
            torchvision network is built, or timm's own for an architecture torchvision lacks (timm installed).
            A PyTorchModelHubMixin folder needs ``into`` (its config does not name its class).
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
        StrictLoadError: also for a tensor whose dtype kind differs from the target's (integer or bool weights
            into float parameters); ``strict=False`` warns and leaves it out.
        UnsafeWeightsError: if the weights exist only as pickle files, or model.safetensors is a pickle (for a
            timm folder, the message says how timm writes safetensors).
        WeightsFileError: if model.safetensors is empty, truncated or not a safetensors file.
        HubDownloadError: if a Hub file cannot be fetched (names the repo, file, revision, endpoint, the cause
            and whether a cached copy exists); :class:`~lightning_dnn.hub.ChecksumMismatchError` for a zoo hash
            mismatch (downloaded, or in a local zoo folder the Hub cannot replace).
        FileNotFoundError: for a local folder that does not exist or lacks a file; for a source without
            config.json and no ``into``.
        TypeError, ValueError: for invalid arguments; ValueError for a config.json that is not valid, does not
            build its architecture, names a class that is untrusted (never imported) or has no recorded
            constructor arguments (pass ``into``), or describes far more elements than the weights hold; without
            ``into``, for another library's config.json that cannot be built (PyTorchModelHubMixin, transformers,
            one no rule recognises: the message names the format, or lists the formats recognised).

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
    path, described = resolve_source(
        source,
        revision=revision,
        endpoint=endpoint,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    files = weight_files(path)
    config_path = path / CONFIG_NAME if path.is_dir() and (path / CONFIG_NAME).is_file() else None
    document, fmt = _read_document(config_path, mandatory=into is None, described=described)
    header = read_headers(files, described)
    layout = timm_layout(document) if fmt.name == TIMM else None
    if fmt.name != LIGHTNING_DNN:
        log.info("%s: %s folder (%s)", described, fmt.name, fmt.evidence)
    if into is not None or layout is not None:
        net = into if into is not None else layout.build().to(device)  # type: ignore[union-attr]
        tensors = load_all(files, device, described)
        if layout is not None:
            tensors = layout.translate(tensors)
        report = load_into(
            net, tensors, include=include, exclude=exclude, rename=rename, strict=strict, source=described
        )
        report.source_format = fmt.name
        return (net, report) if into is not None else (net.eval(), report)
    assert document is not None and config_path is not None  # _read_document raised otherwise
    if "class_path" in document:
        spec: ArchitectureSpec = class_path_spec(document, config_path)
        build_document = {"config": document["init_args"]}
    else:
        spec, build_document = architecture_of_config(document, config_path), document
    skeleton = meta_skeleton(spec, build_document, config_path)
    if skeleton is not None:
        check_config_size(skeleton, header, spec, config_path, files[0])
    tensors = load_all(files, device, described)
    net, report = build_and_load(
        spec, build_document, skeleton, tensors, device, include, exclude, rename, strict, described
    )
    report.source_format = fmt.name
    return net.eval(), report


def _read_document(
    config_path: Path | None, *, mandatory: bool, described: str
) -> tuple[dict[str, Any] | None, FolderFormat]:
    """The source's config.json (checked when it is ours, as it is when foreign; ``None`` when absent) and format.

    Raises:
        FileNotFoundError: without config.json when a network must be built (``mandatory``).
        ValueError: for a config.json a network cannot be built from when one must be (it names the format
            recognised and what to do, or lists the formats recognised when it matches none).
    """
    if config_path is None:
        if mandatory:
            raise FileNotFoundError(
                f"{described} has weights but no {CONFIG_NAME}, so there is no network to build; build it yourself "
                "and load into it: load_pretrained(source, into=net)"
            )
        return None, detect_format(None, None)
    document = read_json(config_path)
    fmt = detect_format(document, config_path.parent)
    if fmt.name == LIGHTNING_DNN:
        return read_config(config_path), fmt
    if mandatory and fmt.name != TIMM:
        raise ValueError(unbuildable_message(fmt, config_path, document))
    return document, fmt


def resolve_source(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> tuple[Path, str]:
    """Turn ``source`` into a local folder holding the weights (downloading if needed), or the file given.

    Returns:
        ``(folder, description)``, the description naming the source for messages; for a local ``.safetensors``
        file, ``(file, description)``.

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
    if folder.is_file() and folder.name.endswith(".safetensors"):
        return folder, f"file {str(folder)!r}"
    if not folder.is_dir():
        hint = ""
        if isinstance(source, str) and REPO_ID.fullmatch(source):
            hint = f" For a Hub repo write 'hf://{source}'."
        raise FileNotFoundError(
            f"`source` {str(source)!r} is not an existing folder or .safetensors file.{hint}"
        )
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


def _zoo_entry(
    source: str, revision: str | None
) -> tuple[str, tuple[str, str, dict[str, str], Path | None]]:
    """``(name, resolve_zoo(name))`` of a ``zoo:name`` source; a ``revision`` other than the pinned one is refused."""
    name = source[len(ZOO_PREFIX) :]
    entry = resolve_zoo(name)
    repo_id, pinned = entry[0], entry[1]
    if revision is not None and revision != pinned:
        raise ValueError(
            f"`revision`={revision!r} cannot override zoo entry {name!r}, which is pinned to {pinned}; "
            f"load 'hf://{repo_id}@{revision}' to get another revision (without the zoo's hash check)"
        )
    return name, entry


def _resolve_zoo_source(
    source: str,
    revision: str | None,
    *,
    endpoint: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
) -> tuple[Path, str]:
    name, (repo_id, pinned, hashes, local) = _zoo_entry(source, revision)
    stale = _stale_files(local, hashes) if local is not None else {}
    if local is not None and not stale:
        return local, f"zoo:{name} (local folder {str(local)!r})"
    if local is not None:
        log.warning(
            "zoo:%s: the local folder %s differs from the zoo index (%s); loading the pinned files from the Hub",
            name,
            local,
            ", ".join(stale),
        )
    try:
        folder = fetch_repo_folder(
            repo_id,
            pinned,
            endpoint=endpoint,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            sha256=hashes,
        )
    except HubDownloadError as err:
        if local is None or not stale:
            raise
        raise _local_mismatch_error(name, local, stale, hashes, f"hf://{repo_id}@{pinned}", err) from err
    return folder, f"zoo:{name} (hf://{repo_id}@{pinned})"


def _stale_files(local: Path, hashes: Mapping[str, str]) -> dict[str, str | None]:
    """The files of a local zoo folder that differ from the index: name -> actual sha256 (``None``: missing)."""
    stale: dict[str, str | None] = {}
    for filename, expected in hashes.items():
        path = local / filename
        if not path.is_file():
            stale[filename] = None
        elif (actual := verify_sha256(path, expected)) is not None:
            stale[filename] = actual
    return stale


def _local_mismatch_error(
    name: str,
    local: Path,
    stale: Mapping[str, str | None],
    hashes: Mapping[str, str],
    pinned: str,
    err: HubDownloadError,
) -> ChecksumMismatchError:
    """The hash mismatch of a local zoo folder as the cause, with the Hub failure that kept it from being replaced."""
    lines = [
        f"  {str(local / f)!r}: " + (f"sha256 {actual}, the index pins {hashes[f]}" if actual else "missing")
        for f, actual in stale.items()
    ]
    filename, actual = next(iter(stale.items()))
    return ChecksumMismatchError(
        f"zoo:{name}: the local zoo folder {str(local)!r} does not match the zoo index:\n"
        + "\n".join(lines)
        + "\n"
        f"The pinned files could not be fetched from the Hub instead ({pinned}): {first_line(err)}\n"
        f"Restore the folder (`git checkout -- {str(local)!r}` in your clone; `git status` shows what changed), "
        "or go online so the pinned files come from the Hub.",
        expected=hashes[filename],
        actual=actual,
        repo_id=err.repo_id,
        filename=filename,
        revision=err.revision,
        endpoint=err.endpoint,
        cached=err.cached,
    )


def _check_local_folder(folder: Path) -> None:
    if (folder / WEIGHTS_NAME).is_file() or (folder / INDEX_NAME).is_file():
        return
    pickles = find_pickle_files(p.name for p in folder.iterdir() if p.is_file())
    if pickles:
        hint = pickle_hint(folder_format(folder))
        raise UnsafeWeightsError(unsafe_weights_message(f"Folder {str(folder)!r}", pickles) + hint, pickles)
    raise FileNotFoundError(
        f"Folder {str(folder)!r} has no {WEIGHTS_NAME} (nor a sharded {INDEX_NAME}); a lightning-dnn folder "
        f"holds {CONFIG_NAME}, {WEIGHTS_NAME} and README.md, written by lightning_dnn.hub.save_pretrained"
    )
