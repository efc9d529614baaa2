"""Keras 3 weights: ``.keras`` archives and ``.weights.h5`` files, with Keras's storage names mapped to the user's.

Package-internal (:mod:`lightning_dnn.hub.foreign` reads through it). Keras 3 stores a layer's variables under an
automatic name made from its class and its position (``layers/dense_1/vars/0``), never under the name the user gave
it. The model's config (the archive's ``config.json``, or ``model.to_json()``) lists the layers in the order Keras
stored them, so each storage name is mapped back to Keras's own variable path (``my_hidden1/kernel``, nested models
``block/inner/kernel``): :func:`keras3_arrays`. Nothing is ever executed or unpickled: the config is read as JSON.
bfloat16 variables (stored as raw 2-byte values) come back as float32, exactly.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lightning_dnn.hub._plan import rank_zero_warn

__all__ = [
    "HDF5_MAGIC",
    "ZIP_MAGIC",
    "import_h5py",
    "is_keras3_weights",
    "keras3_arrays",
    "read_keras_archive",
    "read_keras_config",
]

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ARCHIVE_WEIGHTS = "model.weights.h5"
ARCHIVE_CONFIG = "config.json"
#: The largest config.json read from an archive (a model config is a few hundred KB at most).
MAX_CONFIG_BYTES = 64 << 20
#: Top-level groups that hold training state, not the model's weights (left out).
TRAINING_STATE = ("optimizer",)
#: Layers that hold sublayers in their config's ``layers`` list, stored under ``<storage>/layers``.
CONTAINERS = ("Sequential", "Functional", "Model")
CONVS = {f"Conv{d}D{t}" for d in (1, 2, 3) for t in ("", "Transpose")} | {
    "DepthwiseConv1D",
    "DepthwiseConv2D",
}


def import_h5py(path: Path) -> Any:
    """h5py, or an ImportError that names the file and the fix."""
    try:
        import h5py
    except ImportError as err:
        raise ImportError(f"Reading {str(path)!r} needs h5py: pip install h5py") from err
    return h5py


def read_keras_config(config: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A Keras model config: a mapping, a JSON file (``model.to_json()``) or the ``config.json`` of a ``.keras``.

    Raises:
        TypeError: for another type.
        ValueError: for a file that is not JSON or an archive without config.json, or a document without
            ``class_name`` and ``config``.
    """
    if isinstance(config, Mapping):
        document: Any = dict(config)
        where = "`config`"
    elif isinstance(config, str | os.PathLike):
        path = Path(config)
        where = f"`config` {str(path)!r}"
        if not path.is_file():
            raise FileNotFoundError(f"{where} does not exist")
        with open(path, "rb") as f:
            zipped = f.read(4) == ZIP_MAGIC
        raw = _archive_member(path, ARCHIVE_CONFIG) if zipped else path.read_bytes()
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise ValueError(f"{where} is not a JSON Keras model config: {err}") from None
    else:
        raise TypeError(
            f"`config` must be a .keras archive, a JSON file or a mapping (a Keras model config), "
            f"got {type(config).__name__}"
        )
    if not isinstance(document, dict) or not isinstance(document.get("class_name"), str):
        raise ValueError(
            f"{where} is not a Keras model config: expected a JSON object with 'class_name' and 'config' "
            "(what model.to_json() writes), got "
            f"{sorted(document)[:10] if isinstance(document, dict) else type(document).__name__}"
        )
    return document


def read_keras_archive(path: Path) -> dict[str, np.ndarray]:
    """Every weight of a ``.keras`` archive under Keras's variable paths (``my_hidden1/kernel``).

    Raises:
        ValueError: for a file that is not a zip, a zip without ``config.json`` or ``model.weights.h5`` (naming
            what it holds), or a config that does not match the weights.
        ImportError: without h5py.
    """
    config = read_keras_config(path)
    data = _archive_member(path, ARCHIVE_WEIGHTS)
    h5py = import_h5py(path)
    with h5py.File(io.BytesIO(data), "r") as f:
        return keras3_arrays(f, config, f"{str(path)!r}")


def _archive_member(path: Path, member: str) -> bytes:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(
            f"{str(path)!r} is not a Keras 3 archive: a .keras file is a zip holding config.json, "
            f"{ARCHIVE_WEIGHTS} and metadata.json (written by model.save('model.keras')); {err}"
        ) from None
    with archive:
        names = archive.namelist()
        if member not in names:
            other = [n for n in names if n.startswith("model.weights")]
            hint = (
                f" Its weights are {other}: only {ARCHIVE_WEIGHTS} is read (save with Keras's default h5 format)."
                if other
                else ""
            )
            raise ValueError(
                f"{str(path)!r} is not a Keras 3 archive this library can read: it has no {member!r} "
                f"(it holds {names[:20]}).{hint}"
            )
        info = archive.getinfo(member)
        if member == ARCHIVE_CONFIG and info.file_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{str(path)!r}: {member} is {info.file_size} bytes, too big for a model config")
        return archive.read(member)


def is_keras3_weights(root: Any) -> bool:
    """Whether an open h5py file is in Keras 3's layout (``layers/<storage>/vars/<i>``), not Keras 2's."""
    if "layer_names" in root.attrs or "model_weights" in root:
        return False
    return "layers" in root or "vars" in root


def keras3_arrays(root: Any, config: Mapping[str, Any] | None, source: str) -> dict[str, np.ndarray]:
    """Read a Keras 3 weights file: Keras's variable paths when ``config`` maps them, else the storage names.

    The top-level ``optimizer`` group (training state) is left out. Variables the config cannot name (a layer
    class without a known variable list, or a storage group the config does not list) keep their storage name,
    and a warning says which.

    Raises:
        ValueError: when ``config`` does not match the file (a layer name stored in the file differs from the
            config's, a layer with weights has no storage group, or a kernel's size differs from ``units`` /
            ``filters``).
    """
    stored: dict[str, np.ndarray] = {}

    def visit(name: str, item: Any) -> None:
        if hasattr(item, "shape") and name.split("/", 1)[0] not in TRAINING_STATE:
            stored[name] = (
                _bfloat16_as_float32(item[()]) if item.attrs.get("dtype") == "bfloat16" else item[()]
            )

    root.visititems(visit)
    if config is None:
        log.info(
            "%s: Keras 3 weights without a config: arrays keep their storage names (pass config=)", source
        )
        return stored
    names: dict[str, str] = {}
    layers = config.get("config", {}).get("layers") if isinstance(config.get("config"), dict) else None
    if isinstance(layers, list):
        _map_layers(root, "layers", layers, "", names, source)
    unmapped = [n for n in stored if n not in names]
    if unmapped:
        rank_zero_warn(
            f"{source}: the Keras config (class {config.get('class_name')!r}) names no layer for "
            f"{len(unmapped)} stored array(s), which keep their storage names: {', '.join(unmapped[:20])}"
        )
    return {names.get(n, n): array for n, array in stored.items()}


def _bfloat16_as_float32(raw: np.ndarray) -> np.ndarray:
    """Keras stores bfloat16 variables as raw 2-byte values; widen them to float32 (exact: same sign/exponent)."""
    if raw.dtype.itemsize != 2:
        raise ValueError(f"a variable marked bfloat16 has {raw.dtype.itemsize}-byte elements ({raw.dtype})")
    bits = np.ascontiguousarray(raw).view("<u2").astype(np.uint32) << 16
    return bits.view(np.float32)


def _map_layers(
    root: Any, path: str, layers: list[Any], prefix: str, names: dict[str, str], source: str
) -> None:
    """Map the storage names of one container's layers (Keras's order, one counter per class) to their paths."""
    used: dict[str, int] = {}
    for layer in layers:
        kind = layer.get("class_name") if isinstance(layer, dict) else None
        config = layer.get("config") if isinstance(layer, dict) else None
        if (
            not isinstance(kind, str)
            or not isinstance(config, dict)
            or not isinstance(config.get("name"), str)
        ):
            raise ValueError(f"{source}: the Keras config has a layer entry without class_name/config.name")
        storage = f"{path}/{_unique(_snake_case(kind), used)}"
        full = prefix + config["name"]
        expected = _variable_names(kind, config)
        if storage not in root:
            if expected:
                raise ValueError(
                    f"{source}: the Keras config does not match the weights: layer {full!r} ({kind}) should be "
                    f"stored as {storage!r}, which the file lacks (it holds {sorted(root[path]) if path in root else []})"
                )
            continue
        group = root[storage]
        if "vars" in group:
            _map_variables(group["vars"], f"{storage}/vars", kind, config, full, names, source)
        nested = config.get("layers")
        if kind in CONTAINERS and isinstance(nested, list) and "layers" in group:
            _map_layers(root, f"{storage}/layers", nested, f"{full}/", names, source)


def _map_variables(
    group: Any, path: str, kind: str, config: dict[str, Any], full: str, names: dict[str, str], source: str
) -> None:
    recorded = group.attrs.get("name")
    if isinstance(recorded, bytes):
        recorded = recorded.decode("utf-8")
    if recorded is not None and recorded != config["name"]:
        raise ValueError(
            f"{source}: the Keras config does not match the weights: {path!r} holds layer {recorded!r}, the "
            f"config puts {config['name']!r} ({kind}) there"
        )
    keys = sorted((k for k in group if k.isdigit()), key=int)
    if not keys:
        return
    expected = _variable_names(kind, config)
    if expected is None or len(expected) != len(keys):
        reason = "no variable list is known for that class" if expected is None else f"expected {expected}"
        rank_zero_warn(
            f"{source}: layer {full!r} ({kind}) stores {len(keys)} variable(s); {reason}, so they are named "
            f"{full}/vars/<i>"
        )
        for key in keys:
            names[f"{path}/{key}"] = f"{full}/vars/{key}"
        return
    size = config.get("units", config.get("filters"))
    kernel = group[keys[0]]
    axis = -2 if kind.endswith("Transpose") else -1  # a transposed conv's kernel is [*k, filters, in]
    if isinstance(size, int) and expected[0] == "kernel" and len(kernel.shape) > 1 and kernel.shape[axis] != size:
        raise ValueError(
            f"{source}: the Keras config does not match the weights: layer {full!r} ({kind}) has {size} "
            f"units/filters in the config but its stored kernel {path}/{keys[0]} has shape {kernel.shape}"
        )
    for key, variable in zip(keys, expected, strict=True):
        names[f"{path}/{key}"] = f"{full}/{variable}"


def _variable_names(kind: str, config: Mapping[str, Any]) -> list[str] | None:
    """The variables a layer of class ``kind`` stores, in Keras's storage order; ``None`` when not known."""
    bias = ["bias"] if config.get("use_bias", True) else []
    if kind == "Dense" or kind in CONVS:
        return ["kernel", *bias]
    if kind in ("SeparableConv1D", "SeparableConv2D"):
        return ["depthwise_kernel", "pointwise_kernel", *bias]
    scaled = (["gamma"] if config.get("scale", True) else []) + (
        ["beta"] if config.get("center", True) else []
    )
    if kind == "BatchNormalization":
        return [*scaled, "moving_mean", "moving_variance"]
    if kind == "LayerNormalization":
        return scaled
    if kind == "Embedding":
        return ["embeddings"]
    if kind == "PReLU":
        return ["alpha"]
    if kind in ("InputLayer", "Flatten", "Dropout", "Activation", "Reshape", "ReLU", "Add", "Concatenate"):
        return []
    return None


def _snake_case(name: str) -> str:
    """Keras's ``to_snake_case`` (``BatchNormalization`` -> ``batch_normalization``, ``Conv2D`` -> ``conv2d``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique(name: str, used: dict[str, int]) -> str:
    """Keras's storage names within one container: ``dense``, ``dense_1``, ``dense_2``..."""
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name
