"""Which library wrote a Hub folder: lightning-dnn, timm, huggingface_hub's PyTorchModelHubMixin, transformers...

Package-internal. :func:`detect_format` reads the evidence (``config.json`` keys, the model card's tags) and names
the format; :func:`unbuildable_message` and :func:`pickle_hint` turn it into advice when a folder cannot be built
or offers only pickles. The rules, most specific first:

====================  =========================================================================================
format                evidence
====================  =========================================================================================
``lightning-dnn``     ``config.json`` has ``"library": "lightning-dnn"``
``pytorch-model-hub-  the model card's front matter tags ``pytorch_model_hub_mixin`` (the mixin's card; its
mixin``               ``config.json`` holds the constructor's keyword arguments and nothing else)
``timm``              ``config.json`` has ``architecture`` (a string) and ``pretrained_cfg`` or ``num_classes``
``transformers``      ``config.json`` has ``model_type``, ``architectures`` or ``transformers_version``
``diffusers``         ``config.json`` has ``_class_name`` or ``_diffusers_version``
``safetensors``       no ``config.json``: weights only
====================  =========================================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_dnn.hub._io import CARD_NAME, CONFIG_NAME, LIBRARY_NAME, WEIGHTS_NAME, read_json
from lightning_dnn.hub._layouts import timm_layout

__all__ = [
    "DIFFUSERS",
    "LIGHTNING_DNN",
    "MIXIN",
    "TIMM",
    "TRANSFORMERS",
    "UNKNOWN",
    "WEIGHTS_ONLY",
    "FolderFormat",
    "card_tags",
    "detect_format",
    "folder_format",
    "pickle_hint",
    "unbuildable_message",
]

LIGHTNING_DNN = LIBRARY_NAME
TIMM = "timm"
TRANSFORMERS = "transformers"
DIFFUSERS = "diffusers"
MIXIN = "pytorch-model-hub-mixin"
WEIGHTS_ONLY = "safetensors"
UNKNOWN = "unknown"
MIXIN_TAG = "pytorch_model_hub_mixin"
#: What each recognised format looks like, for the message about a config.json that matches none.
RECOGNISED = {
    LIGHTNING_DNN: f"'library': {LIBRARY_NAME!r} in {CONFIG_NAME}",
    TIMM: f"'architecture' with 'pretrained_cfg' or 'num_classes' in {CONFIG_NAME}",
    TRANSFORMERS: f"'model_type', 'architectures' or 'transformers_version' in {CONFIG_NAME}",
    DIFFUSERS: f"'_class_name' or '_diffusers_version' in {CONFIG_NAME}",
    MIXIN: f"the tag {MIXIN_TAG!r} in {CARD_NAME}'s front matter",
    WEIGHTS_ONLY: f"no {CONFIG_NAME}, only {WEIGHTS_NAME} (or a sharded index)",
}
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)
_CARD_BYTES = 1 << 20


@dataclass(frozen=True)
class FolderFormat:
    """The library that wrote a folder and the evidence for it.

    Example:
        >>> detect_format({"architecture": "resnet18", "num_classes": 3}, None)
        FolderFormat(name='timm', evidence="'architecture': 'resnet18' and 'num_classes' in config.json")
    """

    name: str
    evidence: str


def card_tags(folder: Path | None) -> list[str]:
    """The tags in the front matter of ``folder``'s model card (``[]`` when there is none).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     card = ["---", "tags:", "- model_hub_mixin", "- x", "---", "text"]
        ...     _ = (Path(tmp) / "README.md").write_text(chr(10).join(card))
        ...     card_tags(Path(tmp))
        ['model_hub_mixin', 'x']
    """
    card = folder / CARD_NAME if folder is not None and folder.is_dir() else None
    if card is None or not card.is_file():
        return []
    with open(card, "rb") as f:
        text = f.read(_CARD_BYTES).decode("utf-8", errors="replace")
    match = _FRONT_MATTER.match(text)
    if match is None:
        return []
    try:  # the same YAML reader as huggingface_hub's metadata_load, on the size-capped front matter
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return []
    tags = meta.get("tags") if isinstance(meta, dict) else None
    if isinstance(tags, str):
        return [tags]
    return [str(t) for t in tags] if isinstance(tags, list) else []


def detect_format(document: Mapping[str, Any] | None, folder: Path | None) -> FolderFormat:
    """The format of a folder whose ``config.json`` is ``document`` (``None``: no config.json); see the table above.

    Example:
        >>> detect_format(None, None).name, detect_format({"hidden": 6}, None).name
        ('safetensors', 'unknown')
    """
    if document is None:
        return FolderFormat(WEIGHTS_ONLY, f"no {CONFIG_NAME}")
    if document.get("library") == LIBRARY_NAME:
        return FolderFormat(LIGHTNING_DNN, f"'library': {LIBRARY_NAME!r} in {CONFIG_NAME}")
    if MIXIN_TAG in card_tags(folder):
        return FolderFormat(MIXIN, f"the tag {MIXIN_TAG!r} in {CARD_NAME}")
    layout = timm_layout(document)
    if layout is not None:
        key = "pretrained_cfg" if "pretrained_cfg" in document else "num_classes"
        return FolderFormat(
            TIMM, f"'architecture': {document['architecture']!r} and {key!r} in {CONFIG_NAME}"
        )
    for name, keys in ((TRANSFORMERS, ("model_type", "architectures", "transformers_version")),
                       (DIFFUSERS, ("_class_name", "_diffusers_version"))):  # fmt: skip
        found = [k for k in keys if k in document]
        if found:
            return FolderFormat(name, f"{found[0]!r} in {CONFIG_NAME}")
    return FolderFormat(UNKNOWN, f"{CONFIG_NAME} with keys {sorted(document)[:12]}")


def folder_format(folder: Path) -> FolderFormat:
    """The format of ``folder`` from its files (a config.json that cannot be read counts as unknown).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "config.json").write_text('{"architecture": "vit_tiny", "num_classes": 2}')
        ...     folder_format(Path(tmp)).name
        'timm'
    """
    config = folder / CONFIG_NAME
    if not config.is_file():
        return detect_format(None, folder)
    try:
        document = read_json(config)
    except ValueError as err:
        return FolderFormat(UNKNOWN, f"an unreadable {CONFIG_NAME} ({err})")
    return detect_format(document, folder)


def unbuildable_message(fmt: FolderFormat, config_path: Path, document: Mapping[str, Any]) -> str:
    """Why a folder of format ``fmt`` cannot be built without ``into=``, and how to load it.

    Example:
        >>> fmt = FolderFormat("pytorch-model-hub-mixin", "the tag")
        >>> "into=net" in unbuildable_message(fmt, Path("config.json"), {"hidden": 6})
        True
    """
    where = str(config_path)
    into = "then load into it: load_pretrained(source, into=net)"
    if fmt.name == MIXIN:
        shown = ", ".join(f"{k}={v!r:.40}" for k, v in list(document.items())[:8])
        return (
            f"{where!r} was written by huggingface_hub's PyTorchModelHubMixin ({fmt.evidence}): it holds the "
            f"constructor arguments ({shown}) of a class it does not name, so lightning-dnn cannot build the "
            f"network. Build it yourself, e.g. net = YourNet(**json.load(open({CONFIG_NAME!r}))), {into}."
        )
    if fmt.name in (TRANSFORMERS, DIFFUSERS):
        builder = "transformers.AutoModel.from_config(...)" if fmt.name == TRANSFORMERS else "diffusers"
        return (
            f"{where!r} is a {fmt.name} config ({fmt.evidence}), not a lightning-dnn config. Build the network "
            f"with {builder}, {into}."
        )
    recognised = "; ".join(f"{name} ({how})" for name, how in RECOGNISED.items())
    return (
        f"{where!r} is not a lightning-dnn config (its 'library' is {document.get('library')!r:.100}, expected "
        f"{LIBRARY_NAME!r}) and matches no other format lightning-dnn recognises: {recognised}. It has "
        f"{fmt.evidence}. Build the network yourself and {into}."
    )


def pickle_hint(fmt: FolderFormat) -> str:
    """How the library that wrote a folder of format ``fmt`` writes safetensors instead of pickles ('' if unknown).

    Example:
        >>> "safe_serialization=True" in pickle_hint(FolderFormat("timm", "architecture"))
        True
    """
    if fmt.name == TIMM:
        return (
            f" This is a timm folder ({fmt.evidence}): timm writes {WEIGHTS_NAME} with "
            "timm.models.save_for_hf(model, folder, safe_serialization=True) or "
            "timm.models.push_to_hf_hub(model, repo_id, safe_serialization=True) ('both' writes both files); "
            "the timm repos on the Hub carry model.safetensors."
        )
    if fmt.name == TRANSFORMERS:
        return f" transformers writes {WEIGHTS_NAME} with model.save_pretrained(folder, safe_serialization=True)."
    if fmt.name == MIXIN:
        return (
            f" PyTorchModelHubMixin writes {WEIGHTS_NAME}: re-save the model with a recent huggingface_hub."
        )
    return ""
