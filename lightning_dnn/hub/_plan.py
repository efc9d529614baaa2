"""Partial loading by name, planned before anything is copied: the report, the checks and the copy.

Package-internal: :mod:`lightning_dnn.hub.partial`, :mod:`~lightning_dnn.hub.load` and
:mod:`~lightning_dnn.hub.foreign` build on these; users call :func:`~lightning_dnn.hub.load_state_dict_partial`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_dnn._checks import check_bool
from lightning_dnn._selection import Patterns, compile_patterns, select_tensor_names, shorten
from lightning_dnn.hub.errors import StrictLoadError

__all__ = [
    "LoadReport",
    "apply_rename",
    "check_options",
    "copy_pairs",
    "enforce_strictness",
    "find_prefix",
    "load_into",
    "plan_partial_load",
    "rank_zero_warn",
]

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


@dataclass
class LoadReport:
    """What a load did with every name.

    Attributes:
        loaded: names copied into the target (present on both sides with the same shape).
        skipped: file names (after ``rename``) left out by ``include``/``exclude``.
        missing: selected target names the file does not provide.
        unexpected: selected file names the target does not have.
        mismatched: ``(name, file_shape, target_shape)`` for selected names whose shapes differ.
        dtype_mismatched: ``(name, file_dtype, target_dtype)`` for selected names of equal shape whose kinds of
            dtype differ (integer or bool into floating point, floating point into an integer buffer, ...):
            copying would cast silently. Float16/32/64 and bfloat16 among themselves are the same kind.
        prefix: the child the file was loaded into when its names are relative to it (``"net"`` for a
            LightningModule holding ``self.net``); ``""`` when they are relative to the target itself. All names
            above are then relative to that child.
        source_format: the library whose folder :func:`~lightning_dnn.hub.load_pretrained` read
            (``"lightning-dnn"``, ``"timm"``, ``"pytorch-model-hub-mixin"``, ``"transformers"``, ``"diffusers"``,
            ``"safetensors"`` for weights only, ``"unknown"``); ``""`` for other loads.

    Example:
        >>> report = LoadReport(loaded=["a.weight"], mismatched=[("b.weight", (3, 2), (4, 2))])
        >>> report.ok
        False
        >>> print(report)
        LoadReport: 1 loaded, 0 skipped, 0 missing, 0 unexpected, 1 mismatched
          loaded: a.weight
          mismatched: b.weight (file (3, 2) vs target (4, 2))
    """

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    dtype_mismatched: list[tuple[str, str, str]] = field(default_factory=list)
    prefix: str = ""
    source_format: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unexpected or mismatched (what ``strict=True`` requires)."""
        return not (self.missing or self.unexpected or self.mismatched or self.dtype_mismatched)

    def problems(self) -> str:
        """One line per kind of problem, each with the full list of names (empty string when :attr:`ok`).

        Example:
            >>> LoadReport(missing=["x", "y"]).problems()
            'missing from the file (2): x, y'
        """
        lines = []
        if self.missing:
            lines.append(f"missing from the file ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"not in the target ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.mismatched:
            shown = ", ".join(_mismatch_text(m) for m in self.mismatched)
            lines.append(f"shape mismatch ({len(self.mismatched)}): {shown}")
        if self.dtype_mismatched:
            shown = ", ".join(_dtype_text(m) for m in self.dtype_mismatched)
            lines.append(f"dtype mismatch ({len(self.dtype_mismatched)}): {shown}")
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (
            f"LoadReport: {len(self.loaded)} loaded, {len(self.skipped)} skipped, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched"
        )
        lines = [head]
        for label, names in (
            ("loaded", self.loaded),
            ("skipped", self.skipped),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
        ):
            if names:
                lines.append(f"  {label}: {', '.join(names)}")
        if self.mismatched:
            lines.append(f"  mismatched: {', '.join(_mismatch_text(m) for m in self.mismatched)}")
        if self.dtype_mismatched:
            lines[0] += f", {len(self.dtype_mismatched)} dtype-mismatched"
            lines.append(f"  dtype-mismatched: {', '.join(_dtype_text(m) for m in self.dtype_mismatched)}")
        if self.prefix:
            lines.append(f"  into: {self.prefix} (the file's names are relative to it)")
        if self.source_format:
            lines.append(f"  format: {self.source_format}")
        return "\n".join(lines)


def _mismatch_text(item: tuple[str, Shape, Shape]) -> str:
    name, file_shape, target_shape = item
    return f"{name} (file {file_shape} vs target {target_shape})"


def _dtype_text(item: tuple[str, str, str]) -> str:
    name, file_dtype, target_dtype = item
    return f"{name} (file {file_dtype} vs target {target_dtype})"


def _dtype_kind(dtype: torch.dtype) -> str:
    """``"bool"``, ``"integer"``, ``"floating"`` or ``"complex"``: a copy across kinds changes what values mean."""
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating"
    return "integer"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def plan_partial_load(
    target: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    include: Patterns | None = None,
    exclude: Patterns | None = None,
    rename: Mapping[str, str] | None = None,
) -> tuple[LoadReport, list[tuple[Tensor, Tensor]]]:
    """Validate and compare without copying: the report and the ``(destination, source)`` tensor pairs to copy."""
    if not isinstance(target, nn.Module):
        raise TypeError(f"`target` must be an nn.Module, got {type(target).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"`state_dict` must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    file_tensors = apply_rename(state_dict, rename)
    target_tensors: dict[str, Tensor] = dict(target.state_dict(keep_vars=True))

    names = list(dict.fromkeys([*file_tensors, *target_tensors]))
    chosen = set(names if include is None else select_tensor_names(names, include, arg="include"))
    if exclude is not None:
        chosen -= set(select_tensor_names(names, exclude, arg="exclude"))

    def selected(name: str) -> bool:
        return name in chosen

    report = LoadReport()
    pairs: list[tuple[Tensor, Tensor]] = []
    # Report in the target's order (safetensors files list names alphabetically), then file-only names.
    position = {name: i for i, name in enumerate(target_tensors)}
    ordered = sorted(file_tensors.items(), key=lambda item: position.get(item[0], len(position)))
    for name, tensor in ordered:
        if not selected(name):
            report.skipped.append(name)
        elif name not in target_tensors:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(target_tensors[name].shape):
            report.mismatched.append((name, tuple(tensor.shape), tuple(target_tensors[name].shape)))
        elif _dtype_kind(tensor.dtype) != _dtype_kind(target_tensors[name].dtype):
            report.dtype_mismatched.append(
                (name, _dtype_name(tensor.dtype), _dtype_name(target_tensors[name].dtype))
            )
        else:
            report.loaded.append(name)
            pairs.append((target_tensors[name], tensor))
    report.missing = [n for n in target_tensors if selected(n) and n not in file_tensors]
    return report, pairs


def find_prefix(target: nn.Module, names: Sequence[str]) -> tuple[str, nn.Module]:
    """The submodule of ``target`` whose names the file's ``names`` are relative to: ``("", target)`` or a child.

    When no file name is a name of ``target`` itself, the submodule whose ``state_dict`` names share the most
    names with the file is chosen (the first, i.e. the outermost, on a tie): ``("net", target.net)`` for a
    LightningModule holding ``self.net`` and a file saved from that network.

    Example:
        >>> holder = nn.Module()
        >>> holder.net = nn.Sequential(nn.Linear(2, 2))
        >>> find_prefix(holder, ["0.weight", "0.bias"])[0], find_prefix(holder, ["net.0.weight"])[0]
        ('net', '')
    """
    wanted = set(names)
    own = list(target.state_dict(keep_vars=True))
    if wanted & set(own) or not wanted:
        return "", target
    best, best_count = ("", target), 0
    for prefix, module in target.named_modules():
        if not prefix:
            continue
        start = prefix + "."
        count = len(wanted & {n[len(start) :] for n in own if n.startswith(start)})
        if count > best_count:
            best, best_count = (prefix, module), count
    return best


def load_into(
    target: nn.Module,
    tensors: Mapping[str, Tensor],
    *,
    include: Patterns | None,
    exclude: Patterns | None,
    rename: Mapping[str, str] | None,
    strict: bool,
    source: str,
) -> LoadReport:
    """Load ``tensors`` into ``target``, or into the child their names are relative to (:func:`find_prefix`).

    ``include``/``exclude`` are then relative to that child; the report's ``prefix`` names it (and it is logged).
    """
    prefix, module = find_prefix(target, list(apply_rename(tensors, rename)))
    report, pairs = plan_partial_load(module, tensors, include=include, exclude=exclude, rename=rename)
    report.prefix = prefix
    if prefix:
        log.info("%s: names are relative to %r of %s; loading into it", source, prefix, type(target).__name__)
    enforce_strictness(report, strict=strict, source=source, target=module)
    copy_pairs(pairs)
    return report


def check_options(
    include: Patterns | None, exclude: Patterns | None, rename: Mapping[str, str] | None, strict: bool
) -> None:
    """Validate the selection arguments up front (before a download), with the same errors as a load."""
    if include is not None:
        compile_patterns("include", include)
    if exclude is not None:
        compile_patterns("exclude", exclude)
    apply_rename({}, rename, check_unused=False)
    check_bool("strict", strict)


def enforce_strictness(report: LoadReport, *, strict: bool, source: str, target: nn.Module) -> None:
    """Raise (strict) or warn (not strict) with the full list of problems in ``report``."""
    check_bool("strict", strict)
    if report.ok:
        return
    what = f"loading {source} into {type(target).__name__}"
    if strict:
        raise StrictLoadError(
            f"Strict load failed when {what}; nothing was copied.\n{report.problems()}\n"
            "Narrow the selection with include=/exclude=, map names with rename=, convert a tensor whose dtype "
            "is of another kind yourself if that is really meant, or pass strict=False to load what fits.",
            report,
        )
    rank_zero_warn(
        f"Partial load when {what} (strict=False); copied {len(report.loaded)} tensors.\n{report.problems()}"
    )


def copy_pairs(pairs: Sequence[tuple[Tensor, Tensor]]) -> None:
    """Copy each source tensor into its destination in place (casting dtype, moving device)."""
    with torch.no_grad():
        for destination, source in pairs:
            destination.copy_(source)


def apply_rename(
    state_dict: Mapping[str, Tensor], rename: Mapping[str, str] | None, *, check_unused: bool = True
) -> dict[str, Tensor]:
    if rename is None:
        return dict(state_dict)
    if not isinstance(rename, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in rename.items()
    ):
        raise TypeError(f"`rename` must be a mapping of old prefix -> new prefix (strings), got {rename!r}")
    if "" in rename:
        raise ValueError(
            "`rename` keys must be non-empty prefixes; to add a prefix to every name use e.g. {'hidden': 'net.hidden', 'output': 'net.output'}"
        )
    prefixes = sorted(rename, key=len, reverse=True)
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for name, tensor in state_dict.items():
        new = name
        for prefix in prefixes:
            if name.startswith(prefix):
                new = rename[prefix] + name[len(prefix) :]
                break
        if new in out:
            raise ValueError(f"`rename`={dict(rename)} maps both {origin[new]!r} and {name!r} to {new!r}")
        out[new] = tensor
        origin[new] = name
    unused = [p for p in rename if not any(n.startswith(p) for n in state_dict)]
    if unused and check_unused:
        raise ValueError(
            f"`rename` prefixes {unused} match no name in the file; file names: {_short(state_dict)}"
        )
    return out


def _short(names: Mapping[str, object] | Sequence[str], limit: int = 30) -> str:
    return shorten(list(names), limit)


def rank_zero_warn(message: str) -> None:
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_rank() != 0
    ):
        log.debug(message)
        return
    warnings.warn(message, UserWarning, stacklevel=3)
