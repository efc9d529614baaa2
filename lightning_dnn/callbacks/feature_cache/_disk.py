"""The cache's keys (model and data fingerprints) and its directory of entries and trunk plans.

Layout under the root: ``<split>-<model>-<data>/`` holds an entry (see :class:`FeatureStore`), and
``plans/<plan key>.json`` remembers the trunk found for an architecture, boundary request and set of frozen
parameters, so a later run that finds its entry on disk needs no forward pass at all. ``.tmp-*`` names are
builds in progress (or leftovers of dead ones, removed by :meth:`DiskCache.sweep_once`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_dnn.callbacks.feature_cache._files import FORMAT_VERSION, sweep
from lightning_dnn.callbacks.feature_cache._plan import TrunkPlan
from lightning_dnn.callbacks.feature_cache._store import FeatureStore, tensor_digest
from lightning_dnn.callbacks.feature_cache._trunk import trunk_tensors

__all__ = ["DiskCache", "data_fingerprint", "model_fingerprint", "plan_key"]

log = logging.getLogger(__name__)

_SHOWN = 24  # hex digits of each fingerprint in a directory name


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def plan_key(request: str | None, network_name: str, network: nn.Module) -> str:
    """Identify a trunk search: the boundary request, the architecture and which parameters are frozen.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> a = plan_key(None, "net", net); net[0].weight.requires_grad_(False)
        Parameter containing: ...
        >>> a == plan_key(None, "net", net)
        False
    """
    return _sha(
        {
            "request": request,
            "network": [network_name, type(network).__qualname__],
            "modules": [[n, type(m).__qualname__] for n, m in network.named_modules()],
            "params": [[n, list(p.shape), p.requires_grad] for n, p in network.named_parameters()],
        }
    )[:32]


def model_fingerprint(pl_module: nn.Module, plan: TrunkPlan, **settings: Any) -> str:
    """The model side of a cache key: ``settings`` (split, precision, views, ...), the plan and the weights.

    The weights enter as the content hash of the trunk's parameters and buffers (:func:`tensor_digest`).
    """
    weights = tensor_digest(trunk_tensors(pl_module, plan))
    return _sha({"format": FORMAT_VERSION, "plan": plan.to_json(), "weights": weights, **settings})


def data_fingerprint(content: str, num_samples: int) -> str:
    """The data side of a cache key, from a content hash (or the user's ``"id:<data_id>"``).

    Data known only through an opaque dataset gets a run-local key instead, and is never reused.
    """
    return _sha({"content": content, "samples": num_samples})


class DiskCache:
    """The entries and trunk plans under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._swept = False

    def sweep_once(self) -> None:
        """Remove the temporary directories of dead builds under the root (the first time only)."""
        if not self._swept:
            self._swept = True
            removed = sweep(self.root)
            if removed:
                log.info("FeatureCache: removed %d leftover(s) of builds that did not finish", len(removed))

    def discard(self, directory: Path) -> None:
        """Delete an entry that failed its content check (a rebuild writes a new one)."""
        shutil.rmtree(directory, ignore_errors=True)

    def entry(self, key: str, model_fp: str, data_fp: str) -> Path:
        """The directory of the entry for ``key`` (``"train"``, ``"val0"``, ...) and the two fingerprints."""
        return self.root / f"{key}-{model_fp[:_SHOWN]}-{data_fp[:_SHOWN]}"

    def may_hold(self, key: str, model_fp: str) -> bool:
        """Whether an entry for these weights exists (before spending a pass over the data on its hash)."""
        prefix = f"{key}-{model_fp[:_SHOWN]}-"
        return self.root.is_dir() and any(p.name.startswith(prefix) for p in self.root.iterdir())

    def open(
        self, key: str, model_fp: str, data_fp: str, device: torch.device, *, verify_contents: bool = True
    ) -> FeatureStore | None:
        """The committed entry with exactly these fingerprints (its contents verified), or ``None``.

        Raises:
            CorruptEntry: the entry is there, but its files do not match their content hashes.
        """
        directory = self.entry(key, model_fp, data_fp)
        store = FeatureStore.open(directory, f"{model_fp}:{data_fp}", device, verify_contents=verify_contents)
        if store is None or store.manifest.get("kind") not in ("tensor", "tuple", "list"):
            return None
        return store

    def read_plan(self, key: str, module_names: set[str]) -> tuple[TrunkPlan | None, bool] | None:
        """A remembered ``(plan, complete)``, if there is one and its modules exist."""
        try:
            with open(self.root / "plans" / f"{key}.json", encoding="utf-8") as f:
                stored = json.load(f)
            plan = None if stored["plan"] is None else TrunkPlan.from_json(stored["plan"])
            complete = bool(stored["complete"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if plan is not None and not {*plan.trunk, plan.network} <= module_names:
            return None
        return plan, complete

    def write_plan(self, key: str, plan: TrunkPlan, complete: bool) -> None:
        """Remember a plan (written to a temporary file, then renamed)."""
        directory = self.root / "plans"
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"plan": plan.to_json(), "complete": complete}), encoding="utf-8")
        os.replace(tmp, directory / f"{key}.json")
