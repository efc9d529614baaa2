"""The test-suite switch to ``lightning.pytorch``: ``LIGHTNING_DNN_TEST_PACKAGE=lightning``.

The tests import ``pytorch_lightning`` (``pl.Trainer``, ``pl.LightningModule``). Under the switch, ``install``
makes every ``pytorch_lightning[.X]`` import return the ``lightning.pytorch[.X]`` module (and
``lightning_fabric[.X]`` the ``lightning.fabric[.X]`` one), and restricts lightning_dnn to ``lightning``
(``LIGHTNING_DNN_PACKAGE``), so the same tests run as a ``lightning``-only user's code. Subprocesses (DDP
scripts, the CLI) get it through ``sitecustomize`` in ``tests/_lightning_site`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path
from types import ModuleType

SWITCH = "LIGHTNING_DNN_TEST_PACKAGE"
_ALIASES = {"pytorch_lightning": "lightning.pytorch", "lightning_fabric": "lightning.fabric"}
_SITE = Path(__file__).resolve().parent / "_lightning_site"


def _target(name: str) -> str | None:
    root, dot, rest = name.partition(".")
    return _ALIASES[root] + dot + rest if root in _ALIASES else None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec; keep the module's own


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        aliased = _target(name)
        if aliased is None:
            return None
        if importlib.util.find_spec(aliased) is None:
            return None
        return importlib.machinery.ModuleSpec(name, _AliasLoader(aliased))


def requested() -> str | None:
    """The package the switch asks for: ``"lightning"``, or ``None`` (the default, ``pytorch_lightning``)."""
    value = os.environ.get(SWITCH, "").strip()
    if value in ("", "pytorch_lightning"):
        return None
    if value != "lightning":
        raise ValueError(f"{SWITCH} must be 'lightning' or 'pytorch_lightning', got {value!r}")
    return value


def install() -> None:
    """Alias the packages in this process (before anything imports them) and in its subprocesses."""
    if any(name.partition(".")[0] in _ALIASES for name in sys.modules):
        raise RuntimeError(f"{SWITCH}=lightning: pytorch_lightning was imported before the switch was installed")
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
    os.environ["LIGHTNING_DNN_PACKAGE"] = "lightning"
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(_SITE) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(_SITE), *[p for p in paths if p]])
