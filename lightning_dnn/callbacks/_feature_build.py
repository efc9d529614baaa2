"""The build pass of :class:`~lightning_dnn.callbacks.FeatureCache`: every sample's features, once across ranks.

The network runs in eval mode under ``no_grad`` and the Trainer's precision context. Rank ``r`` of ``W`` reads
samples ``r, r + W, ...`` in chunks of ``size``; every rank runs ``ceil(ceil(N / W) / size)`` chunks (empty ones
at the end are padded), and one ``all_gather`` per chunk and tensor puts chunk ``j`` of every rank at rows
``j * size * W ...`` of the cache: rank ``r``'s row ``i`` is sample ``(j * size + i) * W + r``.

The first chunk runs the whole network, with hooks: it yields the trace (when the trunk is not known yet), the
features, and the reference output against which ``network(features)`` with the trunk skipped is checked.
The later chunks stop at the boundary. Augmented views are read with the random generators seeded per
``(seed, view, rank)`` and restored afterwards, so building never moves the training run's random streams.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_dnn.callbacks._feature_loaders import DatasetData, TensorData
from lightning_dnn.callbacks._feature_store import FeatureStore, StorageKind
from lightning_dnn.callbacks._feature_trunk import (
    METHOD,
    Shadow,
    Trace,
    TrunkPlan,
    TrunkRunner,
    capture_boundary,
    max_difference,
    trace_forward,
)

__all__ = ["BuildSpec", "CutRejected", "build_features", "load_into_memory"]


class CutRejected(Exception):
    """``network(cached features)`` does not reproduce ``network(inputs)`` for ``plan``; the message says why."""

    def __init__(self, message: str, plan: TrunkPlan) -> None:
        super().__init__(message)
        self.plan = plan


@dataclass
class BuildSpec:
    """What :func:`build_features` needs from the callback.

    Attributes:
        plan: the trunk, or ``None`` to trace the network on the first chunk and call ``plan_from_trace``.
        plan_from_trace: the trunk for a fresh trace (``None``: nothing to cache).
        allocate: an empty store for the plan, given one row of each cached tensor (features first).
    """

    trainer: pl.Trainer
    module: pl.LightningModule
    network: str
    data: TensorData | DatasetData
    views: int
    size: int
    seed: int
    method: bool
    plan: TrunkPlan | None
    plan_from_trace: Callable[[Trace], TrunkPlan | None]
    allocate: Callable[[TrunkPlan, list[Tensor]], FeatureStore]
    templates: list[Tensor] = field(default_factory=list)


def build_features(spec: BuildSpec) -> tuple[TrunkPlan, FeatureStore] | None:
    """Fill a store with the features of every sample (and the batches' other tensors)."""
    trainer, data = spec.trainer, spec.data
    strategy, precision = trainer.strategy, trainer.precision_plugin
    world, rank = trainer.world_size, trainer.global_rank
    n = data.num_samples
    if n < world:
        raise ValueError(f"FeatureCache: {n} samples cannot be shared by {world} processes")
    steps = math.ceil(math.ceil(n / world) / spec.size)
    network = spec.module.get_submodule(spec.network)
    modes = [(m, m.training) for m in network.modules()]

    device = strategy.root_device

    def prepare(batch: Any) -> Any:  # what the fit loop does to a batch (transfer hooks are refused)
        batch = precision.convert_input(batch)
        return batch.to(device) if isinstance(batch, Tensor) else strategy.batch_to_device(batch)

    plan, store = spec.plan, None
    feats: Tensor | None
    network.eval()
    runner: TrunkRunner | None = None
    try:
        with torch.no_grad(), precision.train_step_context(), contextlib.ExitStack() as stack:
            for view in range(spec.views):
                seed = mix_seed(spec.seed, view, rank)
                with isolated_rng(seed):
                    for step, (x, rest) in enumerate(
                        data.chunks(rank, world, spec.size, steps, seed, prepare)
                    ):
                        if store is None:
                            assert x is not None  # n >= world: every rank has samples in its first chunk
                            first = _first_chunk(spec, x, rest)
                            if first is None:
                                return None
                            plan, store, feats = first
                            runner = stack.enter_context(TrunkRunner(spec.module, plan))
                        else:
                            assert runner is not None
                            feats = None if x is None else runner(x)
                        _write(spec, store, view, step, feats, rest)
                if data.rest_full is not None and store is not None:
                    store.write(view, 0, data.rest_full, first=1)
    except BaseException:
        if store is not None:
            store.abort()
        raise
    finally:
        for m, mode in modes:
            m.training = mode
    assert plan is not None and store is not None
    return plan, store


def _first_chunk(
    spec: BuildSpec, x: Any, rest: list[Tensor] | None
) -> tuple[TrunkPlan, FeatureStore, Tensor] | None:
    module, plan = spec.module, spec.plan
    network = module.get_submodule(spec.network)
    try:
        if plan is None:
            frozen = {
                n for n, m in module.named_modules() if all(not p.requires_grad for p in m.parameters())
            }
            frozen.add(f"{spec.network}.{METHOD}".lstrip("."))
            output, trace, captured = trace_forward(
                network, spec.network, x, method=spec.method, capture=frozen.__contains__
            )
            plan = spec.plan_from_trace(trace)
            if plan is None:
                return None
            features = captured[plan.boundary]
        else:
            output, features = capture_boundary(module, plan, x)
    except NotImplementedError as err:
        raise TypeError(
            f"FeatureCache calls the network ({type(network).__name__}) with the batch's inputs, but its forward "
            "is not implemented; keep the layers in a submodule (e.g. self.net) or define forward."
        ) from err
    check = Shadow()
    check.apply(module, plan)
    try:
        replay = network(features)
    finally:
        check.remove()
    diff, scale = max_difference(output, replay), max_difference(output, _zeros_like(output))
    exact = features.dtype in (torch.float32, torch.float64)
    tol = 1e-5 + 1e-4 * scale if exact else 1e-3 + 1e-2 * scale
    if not spec.trainer.strategy.reduce_boolean_decision(diff <= tol, all=True):
        raise CutRejected(
            f"FeatureCache: the network's output computed from the cached output of {plan.boundary} differs from "
            f"its output on the inputs (max |diff| {diff:.3g}): its forward transforms the inputs before the "
            "boundary with code that is not a module, or runs trunk modules again after it. Cache an "
            "nn.Sequential-like network, or use boundary='forward_features' with forward_features/forward_head.",
            plan,
        )
    spec.templates = [features[:1], *(r[:1] for r in rest or [])]
    rows = [
        features[0],
        *(r[0] for r in (spec.data.rest_full if spec.data.rest_full is not None else rest or [])),
    ]
    return plan, spec.allocate(plan, rows), features


def _write(
    spec: BuildSpec,
    store: FeatureStore,
    view: int,
    step: int,
    feats: Tensor | None,
    rest: list[Tensor] | None,
) -> None:
    trainer, size, n = spec.trainer, spec.size, spec.data.num_samples
    world = trainer.world_size
    values: list[Tensor | None] = (
        [feats, *(rest or [])] if feats is not None else [None] * len(spec.templates)
    )
    start = step * size * world
    count = min(size * world, n - start)
    if world > 1:
        gathered: list[Tensor | None] = []
        for value, template in zip(values, spec.templates, strict=True):
            padded = template.new_zeros((size, *template.shape[1:]))
            if value is not None:
                padded[: len(value)] = value
            stacked = trainer.strategy.all_gather(padded)  # [world, size, ...]
            gathered.append(stacked.transpose(0, 1).reshape(world * size, *template.shape[1:]))
        values = gathered
    if count > 0:
        store.write(view, start, [v[:count] for v in values if v is not None])


def load_into_memory(store: FeatureStore, kind: StorageKind, device: torch.device) -> FeatureStore:
    """Copy a disk store into ``"device"`` or ``"pinned"`` memory."""
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in store.arrays]
    tensors = [t.view(d) if t.dtype != d else t for t, d in zip(tensors, store.dtypes, strict=True)]
    views, n = tensors[0].shape[:2]
    loaded = FeatureStore.allocate(kind, views, n, [t[0, 0] for t in tensors], device)
    for view in range(views):
        loaded.write(view, 0, [t[view] for t in tensors])
    loaded.manifest = store.manifest
    return loaded


def _zeros_like(output: Any) -> Any:
    if isinstance(output, Tensor):
        return torch.zeros_like(output)
    if isinstance(output, list | tuple):
        return type(output)(_zeros_like(o) for o in output)
    if isinstance(output, dict):
        return {k: _zeros_like(v) for k, v in output.items()}
    return output


def mix_seed(*numbers: int) -> int:
    """A 63-bit seed mixing several integers (numpy's ``SeedSequence``).

    Example:
        >>> mix_seed(0, 1) != mix_seed(1, 0)
        True
    """
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed torch, ``random`` and numpy inside the block; restore their states afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
