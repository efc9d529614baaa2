"""The import graph keeps the layering of DESIGN.md §1: imports flow one way, down, with no circles.

Layers, bottom to top: the ground (``_checks``, ``_selection``, ...) <- ``nn``, ``optim``, ``loading`` <-
``regularization``, ``data``, the spec resolution <- ``module``, ``callbacks``, ``profiler`` <- ``hub`` <- ``cli``.
A module may import its own package and anything in a lower layer; never a higher layer, never a sibling package
of its own layer. Imports inside ``if TYPE_CHECKING:`` are type-only and exempt; imports inside functions count
(hiding a circle in a function body is still a circle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_dnn"

#: Top-level part of a module name (after ``lightning_dnn.``) -> layer. A new top-level module must be placed here.
LAYERS: dict[str, int] = {
    "_checks": 0,
    "_lightning": 0,
    "_registry": 0,
    "_selection": 0,
    "_state_key": 0,
    "_version": 0,
    "nn": 1,
    "optim": 1,
    "loading": 1,
    "regularization": 2,
    "data": 2,
    "_specs": 2,
    "_classifier": 2,
    "module": 3,
    "callbacks": 3,
    "profiler": 3,
    "pretrain": 3,
    "hub": 4,
    "cli": 5,
}
#: Packages that must never import Lightning (plain torch code).
NO_LIGHTNING = {"_checks", "_registry", "_selection", "_version", "_specs", "nn", "optim", "loading"}
LIGHTNING_ROOTS = ("pytorch_lightning", "lightning", "torchmetrics")


def _module_name(path: Path) -> str:
    parts = ["lightning_dnn", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Absolute names imported anywhere in ``tree`` except under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports(child, module, is_package))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield from _from_import(node, module, is_package)
        yield from _imports(node, module, is_package)


def _from_import(node: ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    yield base
    for alias in node.names:  # `from pkg import submodule` imports the submodule
        yield f"{base}.{alias.name}"


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set(_imports(tree, name, path.name == "__init__.py"))
        graph[name] = {t for t in targets if t in files or t.split(".")[0] in LIGHTNING_ROOTS}
    return graph


GRAPH = _graph()


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({_top(m) for m in GRAPH if _top(m)} - set(LAYERS))
    assert not unplaced, f"place these top-level modules in LAYERS: {unplaced}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _top(m)))
def test_imports_flow_down(module: str) -> None:
    here = _top(module)
    wrong = []
    for target in sorted(GRAPH[module]):
        if target.split(".")[0] in LIGHTNING_ROOTS:
            if here in NO_LIGHTNING:
                wrong.append(f"{target} (plain torch code never imports Lightning)")
            continue
        there = _top(target)
        if there == here:
            continue
        if not there:
            wrong.append(f"{target} (the top-level package imports everything)")
        elif LAYERS[there] >= LAYERS[here] and not (LAYERS[here] == LAYERS[there] == 0):
            wrong.append(f"{target} (layer {LAYERS[there]} from layer {LAYERS[here]})")
    assert not wrong, f"{module} imports upwards or sideways: {wrong}"


def test_one_module_imports_the_lightning_packages() -> None:
    """Only ``_lightning`` imports ``pytorch_lightning``/``lightning`` at run time (docs/LIGHTNING_PACKAGES.md), so a
    user with one of the two packages never imports the other; type-only imports are exempt."""
    importers = {
        module: sorted(t for t in targets if t.split(".")[0] in ("pytorch_lightning", "lightning"))
        for module, targets in GRAPH.items()
        if module != "lightning_dnn._lightning"
    }
    bad = {m: t for m, t in importers.items() if t}
    assert not bad, f"import Lightning through lightning_dnn._lightning: {bad}"


def test_named_rules_of_the_design() -> None:
    """The rules the issue names, spelled out so that a change to LAYERS cannot quietly relax them."""
    forbidden = {
        "callbacks": {"data", "hub", "cli", "module"},
        "pretrain": {"hub", "cli", "module", "callbacks"},
        "hub": {"callbacks", "module", "cli", "data"},
        "nn": {"callbacks", "hub", "cli", "module", "data"},
        "optim": {"callbacks", "hub", "cli", "module", "data"},
        "loading": {"callbacks", "hub", "cli", "module", "data"},
    }
    for module, all_targets in GRAPH.items():
        if _top(module) == "cli":
            continue
        targets = {t for t in all_targets if t.startswith("lightning_dnn.")}
        assert not any(_top(t) == "cli" for t in targets), f"{module} imports the CLI"
        bad = {_top(t) for t in targets} & forbidden.get(_top(module), set())
        assert not bad, f"{module} imports {sorted(bad)}"


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over the module graph: every component is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH.get(node, ()):
            if nxt not in GRAPH:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_imports_hidden_in_functions_and_skips_type_only_ones() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from lightning_dnn.cli import DNNCLI\n"
        "def f():\n    from lightning_dnn.hub import zoo\n"
        "from . import _io\n"
    )
    found = set(_imports(ast.parse(source), "lightning_dnn.hub.save", False))
    assert "lightning_dnn.hub.zoo" in found and "lightning_dnn.hub._io" in found
    assert not any(n.startswith("lightning_dnn.cli") for n in found)
