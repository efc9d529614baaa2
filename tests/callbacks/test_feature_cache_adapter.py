"""FeatureCache touches Lightning's internals in one file, ``_lightning.py``: a Lightning upgrade reads only it.

The sources of ``lightning_dnn/callbacks/feature_cache/`` are parsed: no other module names a trainer internal
(the fit loop, its data source, the strategy, ...) or imports from Lightning's internal packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightning_dnn.callbacks.feature_cache as package

PACKAGE = Path(package.__file__).parent
ADAPTER = "_lightning.py"

INTERNAL_NAMES = frozenset(
    {
        "fit_loop",
        "epoch_loop",
        "val_loop",
        "_data_source",
        "_data_connector",
        "_combined_loader",
        "_process_dataloader",
        "_accelerator_connector",
        "_checkpoint_connector",
        "_logger_connector",
        "_results",
        "precision_plugin",
        "strategy",
        "reduce_boolean_decision",
        "batch_to_device",
        "root_device",
        "is_overridden",
        "RunningStage",
        "TrainerFn",
    }
)
INTERNAL_MODULES = (
    "pytorch_lightning.trainer",
    "pytorch_lightning.loops",
    "pytorch_lightning.strategies",
    "pytorch_lightning.plugins",
    "pytorch_lightning.accelerators",
    "pytorch_lightning.utilities.model_helpers",
    "lightning_fabric",
    "lightning",
)


def lightning_uses(path: Path) -> set[str]:
    """The internal names, internal modules and private Lightning names that ``path`` uses."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in INTERNAL_NAMES:
            found.add(f".{node.attr}")
        elif isinstance(node, ast.Name) and node.id in INTERNAL_NAMES:
            found.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.update(f"import {m}" for m in modules if _internal(m))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytorch_lightning"):
                found.update(f"import {a.name}" for a in node.names if a.name.startswith("_"))
    return found


def _internal(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in INTERNAL_MODULES)


def test_only_the_adapter_touches_lightning_internals() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert ADAPTER in [p.name for p in modules]
    offenders = {p.name: sorted(uses) for p in modules if p.name != ADAPTER and (uses := lightning_uses(p))}
    assert offenders == {}


def test_the_adapter_is_where_the_internals_are() -> None:
    uses = lightning_uses(PACKAGE / ADAPTER)  # keeps the list above honest: the adapter does use them
    assert {
        ".fit_loop",
        "._data_source",
        "_process_dataloader",
        ".strategy",
        "is_overridden",  # the strategy types and is_overridden of the Trainer's package, via lightning_dnn._lightning
    } <= uses
