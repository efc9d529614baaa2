"""Save a network as a Hugging Face Hub model folder: config.json, model.safetensors and a README.md card.

``config.json`` records what rebuilds the network and what it was trained for::

    {"library": "lightning-dnn", "library_version": "0.1.0", "architecture": "MLP",
     "config": {"in_features": 784, "hidden": [300, 100], ...},
     "metadata": {"dataset": "fashion_mnist", "classes": [...], "metrics": {"test_accuracy": 0.89}}}

``architecture`` names a class in :mod:`lightning_dnn.hub.architectures`; ``config`` is that class's
``net.config`` (its JSON-able constructor arguments). The weights are the ``state_dict`` in safetensors (never
pickle). The folder is written atomically (see :func:`save_pretrained`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from lightning_dnn._specs import class_path, is_jsonable
from lightning_dnn._version import __version__
from lightning_dnn.hub._card import check_card, render_model_card
from lightning_dnn.hub._io import (
    CARD_NAME,
    CONFIG_NAME,
    LIBRARY_NAME,
    WEIGHTS_NAME,
    tensors_for_saving,
    write_folder_atomically,
    write_safetensors,
    write_text,
)
from lightning_dnn.hub.architectures import find_architecture, refuse_wrapped_architecture

__all__ = ["save_pretrained"]


def save_pretrained(
    net: nn.Module,
    directory: str | os.PathLike[str],
    *,
    card: str | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    init_args: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``net`` to ``directory`` as a Hub-format folder that :func:`~lightning_dnn.hub.load_pretrained` reads.

    The three files are written into a fresh folder next to ``directory`` and then moved in: a missing or empty
    ``directory`` is replaced in one rename; in an existing one, ``config.json`` is removed first and moved in
    last, so an interrupted save never leaves a folder that loads with mixed files. Other files already in
    ``directory`` (a recipe, say) are kept.

    Args:
        net: any ``nn.Module``. A registered architecture (see
            :func:`~lightning_dnn.hub.register_architecture`) records its ``config``, so the folder rebuilds it;
            any other network is saved weights-only with its class path (``module.Class``) and ``init_args``
            (load it with ``into=``, or without when both let it be rebuilt). For a ``DNNClassifier`` pass
            ``model.net``.
        directory: the folder to write (created if needed).
        card: the model card: ``None`` to generate it, a mapping with any of ``title``, ``description``,
            ``license`` (default ``metadata["license"]`` or ``"apache-2.0"``), ``datasets``, ``tags`` and
            ``repo_id`` (used in the card's loading snippet) to adjust the generated one, or a full README text
            (front matter is generated when it does not start with ``---``).
        metadata: JSON-able facts stored in ``config.json`` and shown in the card. Known keys: ``dataset``
            (str), ``classes`` (list of class names), ``metrics`` (name -> number), ``license`` (str); the zoo
            build adds ``labels``, ``training`` and ``zoo_name``, which the card shows too.
        init_args: for a network that is not a registered architecture, the JSON-able keyword arguments its
            class was built with (``{"num_classes": 10}``), recorded so that ``load_pretrained`` can rebuild it
            with ``cls(**init_args)`` when the class is trusted (torch, torchvision, lightning_dnn, or already
            imported). Not allowed for a registered architecture (its ``config`` is recorded).

    Returns:
        the folder's path.

    Raises:
        TypeError: if a registered network's config, ``metadata`` or ``init_args`` is not JSON-able, ``net``
            wraps a registered architecture as ``.net`` (pass that), or an argument has the wrong type.
        ValueError: for invalid ``metadata``/``card`` values (unknown card keys, non-finite metrics).
        NotADirectoryError: if ``directory`` is an existing file.

    Example:
        >>> import tempfile, json, torch
        >>> from lightning_dnn.nn import MLP
        >>> net = MLP(8, (6, 4), 3)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = save_pretrained(net, f"{tmp}/mlp", metadata={"dataset": "digits", "metrics": {"acc": 0.9}})
        ...     print(sorted(p.name for p in folder.iterdir()))
        ...     print(json.loads((folder / "config.json").read_text())["architecture"])
        ['README.md', 'config.json', 'model.safetensors']
        MLP
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = save_pretrained(torch.nn.Linear(4, 2), tmp, init_args={"in_features": 4, "out_features": 2})
        ...     doc = json.loads((folder / "config.json").read_text())
        >>> doc["class_path"], doc["init_args"]
        ('torch.nn.modules.linear.Linear', {'in_features': 4, 'out_features': 2})
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"`net` must be an nn.Module, got {type(net).__name__}")
    if not isinstance(directory, str | os.PathLike):
        raise TypeError(f"`directory` must be a path, got {type(directory).__name__} {directory!r}")
    card = check_card(card)
    document = build_config_document(net, metadata, init_args=init_args)
    text = _dumps(document, "the network's config and `metadata`")
    readme = render_model_card(document, card, net=net)
    tensors = tensors_for_saving(net)
    return write_folder_atomically(
        Path(directory),
        {
            WEIGHTS_NAME: partial(write_safetensors, tensors),
            CARD_NAME: partial(write_text, readme),
            CONFIG_NAME: partial(write_text, text),
        },
    )


def build_config_document(
    net: nn.Module, metadata: Mapping[str, Any] | None, *, init_args: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``config.json`` content for ``net`` (see the module docstring).

    Example:
        >>> from lightning_dnn.nn import MLP
        >>> doc = build_config_document(MLP(4, 3, 2), {"dataset": "digits"})
        >>> doc["library"], doc["architecture"], doc["config"]["hidden"], doc["metadata"]
        ('lightning-dnn', 'MLP', [3], {'dataset': 'digits'})
        >>> doc = build_config_document(nn.Linear(2, 3), None)
        >>> doc["architecture"], doc["class_path"], doc["init_args"]
        ('Linear', 'torch.nn.modules.linear.Linear', None)
    """
    spec = find_architecture(net)
    head = {"library": LIBRARY_NAME, "library_version": __version__}
    if spec is not None:
        if init_args is not None:
            raise TypeError(
                f"`init_args` is for networks that are not registered architectures; {spec.name} records its own "
                "`config`. Drop `init_args`."
            )
        return {
            **head,
            "architecture": spec.name,
            "config": spec.config_of(net),
            "metadata": _check_metadata(metadata),
        }
    refuse_wrapped_architecture(net)
    return {
        **head,
        "architecture": type(net).__name__,
        "class_path": class_path(type(net)),
        "init_args": _check_init_args(init_args),
        "metadata": _check_metadata(metadata),
    }


def _check_init_args(init_args: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if init_args is None:
        return None
    if not isinstance(init_args, Mapping) or not all(isinstance(k, str) for k in init_args):
        raise TypeError(
            f"`init_args` must be a mapping of constructor argument name -> JSON-able value, got {init_args!r:.200}"
        )
    bad = [k for k, v in init_args.items() if not is_jsonable(v)]
    if bad:
        shown = ", ".join(f"{k}={type(init_args[k]).__name__}" for k in bad)
        raise TypeError(
            f"`init_args` must be JSON-able (numbers, strings, lists, dicts) so config.json can record them; "
            f"got {shown}. Record only JSON-able arguments, or save without `init_args` (weights only) and load "
            "with into=..."
        )
    return dict(init_args)


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise TypeError(f"`metadata` must be a mapping with string keys, got {metadata!r}")
    out = dict(metadata)
    for key in ("dataset", "license"):
        if key in out and not isinstance(out[key], str):
            raise TypeError(
                f"`metadata[{key!r}]` must be a string, got {type(out[key]).__name__} {out[key]!r}"
            )
    if "classes" in out:
        classes = out["classes"]
        if isinstance(classes, str) or not isinstance(classes, list | tuple):
            raise TypeError(f"`metadata['classes']` must be a list of class names, got {classes!r}")
        out["classes"] = list(classes)
    if "metrics" in out:
        metrics = out["metrics"]
        if not isinstance(metrics, Mapping):
            raise TypeError(f"`metadata['metrics']` must be a mapping name -> number, got {metrics!r}")
        clean: dict[str, float | int] = {}
        for name, value in metrics.items():
            if hasattr(value, "item") and callable(value.item):  # a 0-d tensor or numpy scalar
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"`metadata['metrics'][{name!r}]` must be a finite number, got {value!r}")
            clean[str(name)] = value
        out["metrics"] = clean
    return out


def _dumps(document: Mapping[str, Any], what: str) -> str:
    try:
        return json.dumps(document, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON-able (finite numbers, strings, lists, dicts): {err}") from None
