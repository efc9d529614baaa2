"""The README.md model card: Hub front matter (YAML) plus a body generated from config.json."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import ModelCardData

from lightning_dnn.hub._io import LIBRARY_NAME

DEFAULT_LICENSE = "apache-2.0"
CARD_KEYS = ("title", "description", "license", "datasets", "tags", "repo_id")


def check_card(card: object) -> str | dict[str, Any] | None:
    """Validate the ``card`` argument: ``None``, a full README text, or a mapping of :data:`CARD_KEYS`."""
    if card is None or isinstance(card, str):
        return card
    if not isinstance(card, Mapping):
        raise TypeError(f"`card` must be None, a README text (str) or a mapping, got {type(card).__name__}")
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"`card` has unknown key(s) {unknown}; allowed keys: {list(CARD_KEYS)}")
    for key in ("title", "description", "license", "repo_id"):
        if key in card and not isinstance(card[key], str):
            raise TypeError(f"`card[{key!r}]` must be a string, got {type(card[key]).__name__} {card[key]!r}")
    for key in ("datasets", "tags"):
        if key in card and not _is_str_list(card[key]):
            raise TypeError(f"`card[{key!r}]` must be a list of strings, got {card[key]!r}")
    return dict(card)


def render_model_card(document: Mapping[str, Any], card: str | Mapping[str, Any] | None = None) -> str:
    """Return the README.md text for a folder whose config.json is ``document``.

    ``card`` is ``None`` (everything generated), a mapping of :data:`CARD_KEYS` overriding parts of the
    generated card, or a README text: used as is when it starts with front matter (``---``), otherwise as the
    body under generated front matter.
    """
    options = check_card(card)
    metadata = document.get("metadata") or {}
    fields: dict[str, Any] = dict(options) if isinstance(options, dict) else {}
    front = _front_matter(document, metadata, fields)
    if isinstance(options, str):
        if options.lstrip().startswith("---"):
            return options if options.endswith("\n") else options + "\n"
        return f"---\n{front}---\n\n{options.strip()}\n"
    return f"---\n{front}---\n\n{_body(document, metadata, fields)}"


def _front_matter(document: Mapping[str, Any], metadata: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    datasets = fields.get("datasets")
    if datasets is None and isinstance(metadata.get("dataset"), str):
        datasets = [metadata["dataset"]]
    metrics = metadata.get("metrics")
    tags = [LIBRARY_NAME, "pytorch", str(document.get("architecture", "")).lower()]
    tags += [t for t in fields.get("tags", []) if t not in tags]
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        license=fields.get("license") or metadata.get("license") or DEFAULT_LICENSE,
        datasets=list(datasets) if datasets else None,
        metrics=sorted(metrics) if isinstance(metrics, Mapping) and metrics else None,
        tags=[t for t in tags if t],
    )
    text: str = data.to_yaml()
    return text if text.endswith("\n") else text + "\n"


def _body(document: Mapping[str, Any], metadata: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    architecture = str(document.get("architecture"))
    repo_id = fields.get("repo_id")
    source = f"hf://{repo_id}" if repo_id else "path/to/this/folder"
    title = fields.get("title") or (f"{repo_id}" if repo_id else f"lightning-dnn {architecture}")
    lines = [f"# {title}", ""]
    if fields.get("description"):
        lines += [str(fields["description"]).strip(), ""]
    lines += [
        "## Architecture",
        "",
        f"`{architecture}` from [lightning-dnn](https://pypi.org/project/lightning-dnn/) "
        f"{document.get('library_version', '')}, built with:",
        "",
        "| argument | value |",
        "|---|---|",
    ]
    for key, value in (document.get("config") or {}).items():
        lines.append(f"| `{key}` | `{json.dumps(value)}` |")
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "from lightning_dnn.hub import load_pretrained",
        "",
        f'net, report = load_pretrained("{source}")',
        "# reuse only the lower layers, e.g. in a new network with another head:",
        f'net, report = load_pretrained("{source}", include="hidden[12]", into=new_net)',
        "```",
        "",
        "Weights are stored as safetensors (no pickle).",
        "",
    ]
    if metadata.get("dataset") or metadata.get("classes"):
        lines += ["## Training data", ""]
        if metadata.get("dataset"):
            lines.append(f"- dataset: `{metadata['dataset']}`")
        if metadata.get("classes"):
            lines.append(f"- classes: {', '.join(str(c) for c in metadata['classes'])}")
        lines.append("")
    metrics = metadata.get("metrics")
    if isinstance(metrics, Mapping) and metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        for name, value in metrics.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"| {name} | {shown} |")
        lines.append("")
    return "\n".join(lines)


def _is_str_list(value: object) -> bool:
    return (
        isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(v, str) for v in value)
    )
