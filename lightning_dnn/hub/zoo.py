"""The zoo index: ``zoo:name`` -> a Hub repo at a pinned commit, with the sha256 of each file.

The index ships inside the package (``lightning_dnn/hub/zoo_index.json``, a copy of the repository's
``zoo/index.json`` that ``lightning-dnn zoo build|publish`` keep identical), so ``zoo:`` names resolve after a plain
``pip install``. The ``LIGHTNING_DNN_ZOO_INDEX`` environment variable points the loader at another index file::

    {"models": {"digits-mlp": {"repo_id": "lightning-dnn/digits-mlp",
                               "revision": "<40-hex commit sha>",
                               "files": {"config.json": "<sha256>", "model.safetensors": "<sha256>",
                                         "README.md": "<sha256>"},
                               "metrics": {"test_accuracy": 0.97}, "license": "apache-2.0",
                               "path": "zoo/digits-mlp"}}}

``path`` (optional) is the entry's Hub-format folder relative to the repository root: the folder that holds
``zoo/`` for an index file, and the folder that holds the ``lightning_dnn`` package for the packaged index. In a
clone (or an editable install) that folder exists, and when its files have the pinned hashes
``load_pretrained("zoo:name")`` serves it without any network access. After a wheel install it does not exist,
and the files come through huggingface_hub from the Hub repo at the pinned revision (``HF_ENDPOINT``, its cache,
``HF_HUB_OFFLINE``), verified after download.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_dnn._checks import unknown_name_error
from lightning_dnn.hub._io import CONFIG_NAME, WEIGHTS_NAME
from lightning_dnn.hub._names import COMMIT, REPO_ID, SHA256

__all__ = [
    "PACKAGED_INDEX_PATH",
    "ZOO_INDEX_ENV",
    "ZooEntry",
    "default_index_path",
    "load_zoo_index",
    "resolve_zoo",
]

#: The environment variable that points the loader at another index file.
ZOO_INDEX_ENV = "LIGHTNING_DNN_ZOO_INDEX"
#: The index inside the package (package data), a copy of the repository's ``zoo/index.json``.
PACKAGED_INDEX_PATH = Path(__file__).resolve().with_name("zoo_index.json")
# The root that the packaged index's ``path`` fields are relative to: the folder holding the package (a clone's
# root in a clone or an editable install; site-packages after a wheel install, where no zoo folder exists).
_PACKAGE_ROOT = PACKAGED_INDEX_PATH.parents[2]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model.

    Attributes:
        name: the zoo name (``zoo:<name>``).
        repo_id: the Hub repository.
        revision: the pinned commit (40 hex digits).
        files: file name -> sha256 (hex) of every file the loader verifies; includes config.json and
            model.safetensors.
        metrics: the metrics recorded for the published weights.
        license: the weights' license.
        local_path: the entry's folder in a local clone, or ``None``.

    Example:
        >>> entry = ZooEntry("m", "org/m", "a" * 40, {"config.json": "b" * 64, "model.safetensors": "c" * 64})
        >>> entry.repo_id, entry.local_path
        ('org/m', None)
    """

    name: str
    repo_id: str
    revision: str
    files: Mapping[str, str]
    metrics: Mapping[str, float] = field(default_factory=dict)
    license: str | None = None
    local_path: Path | None = None


def default_index_path() -> Path:
    """The index file: ``$LIGHTNING_DNN_ZOO_INDEX`` if set, else the packaged index (:data:`PACKAGED_INDEX_PATH`).

    Example:
        >>> default_index_path().name in ("zoo_index.json", "index.json")
        True
    """
    env = os.environ.get(ZOO_INDEX_ENV)
    if env:
        return Path(env)
    return PACKAGED_INDEX_PATH


def load_zoo_index(path: str | os.PathLike[str] | None = None) -> dict[str, ZooEntry]:
    """Read and validate the zoo index.

    Args:
        path: the index file; ``None`` for :func:`default_index_path`.

    Returns:
        name -> :class:`ZooEntry`.

    Raises:
        FileNotFoundError: if the index does not exist.
        ValueError: if it is malformed (the message names the entry and field).

    Example:
        >>> import json, tempfile
        >>> entry = {"repo_id": "org/m", "revision": "a" * 40,
        ...          "files": {"config.json": "b" * 64, "model.safetensors": "c" * 64}}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = open(f"{tmp}/index.json", "w").write(json.dumps({"models": {"m": entry}}))
        ...     print(load_zoo_index(f"{tmp}/index.json")["m"].repo_id)
        org/m
    """
    index_path = Path(path) if path is not None else default_index_path()
    if not index_path.is_file():
        raise FileNotFoundError(
            f"No zoo index at {str(index_path)!r}. Set {ZOO_INDEX_ENV} to an index file (a clone's zoo/index.json), "
            "or unset it to use the index packaged with lightning-dnn."
        )
    try:
        document = json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"Zoo index {str(index_path)!r} is not valid JSON: {err}") from None
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f"Zoo index {str(index_path)!r} must be a JSON object with a 'models' object")
    root = (
        _PACKAGE_ROOT if index_path.resolve() == PACKAGED_INDEX_PATH else index_path.resolve().parent.parent
    )
    return {name: _entry(name, raw, root, index_path) for name, raw in models.items()}


def resolve_zoo(name: str) -> tuple[str, str, dict[str, str], Path | None]:
    """Resolve a zoo name: ``(repo_id, revision, {filename: sha256}, local_folder_or_None)``.

    ``local_folder`` is the entry's folder in a local clone when it exists (its hashes are checked by the
    loader before it is used).

    Raises:
        ValueError: for an unknown name (with close matches) or a malformed index.
        FileNotFoundError: if there is no index.

    Example:
        >>> import json, os, tempfile
        >>> entry = {"repo_id": "org/m", "revision": "a" * 40, "path": "zoo/m",
        ...          "files": {"config.json": "b" * 64, "model.safetensors": "c" * 64}}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     os.makedirs(f"{tmp}/zoo/m")
        ...     _ = open(f"{tmp}/zoo/index.json", "w").write(json.dumps({"models": {"m": entry}}))
        ...     os.environ[ZOO_INDEX_ENV] = f"{tmp}/zoo/index.json"
        ...     repo_id, revision, files, local = resolve_zoo("m")
        ...     del os.environ[ZOO_INDEX_ENV]
        >>> repo_id, revision == "a" * 40, sorted(files), local.name
        ('org/m', True, ['config.json', 'model.safetensors'], 'm')
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"zoo `name` must be a non-empty string, got {name!r}")
    index = load_zoo_index()
    if name not in index:
        raise unknown_name_error("zoo model", name, index)
    entry = index[name]
    local = entry.local_path if entry.local_path is not None and entry.local_path.is_dir() else None
    return entry.repo_id, entry.revision, dict(entry.files), local


def _entry(name: str, raw: Any, root: Path, index_path: Path) -> ZooEntry:
    where = f"zoo index {str(index_path)!r}, entry {name!r}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a JSON object")
    repo_id, revision, files = raw.get("repo_id"), raw.get("revision"), raw.get("files")
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"{where}: 'repo_id' must look like 'org/name', got {repo_id!r}")
    if not isinstance(revision, str) or not COMMIT.fullmatch(revision):
        raise ValueError(
            f"{where}: 'revision' must be a pinned commit (40 lowercase hex digits), got {revision!r}"
        )
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and SHA256.fullmatch(v) for k, v in files.items()
    ):
        raise ValueError(f"{where}: 'files' must map file names to sha256 hex digests, got {files!r}")
    lacking = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if f not in files]
    if lacking:
        raise ValueError(f"{where}: 'files' must pin {lacking} too")
    metrics = raw.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ValueError(f"{where}: 'metrics' must be an object, got {metrics!r}")
    license_ = raw.get("license")
    if license_ is not None and not isinstance(license_, str):
        raise ValueError(f"{where}: 'license' must be a string, got {license_!r}")
    path = raw.get("path")
    if path is not None and not isinstance(path, str):
        raise ValueError(f"{where}: 'path' must be a string, got {path!r}")
    return ZooEntry(
        name=name,
        repo_id=repo_id,
        revision=revision,
        files=dict(files),
        metrics=dict(metrics),
        license=license_,
        local_path=(root / path) if path else None,
    )
