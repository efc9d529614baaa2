"""Build the network a ``config.json`` describes: on the meta device first, checked against the weights file.

Package-internal (:func:`~lightning_dnn.hub.load_pretrained` uses it). The meta build costs no memory and runs no
initialization, so a config that asks for far more elements than ``model.safetensors`` holds is refused before
anything is allocated, and a network whose every tensor the file provides takes the file's tensors as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dnn._selection import Patterns
from lightning_dnn._specs import import_class
from lightning_dnn.hub._download import first_line
from lightning_dnn.hub._plan import (
    LoadReport,
    apply_rename,
    copy_pairs,
    enforce_strictness,
    plan_partial_load,
)
from lightning_dnn.hub._safetensors import SafetensorsHeader
from lightning_dnn.hub.architectures import ArchitectureSpec, get_architecture

__all__ = [
    "ClassPathSpec",
    "architecture_of_config",
    "build_and_load",
    "check_config_size",
    "class_path_spec",
    "meta_skeleton",
]

log = logging.getLogger(__name__)

# A config may describe somewhat more than its file holds (strict=False loads what fits); past this it is refused.
_SIZE_FACTOR = 2
_SIZE_SLACK = 1 << 20


def architecture_of_config(document: Mapping[str, Any], config_path: Path) -> ArchitectureSpec:
    """The registered architecture ``config.json`` names (an unknown name is a ValueError naming the file)."""
    try:
        return get_architecture(document["architecture"])
    except ValueError as err:
        raise ValueError(f"{str(config_path)!r}: {err}") from None


@dataclass(frozen=True)
class ClassPathSpec(ArchitectureSpec):
    """An unregistered network class that ``config.json`` names by class path: built with ``cls(**init_args)``."""

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        """Build ``cls(**config)``."""
        return self.cls(**config)


def class_path_spec(document: Mapping[str, Any], config_path: Path) -> ClassPathSpec:
    """The class a weights-only config.json names, when it may be imported and its arguments are recorded.

    The class is imported only under the trusted-packages rule of :func:`lightning_dnn._specs.import_class`
    (torch, torchvision, lightning_dnn, ... or a module already imported): a downloaded config never imports
    arbitrary code.

    Raises:
        ValueError: naming the file, what is missing or untrusted, and the fix (``into=``).
    """
    path, init_args = document.get("class_path"), document.get("init_args")
    fix = "build the network yourself and pass it: load_pretrained(source, into=YourNet(...))"
    if path is None or init_args is None:
        what = (
            "no importable class path"
            if path is None
            else f"class {path!r} without its constructor arguments"
        )
        raise ValueError(
            f"{str(config_path)!r} records {what} (saved weights-only), so it cannot be rebuilt; {fix}"
        )
    try:
        cls = import_class("class_path", path, nn.Module)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{str(config_path)!r}: {err}; or {fix}") from None
    return ClassPathSpec(str(document.get("architecture") or cls.__name__), cls)


def meta_skeleton(spec: ArchitectureSpec, document: Mapping[str, Any], config_path: Path) -> nn.Module | None:
    """The network ``config.json`` describes, built on the meta device (no memory, no initialization).

    ``None`` when the architecture's constructor cannot run on meta (it needs real tensor values); any other
    failure is the config's: a ValueError naming the file.
    """
    try:
        with torch.device("meta"):
            return spec.build(document["config"])
    except (NotImplementedError, RuntimeError) as err:
        if "meta" in str(err).lower():
            log.debug("%s cannot be built on the meta device (%s); building it for real", spec.name, err)
            return None
        raise _config_error(spec, config_path, err) from err
    except Exception as err:  # the constructor's ValueError/TypeError and anything a hostile value triggers
        raise _config_error(spec, config_path, err) from err


def _config_error(spec: ArchitectureSpec, config_path: Path, err: BaseException) -> ValueError:
    return ValueError(
        f"{str(config_path)!r}: 'config' does not build a {spec.name}: {type(err).__name__}: {first_line(err)}"
    )


def check_config_size(
    skeleton: nn.Module,
    header: SafetensorsHeader,
    spec: ArchitectureSpec,
    config_path: Path,
    weights_path: Path,
) -> None:
    """Refuse a config that describes far more elements than the weights file holds, before anything is built."""
    state = skeleton.state_dict()
    wanted = sum(t.numel() for t in state.values())
    if wanted <= _SIZE_FACTOR * header.numel + _SIZE_SLACK:
        return
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    raise ValueError(
        f"{str(config_path)!r} describes a network ({spec.name}) with {wanted:,} parameter and buffer elements "
        f"({_bytes_text(nbytes)}), but {str(weights_path)!r} holds {header.numel:,} elements "
        f"({_bytes_text(header.data_bytes)}); "
        "refusing to build it. The config does not belong to these weights (or was edited): fix config.json, "
        "or build the network you want yourself and pass it as into=... to load the tensors that fit."
    )


def _bytes_text(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} bytes"


def build_and_load(
    spec: ArchitectureSpec,
    document: Mapping[str, Any],
    skeleton: nn.Module | None,
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
    meta-device ``skeleton`` takes the file's tensors as its parameters and buffers
    (``load_state_dict(assign=True)``): no initialization and no copy. Otherwise the network is built normally,
    so the names the file does not provide keep their initialization.
    """
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
