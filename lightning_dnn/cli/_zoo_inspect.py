"""What the zoo commands show about an entry: its local folder's state, its cached copy, its revision, its card.

Example:
    >>> from lightning_dnn.hub.zoo import ZooEntry
    >>> local_state(ZooEntry("m", "org/m", "a" * 40, {"config.json": "b" * 64}))
    ('no local folder in the index', None)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open

from lightning_dnn.cli._zoo_repo import canonical_commit
from lightning_dnn.hub._download import verify_sha256
from lightning_dnn.hub._io import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from lightning_dnn.hub.zoo import ZooEntry

__all__ = ["availability", "cached_folder", "card_summary", "local_state", "revision_kind"]


def local_state(entry: ZooEntry) -> tuple[str, Path | None]:
    """``(state, folder)``: the folder when the clone holds it with the pinned hashes."""
    path = entry.local_path
    if path is None:
        return "no local folder in the index", None
    if not path.is_dir():
        return "absent", None
    stale = [n for n, sha in entry.files.items() if not (path / n).is_file() or verify_sha256(path / n, sha)]
    if stale:
        return f"differs from the index: {', '.join(sorted(stale))}", None
    return "verified", path


def cached_folder(entry: ZooEntry) -> Path | None:
    """The Hugging Face cache's snapshot of the pinned commit, when it holds every pinned file verified."""
    folder: Path | None = None
    for name, sha in entry.files.items():
        try:
            cached = try_to_load_from_cache(entry.repo_id, name, revision=entry.revision)
        except Exception:  # a malformed cache means "not cached"
            return None
        if not isinstance(cached, str) or verify_sha256(Path(cached), sha):
            return None
        folder = Path(cached).parent
    return folder


def availability(entry: ZooEntry) -> str | None:
    if local_state(entry)[1] is not None:
        return "local"
    return "cached" if cached_folder(entry) is not None else None


def revision_kind(entry: ZooEntry, local: Path | None) -> str:
    if local is None:
        return "pinned commit"
    try:
        unpublished = canonical_commit(local, entry.name) == entry.revision
    except (FileNotFoundError, ValueError):
        return "pinned commit"
    if unpublished:
        return "canonical local commit (not published to the Hub yet: lightning-dnn zoo publish)"
    return "pinned commit (published)"


def card_summary(folder: Path) -> dict[str, Any] | None:
    """Title, description and front matter of README.md, with architecture and data from config.json."""
    card_path, config_path = folder / CARD_NAME, folder / CONFIG_NAME
    if not card_path.is_file() or not config_path.is_file():
        return None
    text = card_path.read_text(encoding="utf-8")
    front: dict[str, Any] = {}
    body = text
    if text.startswith("---"):
        _, _, rest = text.partition("---\n")
        head, _, body = rest.partition("\n---")
        loaded = yaml.safe_load(head)
        front = loaded if isinstance(loaded, dict) else {}
    lines = [line.strip() for line in body.splitlines()]
    heading = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
    title = lines[heading][2:] if heading is not None else folder.name
    paragraph: list[str] = []
    for line in lines[(heading or -1) + 1 :]:
        if line.startswith("#") or (not line and paragraph):
            break
        if line:
            paragraph.append(line)
    document = json.loads(config_path.read_text(encoding="utf-8"))
    metadata = document.get("metadata") or {}
    weights = folder / WEIGHTS_NAME
    return {
        "title": title,
        "description": " ".join(paragraph),
        "architecture": document.get("architecture"),
        "dataset": metadata.get("dataset"),
        "classes": metadata.get("classes"),
        "parameters": _parameter_count(weights) if weights.is_file() else None,
        "datasets": front.get("datasets"),
        "tags": front.get("tags"),
        "license": front.get("license"),
    }


def _parameter_count(weights: Path) -> int:
    total = 0
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                total += int(_numel(f.get_slice(key).get_shape()))
    return total


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for dim in shape:
        out *= int(dim)
    return out
