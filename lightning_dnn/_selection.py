"""The one selection rule shared by the callbacks, the penalties and the hub.

A pattern is ``re.fullmatch``-ed against a dotted name, whole or (where the names are relative to a
LightningModule) with exactly its first component dropped; never against deeper suffixes. A selected module selects
its whole subtree and all its tensors; a pattern may also name a tensor. See :func:`candidate_names`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

__all__ = [
    "Patterns",
    "available_names",
    "candidate_names",
    "compile_patterns",
    "name_matches",
    "select_modules",
    "select_parameters",
    "select_tensor_names",
    "shorten",
    "tensor_selected",
]

Patterns = str | re.Pattern[str] | Sequence[str | re.Pattern[str]]

_NOISE = ("num_batches_tracked",)


def compile_patterns(arg: str, patterns: Patterns) -> list[re.Pattern[str]]:
    """Compile one regex or a sequence of them, raising ValueError/TypeError that names ``arg``.

    Example:
        >>> [p.pattern for p in compile_patterns("freeze", ["hidden[12]", "output"])]
        ['hidden[12]', 'output']
    """
    items: Iterable[str | re.Pattern[str]]
    if isinstance(patterns, str | re.Pattern):
        items = [patterns]
    elif isinstance(patterns, Sequence) and len(patterns) > 0:
        items = patterns
    else:
        raise TypeError(
            f"`{arg}` must be a regex string or a non-empty list of them, got {type(patterns).__name__} {patterns!r}"
        )
    return [_compile_one(arg, p) for p in items]


def _compile_one(arg: str, pattern: object) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(f"`{arg}` entries must be regex strings, got {type(pattern).__name__} {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"`{arg}` contains an invalid regex {pattern!r}: {err}") from err


def candidate_names(name: str, *, drop_first: bool = True) -> tuple[str, ...]:
    """The names a pattern is matched against: ``name`` itself and, with ``drop_first``, ``name`` minus its first part.

    Names relative to a LightningModule start with the attribute that holds the network (``net.layer1``); dropping
    exactly that first component gives the name inside the network (``layer1``). Deeper suffixes are never tried,
    so ``conv1`` names ``net.conv1`` and not ``net.layer4.0.conv1``.

    Example:
        >>> candidate_names("net.layer4.0.conv1")
        ('net.layer4.0.conv1', 'layer4.0.conv1')
        >>> candidate_names("net.layer4.0.conv1", drop_first=False)
        ('net.layer4.0.conv1',)
    """
    if drop_first and "." in name:
        return (name, name.split(".", 1)[1])
    return (name,)


def name_matches(name: str, patterns: Sequence[re.Pattern[str]], *, drop_first: bool = True) -> bool:
    """Whether a pattern fullmatches one of :func:`candidate_names` of ``name``.

    Example:
        >>> pats = compile_patterns("pattern", "hidden[12]")
        >>> [name_matches(n, pats) for n in ("net.hidden1", "net.hidden12", "net.block.hidden1")]
        [True, False, False]
    """
    return any(p.fullmatch(c) for c in candidate_names(name, drop_first=drop_first) for p in patterns)


def tensor_selected(name: str, patterns: Sequence[re.Pattern[str]], *, drop_first: bool = True) -> bool:
    """Whether the tensor ``name`` is selected: it, or one of the modules that hold it, is named by a pattern.

    Example:
        >>> pats = compile_patterns("include", "hidden[12]")
        >>> [tensor_selected(n, pats, drop_first=False) for n in ("hidden1.linear.weight", "hidden12.linear.bias")]
        [True, False]
    """
    parts = name.split(".")
    return any(name_matches(".".join(parts[:i]), patterns, drop_first=drop_first) for i in range(1, len(parts) + 1))


def available_names(root: nn.Module, limit: int = 40) -> str:
    """The module names of ``root``, then its tensor names (without ``num_batches_tracked``), for error messages.

    Example:
        >>> available_names(nn.Sequential(nn.Linear(2, 2)))
        'modules: 0; tensors: 0.weight, 0.bias'
    """
    modules = [n for n, _ in root.named_modules() if n]
    tensors = [n for n in root.state_dict() if not n.endswith(_NOISE)]
    return f"modules: {shorten(modules, limit)}; tensors: {shorten(tensors, limit)}"


def shorten(names: Sequence[str], limit: int = 40) -> str:
    """Join ``names`` for a message, cut after ``limit`` with the total count.

    Example:
        >>> shorten(["a", "b", "c"], limit=2)
        'a, b, ... (3 in all)'
    """
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _no_match_error(arg: str, pattern: re.Pattern[str], what: str, root: nn.Module) -> ValueError:
    return ValueError(
        f"`{arg}` pattern {pattern.pattern!r} selects no {what}. Available {available_names(root)}. A pattern "
        "must re.fullmatch a dotted name relative to the model, or that name without its first component."
    )


def select_modules(
    root: nn.Module, patterns: Patterns, *, arg: str = "pattern", drop_first: bool = True
) -> list[tuple[str, nn.Module]]:
    """Return the ``(name, module)`` pairs of ``root`` named by ``patterns``, in ``named_modules()`` order.

    A module whose ancestor is already selected is still returned (callers decide whether that matters).

    Raises:
        ValueError: when a pattern selects no module; the message lists the available modules and tensors.

    Example:
        >>> net = nn.Sequential()
        >>> net.add_module("hidden1", nn.Linear(2, 2)); net.add_module("hidden12", nn.Linear(2, 2))
        >>> [n for n, _ in select_modules(net, "hidden[12]")]
        ['hidden1']
    """
    compiled = compile_patterns(arg, patterns)
    named = [(n, m) for n, m in root.named_modules() if n]
    for pattern in compiled:
        if not any(name_matches(n, [pattern], drop_first=drop_first) for n, _ in named):
            raise _no_match_error(arg, pattern, "module", root)
    return [(n, m) for n, m in named if name_matches(n, compiled, drop_first=drop_first)]


def select_parameters(
    root: nn.Module, patterns: Patterns, *, arg: str = "pattern", drop_first: bool = True
) -> list[tuple[str, nn.Parameter]]:
    r"""Return the ``(name, parameter)`` pairs selected by ``patterns``: by a holding module or by their own name.

    Each parameter appears once, in ``named_parameters()`` order.

    Raises:
        ValueError: when a pattern selects no module and no parameter.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> [n for n, _ in select_parameters(net, "2")]
        ['2.weight', '2.bias']
        >>> [n for n, _ in select_parameters(net, r"0\.bias")]
        ['0.bias']
    """
    compiled = compile_patterns(arg, patterns)
    params = list(root.named_parameters())
    names = [n for n, _ in root.named_modules() if n] + [n for n, _ in params]
    for pattern in compiled:
        if not any(name_matches(n, [pattern], drop_first=drop_first) for n in names):
            raise _no_match_error(arg, pattern, "module or parameter", root)
    return [(n, p) for n, p in params if tensor_selected(n, compiled, drop_first=drop_first)]


def select_tensor_names(
    names: Sequence[str], patterns: Patterns, *, arg: str = "pattern", drop_first: bool = False
) -> list[str]:
    """Return the tensor ``names`` selected by ``patterns`` (the hub's ``include``/``exclude``).

    Names here are relative to the network loaded into, so by default no component is dropped.

    Raises:
        ValueError: when a pattern names neither a tensor nor a module holding one.

    Example:
        >>> select_tensor_names(["hidden1.w", "hidden12.w", "output.w"], "hidden[12]")
        ['hidden1.w']
    """
    compiled = compile_patterns(arg, patterns)
    for pattern in compiled:
        if not any(tensor_selected(n, [pattern], drop_first=drop_first) for n in names):
            shown = shorten([n for n in names if not n.endswith(_NOISE)], 30)
            raise ValueError(
                f"`{arg}` pattern {pattern.pattern!r} selects no name. Names: {shown}. A pattern must "
                "re.fullmatch a tensor name or the name of a module holding it, relative to the network."
            )
    return [n for n in names if tensor_selected(n, compiled, drop_first=drop_first)]
