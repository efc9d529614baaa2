"""A FeatureCache(storage="disk") fit whose build can be killed at a chosen step, for test_feature_cache_disk.py.

:func:`fit` trains a small MLP (``hidden1``-``hidden2`` frozen by hand, so the trunk is cached) on a fixed
DeviceBatchLoader with the cache under ``root`` and returns the final state and the number of samples the
trunk processed (``N``: the cache was built; 0: it was read from disk).

:class:`BuildSteps` counts the build's steps that touch the disk (creating the temporary directory, each chunk
written, each file flushed and hashed, the manifest, the trunk plan) and can SIGKILL the process just before
step ``k``, or after the last one. ``python -m tests.reliability._fc_fit ROOT --pace SECONDS`` runs the fit in a
fresh interpreter, writing ``ROOT.started`` at the build's first step and sleeping ``SECONDS`` at each step, so a
parent can kill it at a random moment of the build.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_dnn.callbacks.feature_cache import FeatureCache, _files
from lightning_dnn.callbacks.feature_cache._disk import DiskCache
from lightning_dnn.callbacks.feature_cache._store import FeatureStore
from lightning_dnn.loading import DeviceBatchLoader
from tests.callbacks.conftest import TinyModule, make_mlp
from tests.trainer_utils import quiet_trainer_kwargs

N, D, C = 64, 12, 4


def data(shift: float = 0.0) -> tuple[Tensor, Tensor]:
    """The fixed samples (``shift`` moves every input, giving another cache entry of the same shapes)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=gen) + shift, torch.randint(0, C, (N,), generator=gen)


def fit(root: Path, *, shift: float = 0.0) -> tuple[dict[str, Tensor], int]:
    """Train 2 epochs with the disk cache under ``root``; the final state and the trunk's sample count."""
    torch.manual_seed(0)
    net = make_mlp(D, (16, 16), C)
    for name in ("hidden1", "hidden2"):
        net.get_submodule(name).requires_grad_(False)
    model = TinyModule(net, optimizer="adam", lr=1e-2)
    seen = [0]
    net.hidden1.register_forward_hook(lambda module, args, out: seen.__setitem__(0, seen[0] + len(out)))
    x, y = data(shift)
    cache = FeatureCache(storage="disk", cache_dir=root, batch_size=8)
    trainer = pl.Trainer(**quiet_trainer_kwargs(root.parent / "runs", max_epochs=2), callbacks=[cache])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(workers|LeafSpec).*")
        trainer.fit(model, DeviceBatchLoader(x, y, batch_size=16, seed=3))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, seen[0]


class BuildSteps:
    """Counts the build's disk steps; SIGKILLs this process before step ``kill_at`` (``total + 1``: after all).

    Args:
        kill_at: the step to die at (1-based), or ``None`` to count only.
        pace: seconds to sleep at each step (to give a parent time to kill at a random moment).
        started: a file to create at the first step.
    """

    def __init__(self, kill_at: int | None = None, *, pace: float = 0.0, started: Path | None = None) -> None:
        self.kill_at, self.pace, self.started = kill_at, pace, started
        self.count = 0

    def step(self) -> None:
        """One step: die here if it is the chosen one."""
        self.count += 1
        if self.count == 1 and self.started is not None:
            self.started.touch()
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.pace:
            time.sleep(self.pace)

    def _before(self, fn: Callable[..., Any], skip: Callable[..., bool] | None = None) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if skip is None or not skip(*args, **kwargs):
                self.step()
            return fn(*args, **kwargs)

        return wrapped

    def _after(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            self.step()
            return result

        return wrapped

    @contextlib.contextmanager
    def installed(self) -> Iterator[BuildSteps]:
        """Count (and kill) inside the block."""
        patches: list[tuple[Any, str, Any]] = [
            (_files.EntryWriter, "__init__", self._after(_files.EntryWriter.__init__)),
            (FeatureStore, "write", self._before(FeatureStore.write)),
            (_files, "fsync", self._before(_files.fsync)),
            (_files, "chunk_hashes", self._before(_files.chunk_hashes)),
            (
                _files,
                "write_json",
                self._before(_files.write_json, lambda path, *a, **k: path.name == _files.OWNER),
            ),
            (DiskCache, "write_plan", self._after(self._before(DiskCache.write_plan))),
        ]
        saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
        try:
            for owner, name, new in patches:
                setattr(owner, name, new)
            yield self
        finally:
            for owner, name, old in saved:
                setattr(owner, name, old)


def main() -> None:
    """Run :func:`fit` in this interpreter, paced, announcing the build's start (see the module docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--pace", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with BuildSteps(pace=args.pace, started=args.root.with_suffix(".started")).installed():
        fit(args.root)


if __name__ == "__main__":
    main()
