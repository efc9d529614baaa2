"""The README.md model card: Hub front matter (YAML) plus a body generated from config.json.

One renderer for every card: :func:`~lightning_dnn.hub.save_pretrained` and :func:`~lightning_dnn.hub.push_to_hub`
call it, and so does ``lightning-dnn zoo build`` (which records its extra facts, the zoo name and the recipe, in
config.json's metadata). The layer names the card shows come from the network itself (:func:`lower_blocks`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from huggingface_hub import ModelCardData
from torch import nn

from lightning_dnn.hub._io import LIBRARY_NAME
from lightning_dnn.hub.architectures import get_architecture, lower_blocks

__all__ = ["CARD_KEYS", "DEFAULT_LICENSE", "check_card", "include_pattern", "render_model_card"]

DEFAULT_LICENSE = "apache-2.0"
CARD_KEYS = ("title", "description", "license", "datasets", "tags", "repo_id")
_NUMBERED = re.compile(r"(?P<prefix>.*?)(?P<number>[0-9]+)")


def check_card(card: object) -> str | dict[str, Any] | None:
    """Validate the ``card`` argument: ``None``, a full README text, or a mapping of :data:`CARD_KEYS`.

    Raises:
        TypeError: for a value of the wrong type.
        ValueError: for unknown keys.

    Example:
        >>> check_card({"title": "My MLP"})
        {'title': 'My MLP'}
    """
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


def render_model_card(
    document: Mapping[str, Any], card: str | Mapping[str, Any] | None = None, *, net: nn.Module | None = None
) -> str:
    """Return the README.md text for a folder whose config.json is ``document``.

    The body has: title and description, how to load it (and reuse its lower layers under a new head, with the
    network's own layer names), the recipe (for a zoo entry: ``metadata["zoo_name"]`` and
    ``metadata["training"]["recipe"]``), the training data, the metrics, the architecture and the license.

    Args:
        document: the folder's config.json content (``architecture``, ``config``, ``metadata``).
        card: ``None`` (everything generated), a mapping of :data:`CARD_KEYS` overriding parts of the generated
            card, or a README text: used as is when it starts with front matter (``---``), otherwise as the body
            under generated front matter.
        net: the network, for its layer names and parameter count; ``None`` builds it from ``document`` on the
            meta device (no memory); a network that cannot be built that way gets a card without them.

    Returns:
        the README text, ending with a newline.

    Example:
        >>> from lightning_dnn.hub.save import build_config_document
        >>> from lightning_dnn.nn import MLP
        >>> text = render_model_card(build_config_document(MLP(4, (3, 3, 3), 2), {"dataset": "digits"}))
        >>> 'include="hidden[123]"' in text, "- dataset: `digits`" in text
        (True, True)
    """
    options = check_card(card)
    metadata = document.get("metadata") or {}
    fields: dict[str, Any] = dict(options) if isinstance(options, dict) else {}
    front = _front_matter(document, metadata, fields)
    if isinstance(options, str):
        if options.lstrip().startswith("---"):
            return options if options.endswith("\n") else options + "\n"
        return f"---\n{front}---\n\n{options.strip()}\n"
    if net is None:
        net = _skeleton(document)
    sections = (
        _title(document, metadata, fields),
        _how_to_load(document, fields, net),
        _recipe(metadata),
        _training_data(metadata),
        _metrics(metadata),
        _architecture(document, net),
        _license(metadata, fields),
    )
    body = "\n".join(line for section in sections for line in section)
    return f"---\n{front}---\n\n{body}"


def include_pattern(names: Sequence[str]) -> str:
    """A pattern that selects exactly ``names`` under the selection rule (``re.fullmatch`` on module names).

    Numbered names ``prefix1`` ... ``prefixN`` (N < 10) become ``prefix[12...N]``; others are joined with ``|``.

    Example:
        >>> include_pattern(["hidden1", "hidden2", "hidden3"]), include_pattern(["conv1"])
        ('hidden[123]', 'conv1')
        >>> include_pattern(["stem", "layer1"])
        'stem|layer1'
    """
    matches = [_NUMBERED.fullmatch(name) for name in names]
    prefixes = {m.group("prefix") for m in matches if m is not None}
    numbers = [m.group("number") for m in matches if m is not None]
    expected = [str(i) for i in range(1, len(names) + 1)]
    if len(names) > 1 and len(prefixes) == 1 and numbers == expected and len(names) < 10:
        return f"{re.escape(prefixes.pop())}[{''.join(numbers)}]"
    return "|".join(re.escape(name) for name in names)


# ------------------------------------------------------------------------------------------------ sections
def _front_matter(document: Mapping[str, Any], metadata: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    datasets = fields.get("datasets")
    if datasets is None and isinstance(metadata.get("dataset"), str):
        datasets = [metadata["dataset"]]
    metrics = metadata.get("metrics")
    tags = [LIBRARY_NAME, "pytorch", str(document.get("architecture", "")).lower()]
    tags += [t for t in fields.get("tags", []) if t not in tags]
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        license=_license_of(metadata, fields),
        datasets=list(datasets) if datasets else None,
        metrics=sorted(metrics) if isinstance(metrics, Mapping) and metrics else None,
        tags=[t for t in tags if t],
    )
    text: str = data.to_yaml()
    return text if text.endswith("\n") else text + "\n"


def _title(document: Mapping[str, Any], metadata: Mapping[str, Any], fields: Mapping[str, Any]) -> list[str]:
    default = (
        metadata.get("zoo_name") or fields.get("repo_id") or f"lightning-dnn {document.get('architecture')}"
    )
    lines = [f"# {fields.get('title') or default}", ""]
    if fields.get("description"):
        lines += [str(fields["description"]).strip(), ""]
    return lines


def _how_to_load(document: Mapping[str, Any], fields: Mapping[str, Any], net: nn.Module | None) -> list[str]:
    metadata = document.get("metadata") or {}
    if metadata.get("zoo_name"):
        source, note = f"zoo:{metadata['zoo_name']}", "  # pinned commit, sha256-verified"
    else:
        source, note = (f"hf://{fields['repo_id']}" if fields.get("repo_id") else "path/to/this/folder"), ""
    lines = [
        "## How to load",
        "",
        "```python",
        "from lightning_dnn.hub import load_pretrained",
        "",
        f'net, report = load_pretrained("{source}"){note}',
    ]
    if (
        "class_path" in document and document.get("init_args") is None
    ):  # weights only: the user builds the net
        lines[-1] = (
            f'net, report = load_pretrained("{source}", into=net)  # net: a {document.get("architecture")}'
        )

    blocks = lower_blocks(net) if net is not None else ()
    if blocks:
        lines += [
            f"# reuse the lower layers ({', '.join(blocks)}) under a new head (new_net: same layers, other outputs):",
            f'net, report = load_pretrained("{source}", include="{include_pattern(blocks)}", into=new_net)',
        ]
    return [*lines, "```", "", "Weights are safetensors (no pickle).", ""]


def _recipe(metadata: Mapping[str, Any]) -> list[str]:
    name, recipe = metadata.get("zoo_name"), (metadata.get("training") or {}).get("recipe")
    if not name or not recipe:
        return []
    return [
        "## Recipe",
        "",
        f"Trained by `lightning-dnn zoo build {name}` from `{recipe}` (a LightningCLI config, in the",
        f"lightning-dnn repository under `zoo/{name}/`); the same file trains it with",
        f"`lightning-dnn fit --config zoo/{name}/{recipe}`.",
        "",
    ]


def _training_data(metadata: Mapping[str, Any]) -> list[str]:
    lines = []
    if metadata.get("dataset"):
        lines.append(f"- dataset: `{metadata['dataset']}`")
    classes, labels = metadata.get("classes"), metadata.get("labels")
    if classes and labels:
        pairs = zip(classes, labels, strict=False)
        lines.append(
            "- classes, in output order: " + ", ".join(f"`{c}` (label {label})" for c, label in pairs)
        )
    elif classes:
        lines.append(f"- classes: {', '.join(str(c) for c in classes)}")
    training = metadata.get("training") or {}
    if training.get("samples"):
        lines.append("- samples: " + ", ".join(f"{k} {v}" for k, v in training["samples"].items()))
    if training.get("epochs") is not None:
        best = ""
        if "best_epoch" in training:
            best = f" (weights of epoch {training['best_epoch'] + 1}, the best {training.get('monitor')})"
        lines.append(f"- epochs: {training['epochs']}{best}")
    return ["## Training data", "", *lines, ""] if lines else []


def _metrics(metadata: Mapping[str, Any]) -> list[str]:
    metrics = metadata.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        return []
    lines = ["## Metrics", "", "| metric | value |", "|---|---|"]
    for name, value in sorted(metrics.items()):
        lines.append(f"| {name} | {f'{value:.4f}' if isinstance(value, float) else value} |")
    return [*lines, ""]


def _architecture(document: Mapping[str, Any], net: nn.Module | None) -> list[str]:
    if "class_path" in document:
        return _class_architecture(document, net)
    lines = [
        "## Architecture",
        "",
        f"`{document.get('architecture')}` from [lightning-dnn](https://pypi.org/project/lightning-dnn/) "
        f"{document.get('library_version', '')}, built with:",
        "",
        "| argument | value |",
        "|---|---|",
    ]
    lines += [f"| `{key}` | `{json.dumps(value)}` |" for key, value in (document.get("config") or {}).items()]
    if net is not None:
        lines += ["", f"{sum(p.numel() for p in net.parameters()):,} parameters."]
    return [*lines, ""]


def _class_architecture(document: Mapping[str, Any], net: nn.Module | None) -> list[str]:
    """The architecture section of a network saved by class path (weights only, maybe with init_args)."""
    path, init_args = document.get("class_path"), document.get("init_args")
    lines = [
        "## Architecture",
        "",
        f"`{path or document.get('architecture')}`, saved with lightning-dnn "
        f"{document.get('library_version', '')}",
    ]
    if init_args is None:
        lines[-1] += " as weights only (build the network yourself and load with `into=`)."
    else:
        lines[-1] += ", built with:"
        lines += ["", "| argument | value |", "|---|---|"]
        lines += [f"| `{key}` | `{json.dumps(value)}` |" for key, value in init_args.items()]
    if net is not None:
        lines += ["", f"{sum(p.numel() for p in net.parameters()):,} parameters."]
    return [*lines, ""]


def _license(metadata: Mapping[str, Any], fields: Mapping[str, Any]) -> list[str]:
    return ["## License", "", _license_of(metadata, fields), ""]


# ------------------------------------------------------------------------------------------------ helpers
def _license_of(metadata: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    return str(fields.get("license") or metadata.get("license") or DEFAULT_LICENSE)


def _skeleton(document: Mapping[str, Any]) -> nn.Module | None:
    """The network ``document`` describes, built on the meta device; ``None`` when that fails."""
    try:
        spec = get_architecture(document["architecture"])
        with torch.device("meta"):
            return spec.build(document["config"])
    except (KeyError, TypeError, ValueError, RuntimeError):
        return None


def _is_str_list(value: object) -> bool:
    return (
        isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(v, str) for v in value)
    )
