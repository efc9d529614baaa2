"""Reuse weights trained in another framework: arrays from ``.npz``, Keras/TF ``.h5`` files or a dict.

Géron's chapter 11 reuses a TensorFlow model's lower layers by assigning their arrays to the new graph's
variables. Here an explicit ``name_map`` says which array goes where::

    load_foreign_arrays(net, "keras_model.h5", {
        "hidden1/kernel:0": "hidden1.linear.weight",
        "hidden1/bias:0": "hidden1.linear.bias",
    })

With ``layout="tf"`` arrays are converted from TensorFlow's layout to torch's, decided by the module that owns
the target parameter:

============================  =============================  ==============================
target                        TensorFlow array               torch tensor
============================  =============================  ==============================
``nn.Linear.weight``          kernel ``[in, out]``           ``[out, in]`` (transposed)
``nn.ConvNd.weight``          kernel ``[*k, in, out]``       ``[out, in, *k]``
``nn.ConvTransposeNd.weight`` kernel ``[*k, out, in]``       ``[in, out, *k]``
anything else                 biases, BN gamma/beta/moving   as is
                              mean/moving variance
============================  =============================  ==============================

(TF batch norm's ``gamma``/``beta``/``moving_mean``/``moving_variance`` are torch's
``weight``/``bias``/``running_mean``/``running_var``; mind that TF's default ``epsilon`` is ``1e-3`` and torch's
``1e-5``.) ``layout="torch"`` copies arrays unchanged.

``.h5`` files are read with h5py (``pip install h5py``). Arrays are named by their Keras weight names (the
``weight_names`` attribute of each layer group, e.g. ``hidden1/kernel:0``) when the file has them, else by their
path inside the file; a whole-model file's ``model_weights`` group is used when present. ``.npz`` files are read
with ``allow_pickle=False``.

Keras 3 files (``model.save("m.keras")``, ``model.save_weights("m.weights.h5")``) store each layer under an
automatic name (``layers/dense_1/vars/0``). A ``.keras`` archive carries the model's config, so its arrays are
named by Keras's own variable paths, with the layer names the user gave (``my_hidden1/kernel``,
``my_bn/moving_mean``, ``block/inner/kernel`` inside a nested model), as ``layer.weights[i].path`` shows them in
Keras. A standalone ``.weights.h5`` keeps the storage names unless ``config=`` supplies the model's config (the
``.keras`` archive, or a JSON file from ``model.to_json()``); a config that does not match the file is refused, and
arrays it cannot name keep their storage names with a warning. The optimizer's state is left out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from lightning_dnn._checks import check_bool, check_choice
from lightning_dnn.hub._keras import (
    HDF5_MAGIC,
    ZIP_MAGIC,
    import_h5py,
    is_keras3_weights,
    keras3_arrays,
    read_keras_archive,
    read_keras_config,
)
from lightning_dnn.hub._plan import LoadReport, copy_pairs, rank_zero_warn
from lightning_dnn.hub.errors import StrictLoadError, UnsafeWeightsError

__all__ = ["load_foreign_arrays", "read_foreign_arrays"]

Layout = Literal["tf", "torch"]
_KERAS3_STORAGE = re.compile(r"(.+/)?layers/\w+/vars/\d+")


def load_foreign_arrays(
    net: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any],
    name_map: Mapping[str, str],
    *,
    layout: Layout = "tf",
    strict: bool = True,
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> LoadReport:
    """Copy arrays from another framework into ``net``'s parameters and buffers, converting the layout.

    Args:
        net: the network to load into (modified in place).
        source: a ``.npz`` file, a Keras/TF ``.h5`` weights file, a Keras 3 ``.keras`` archive or
            ``.weights.h5`` file, or a mapping name -> array (numpy arrays or anything ``np.asarray`` accepts).
        name_map: the file's array name -> our parameter or buffer name, e.g.
            ``{"hidden1/kernel:0": "hidden1.linear.weight"}``.
        layout: ``"tf"`` to convert kernels from TensorFlow's layout (see the module docstring), ``"torch"`` to
            copy as is.
        strict: raise on any problem (copying nothing); ``False`` warns and copies what fits.
        config: for a Keras 3 ``.weights.h5`` file, the model's config (a ``.keras`` archive, a JSON file from
            ``model.to_json()``, or that JSON as a mapping), so arrays are named by the user's layer names.

    Returns:
        a :class:`~lightning_dnn.hub.LoadReport`: ``loaded`` (our names filled), ``skipped`` (file arrays not in
        ``name_map``), ``missing`` (``name_map`` keys absent from the file), ``unexpected`` (``name_map`` values
        absent from ``net``), ``mismatched`` (``(our name, converted file shape, target shape)``).

    Raises:
        StrictLoadError: with ``strict=True``, for missing, unexpected or mismatched names; the message gives
            both shapes of each mismatch (as stored and converted) and lists the unmapped arrays.
        ImportError: for an ``.h5`` or ``.keras`` file without h5py installed.
        TypeError, ValueError: for invalid arguments or an unreadable file (a ``.keras`` file that is not a Keras 3
            zip archive, a ``config`` that does not match the weights or is given for another kind of source).

    Example:
        A TF dense layer computes ``x @ kernel + bias``; after loading, our Linear gives the same outputs:

        >>> import numpy as np
        >>> from lightning_dnn.nn import MLP
        >>> kernel, bias = np.ones((4, 3), np.float32), np.arange(3, dtype=np.float32)
        >>> net = MLP(4, 3, 2)
        >>> report = load_foreign_arrays(net, {"dense/kernel": kernel, "dense/bias": bias, "other": kernel},
        ...                              {"dense/kernel": "hidden1.linear.weight", "dense/bias": "hidden1.linear.bias"})
        >>> report.loaded, report.skipped
        (['hidden1.linear.weight', 'hidden1.linear.bias'], ['other'])
        >>> x = np.ones((1, 4), np.float32)
        >>> np.allclose(net.hidden1.linear(torch.from_numpy(x)).detach().numpy(), x @ kernel + bias)
        True
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"`net` must be an nn.Module, got {type(net).__name__}")
    layout = check_choice("layout", layout, ("tf", "torch"))  # type: ignore[assignment]
    check_bool("strict", strict)
    _check_name_map(name_map)
    arrays = read_foreign_arrays(source, config=config)
    report, pairs, details = _plan_foreign_load(net, arrays, name_map, layout)
    if not report.ok:
        text = _problems(report, details, arrays, type(net).__name__)
        if strict:
            raise StrictLoadError(
                f"Foreign weights do not fit {type(net).__name__}; nothing was copied.\n{text}", report
            )
        rank_zero_warn(f"Foreign weights partly loaded (strict=False): {len(report.loaded)} copied.\n{text}")
    copy_pairs(pairs)
    return report


def _check_name_map(name_map: object) -> None:
    if not isinstance(name_map, Mapping) or not name_map:
        raise TypeError(
            f"`name_map` must be a non-empty mapping file name -> parameter name, got {name_map!r}"
        )
    for key, value in name_map.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"`name_map` entries must be strings, got {key!r}: {value!r}")
    targets = list(name_map.values())
    duplicates = sorted({t for t in targets if targets.count(t) > 1})
    if duplicates:
        raise ValueError(f"`name_map` maps several arrays onto {duplicates}")


def _plan_foreign_load(
    net: nn.Module, arrays: Mapping[str, np.ndarray], name_map: Mapping[str, str], layout: Layout
) -> tuple[LoadReport, list[tuple[Tensor, Tensor]], list[str]]:
    """Compare without copying: the report, the ``(destination, source)`` pairs and the mismatch details."""
    state = dict(net.state_dict(keep_vars=True))
    owners = _owners(net)
    report = LoadReport(skipped=[n for n in arrays if n not in name_map])
    pairs: list[tuple[Tensor, Tensor]] = []
    details: list[str] = []
    for file_name, ours in name_map.items():
        if file_name not in arrays:
            report.missing.append(file_name)
            continue
        if ours not in state:
            report.unexpected.append(ours)
            continue
        array, target = arrays[file_name], state[ours]
        converted = _convert(array, owners.get(ours), ours, layout)
        if tuple(converted.shape) != tuple(target.shape):
            report.mismatched.append((ours, tuple(converted.shape), tuple(target.shape)))
            details.append(
                f"{file_name!r} {tuple(array.shape)} (as {layout} layout -> {tuple(converted.shape)}) vs "
                f"{ours!r} {tuple(target.shape)}"
            )
            continue
        report.loaded.append(ours)
        pairs.append((target, converted))
    return report, pairs, details


def _problems(report: LoadReport, details: list[str], arrays: Mapping[str, np.ndarray], net_name: str) -> str:
    lines = []
    if report.missing:
        lines.append(f"not in the file ({len(report.missing)}): {', '.join(report.missing)}")
    if report.unexpected:
        lines.append(f"not in {net_name} ({len(report.unexpected)}): {', '.join(report.unexpected)}")
    if details:
        lines.append(f"shape mismatch ({len(details)}): {'; '.join(details)}")
    lines.append(f"unmapped file arrays ({len(report.skipped)}): {', '.join(report.skipped) or '(none)'}")
    lines.append(f"available file arrays: {', '.join(arrays) or '(none)'}")
    if report.missing and any(_KERAS3_STORAGE.fullmatch(name) for name in arrays):
        lines.append(
            "The file's arrays carry Keras 3's automatic storage names (layers/<class>_<n>/vars/<i>), not your layer "
            "names: pass config= (the .keras archive, or a model.to_json() file) to name them as in Keras."
        )
    return "\n".join(lines)


def read_foreign_arrays(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Read every array of a ``.npz``, ``.h5`` or ``.keras`` file (or validate a mapping) as name -> numpy array.

    Args:
        source: the file or mapping (see :func:`load_foreign_arrays`).
        config: a Keras 3 model config naming the layers of a ``.weights.h5`` file (see the module docstring).

    Raises:
        ImportError: for an ``.h5`` or ``.keras`` file without h5py.
        UnsafeWeightsError: for an ``.npz`` holding pickled object arrays (never unpickled).
        TypeError, ValueError: for an unsupported source, an array that is not numeric, a ``.keras`` file that is
            not a Keras 3 archive, or a ``config`` that does not fit the source.

    Example:
        >>> read_foreign_arrays({"w": [[1.0, 2.0]]})["w"].shape
        (1, 2)
    """
    if isinstance(source, Mapping):
        if config is not None:
            raise ValueError(
                "`config` names the layers of a Keras 3 .weights.h5 file; got a mapping as `source`"
            )
        return {str(k): _numeric(k, v) for k, v in source.items()}
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"`source` must be a .npz/.h5 path or a mapping of arrays, got {type(source).__name__}"
        )
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"`source` {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if config is not None and suffix not in (".h5", ".hdf5"):
        raise ValueError(
            f"`config` names the layers of a Keras 3 .weights.h5 file; {str(path)!r} is not one (a .keras "
            "archive carries its own config)"
        )
    if suffix == ".npz":
        out = {}
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                try:
                    out[name] = _numeric(name, data[name])
                except ValueError as err:  # numpy refuses object arrays without allow_pickle
                    raise UnsafeWeightsError(
                        f"{str(path)!r}: array {name!r} is a pickled object array, which is never unpickled "
                        f"(it can run arbitrary code); store numeric arrays only ({err})",
                        [name],
                    ) from None
        return out
    if suffix == ".keras":
        return _read_keras(path)
    if suffix in (".h5", ".hdf5"):
        return _read_h5(path, config)
    raise ValueError(
        f"`source` {str(path)!r}: unsupported file type {suffix!r}; expected .npz, .h5 or .keras"
    )


def _read_keras(path: Path) -> dict[str, np.ndarray]:
    """A ``.keras`` file: a Keras 3 zip archive, or (older Keras) an HDF5 file saved under that suffix."""
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(ZIP_MAGIC):
        return {name: _numeric(name, array) for name, array in read_keras_archive(path).items()}
    if magic == HDF5_MAGIC:
        return _read_h5(path, None)
    raise ValueError(
        f"{str(path)!r} is not a Keras 3 archive: a .keras file is a zip holding config.json, model.weights.h5 "
        f"and metadata.json (written by model.save('model.keras')), but this file starts with {magic!r}"
    )


def _read_h5(path: Path, config: str | os.PathLike[str] | Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    h5py = import_h5py(path)
    document = read_keras_config(config) if config is not None else None
    out: dict[str, np.ndarray] = {}
    try:
        opened = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"`source` {str(path)!r} is not an HDF5 file that h5py can read ({err})") from None
    with opened as f:
        if is_keras3_weights(f):
            return {k: _numeric(k, v) for k, v in keras3_arrays(f, document, repr(str(path))).items()}
        if document is not None:
            raise ValueError(
                f"`config` names the layers of a Keras 3 .weights.h5 file; {str(path)!r} is in Keras 2's layout "
                "(its arrays already carry the layer names)"
            )
        root = f["model_weights"] if "model_weights" in f else f
        named = False
        for layer in root.values():
            weight_names = layer.attrs.get("weight_names") if isinstance(layer, h5py.Group) else None
            if weight_names is None:
                continue
            named = True
            for raw in weight_names:
                name = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
                out[name] = _numeric(name, layer[name][()])
        if not named:

            def visit(name: str, item: Any) -> None:
                if isinstance(item, h5py.Dataset):
                    out[name] = _numeric(name, item[()])

            root.visititems(visit)
    return out


def _numeric(name: object, value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"array {name!r} must be numeric, got dtype {array.dtype}")
    return array


def _owners(net: nn.Module) -> dict[str, nn.Module]:
    owners: dict[str, nn.Module] = {}
    for module_name, module in net.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for tensor_name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            owners[prefix + tensor_name] = module
    return owners


def _convert(array: np.ndarray, owner: nn.Module | None, name: str, layout: str) -> Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if layout == "torch" or owner is None or not name.endswith("weight"):
        return tensor
    if isinstance(owner, nn.Linear) and tensor.dim() == 2:
        return tensor.t().contiguous()
    if isinstance(owner, _ConvNd | _ConvTransposeNd) and tensor.dim() >= 3:
        # TF [*k, a, b] -> torch [b, a, *k]: conv a=in, b=out; transposed conv a=out, b=in (same permutation)
        spatial = list(range(tensor.dim() - 2))
        return tensor.permute(tensor.dim() - 1, tensor.dim() - 2, *spatial).contiguous()
    return tensor
