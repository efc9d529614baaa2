"""The selection rule (DESIGN.md §4) shared by regularization, callbacks and the hub.

A module is selected when ``re.fullmatch`` of a pattern matches its dotted name in ``root.named_modules()``,
either whole or after dropping leading components: ``hidden[12]`` selects ``net.hidden1`` and ``net.hidden2``,
never ``net.hidden12``. A parameter is selected when its module is. Patterns that select nothing raise a
:class:`ValueError` naming the available modules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

__all__ = ["Patterns", "compile_patterns", "name_matches", "select_modules", "select_parameters"]

Patterns = str | re.Pattern[str] | Sequence[str | re.Pattern[str]]


def compile_patterns(arg: str, patterns: Patterns) -> list[re.Pattern[str]]:
    """Compile one regex or a sequence of them, raising ValueError/TypeError that names ``arg``."""
    items: Iterable[str | re.Pattern[str]]
    if isinstance(patterns, str | re.Pattern):
        items = [patterns]
    elif isinstance(patterns, Sequence) and len(patterns) > 0:
        items = patterns
    else:
        raise TypeError(
            f"`{arg}` must be a regex string or a non-empty list of them, got {type(patterns).__name__} {patterns!r}"
        )
    compiled = []
    for p in items:
        if isinstance(p, re.Pattern):
            compiled.append(p)
        elif isinstance(p, str):
            try:
                compiled.append(re.compile(p))
            except re.error as err:
                raise ValueError(f"`{arg}` contains an invalid regex {p!r}: {err}") from err
        else:
            raise TypeError(f"`{arg}` entries must be regex strings, got {type(p).__name__} {p!r}")
    return compiled


def name_matches(name: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    """True when a pattern fullmatches ``name`` or one of its suffixes after dropping leading components."""
    parts = name.split(".")
    suffixes = [".".join(parts[i:]) for i in range(len(parts))]
    return any(p.fullmatch(s) for p in patterns for s in suffixes)


def _available(root: nn.Module) -> str:
    names = [n for n, _ in root.named_modules() if n]
    shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
    return shown or "(the model has no submodules)"


def select_modules(root: nn.Module, patterns: Patterns, *, arg: str = "pattern") -> list[tuple[str, nn.Module]]:
    """Return the ``(name, module)`` pairs of ``root`` selected by ``patterns``, outermost first.

    A module whose ancestor is already selected is still returned (callers decide whether that matters).

    Raises:
        ValueError: when nothing is selected; the message lists the available module names.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential()
        >>> net.add_module("hidden1", nn.Linear(2, 2)); net.add_module("hidden12", nn.Linear(2, 2))
        >>> [n for n, _ in select_modules(net, "hidden[12]")]
        ['hidden1']
    """
    compiled = compile_patterns(arg, patterns)
    chosen = [(n, m) for n, m in root.named_modules() if n and name_matches(n, compiled)]
    if not chosen:
        pats = [p.pattern for p in compiled]
        raise ValueError(f"`{arg}`={pats} selects no module. Available modules: {_available(root)}")
    return chosen


def select_parameters(
    root: nn.Module, patterns: Patterns, *, arg: str = "pattern"
) -> list[tuple[str, nn.Parameter]]:
    """Return the ``(name, parameter)`` pairs whose owning module (or an ancestor) is selected.

    Each parameter appears once, in ``named_parameters()`` order.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> [n for n, _ in select_parameters(net, "2")]
        ['2.weight', '2.bias']
    """
    chosen = select_modules(root, patterns, arg=arg)
    prefixes = [n + "." for n, _ in chosen]
    return [(n, p) for n, p in root.named_parameters() if any(n.startswith(pre) for pre in prefixes)]
