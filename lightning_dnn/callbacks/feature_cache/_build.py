"""The build pass: every sample's features, computed once across ranks into a store the session allocates.

Rank ``r`` of ``W`` reads samples ``r, r + W, ...`` in chunks of ``size``; every rank runs
``ceil(ceil(N / W) / size)`` chunks (empty ones at the end are padded), and one ``all_gather`` per chunk and
tensor puts chunk ``j`` of every rank at rows ``j * size * W ...`` of the cache.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lightning_dnn.callbacks.feature_cache._loaders import Data
from lightning_dnn.callbacks.feature_cache._plan import METHOD, TrunkPlan, trace_forward
from lightning_dnn.callbacks.feature_cache._store import FeatureStore, StorageKind
from lightning_dnn.callbacks.feature_cache._trunk import (
    Shadow,
    TrunkRunner,
    capture_boundary,
    max_difference,
    trainable_inputs,
)

if TYPE_CHECKING:
    from lightning_dnn.callbacks.feature_cache._session import CacheSession

__all__ = [
    "Built",
    "CutRejected",
    "build_features",
    "cut_problem",
    "detached",
    "isolated_rng",
    "load_into_memory",
    "mix_seed",
]


class CutRejected(Exception):
    """``network(cached features)`` does not reproduce ``network(inputs)`` for ``plan``; the message says why."""

    def __init__(self, message: str, plan: TrunkPlan) -> None:
        super().__init__(message)
        self.plan = plan


@dataclass
class Built:
    """A finished build: the trunk it cut, the filled store and the two halves of its fingerprint."""

    plan: TrunkPlan
    store: FeatureStore
    model_fp: str
    data_fp: str


@dataclass
class _Pass:
    """One build in progress: what it reads, where it writes, and the row templates of the gathered tensors."""

    session: CacheSession
    key: str
    data: Data
    views: int
    size: int
    plan: TrunkPlan | None
    built: Built | None = None
    whole: list[Any] = field(default_factory=list)  # the LightningModule's own forward on the first chunk
    templates: list[Tensor] = field(default_factory=list)


def build_features(
    session: CacheSession, key: str, data: Data, plan: TrunkPlan | None, views: int
) -> Built | None:
    """Fill a store with the features of every sample (and the batches' other tensors).

    The network runs in eval mode under ``no_grad`` and the precision context. The first chunk runs the whole
    network: it yields the trace (when ``plan`` is ``None``; the session turns it into a plan), the features,
    and the reference output against which ``network(features)`` with the trunk skipped is checked. The later
    chunks stop at the boundary. Augmented views are read with the random generators seeded per
    ``(seed, view, rank)`` and restored afterwards, so building never moves the training run's random streams.

    Args:
        session: the per-fit session: runtime, module, options; it plans and allocates the store.
        key: the loader's key (``"train"``, ``"val0"``, ...).
        data: the reader of the loader's samples.
        plan: the trunk, or ``None`` to trace the network on the first chunk.
        views: the number of (augmented) views per sample.

    Returns:
        The build, or ``None`` when the trace shows nothing to cache.

    Raises:
        CutRejected: the network's output from the cached features differs from its output on the inputs.
    """
    runtime = session.runtime
    world, n = runtime.world_size, data.num_samples
    if n < world:
        raise ValueError(f"FeatureCache: {n} samples cannot be shared by {world} processes")
    size = session.options.batch_size or data.batch_size
    job = _Pass(session, key, data, views, size, plan)
    network = session.module.get_submodule(session.network_name)
    modes = [(m, m.training) for m in network.modules()]
    network.eval()
    try:
        with torch.no_grad(), runtime.precision_context(), contextlib.ExitStack() as stack:
            if not _run_views(job, stack):
                return None
    except BaseException:
        if job.built is not None:
            job.built.store.abort()
        raise
    finally:
        for m, mode in modes:
            m.training = mode
    return job.built


def _run_views(job: _Pass, stack: contextlib.ExitStack) -> bool:
    """Compute and store every view; ``False`` when the first chunk shows that nothing is cacheable."""
    runtime = job.session.runtime
    world, rank = runtime.world_size, runtime.global_rank
    steps = math.ceil(math.ceil(job.data.num_samples / world) / job.size)
    runner: TrunkRunner | None = None
    for view in range(job.views):
        seed = mix_seed(job.session.options.seed, view, rank)
        with isolated_rng(seed):
            for step, (x, rest) in enumerate(
                job.data.chunks(rank, world, job.size, steps, seed, runtime.prepare_batch)
            ):
                if runner is None:
                    feats = _first_chunk(job, x, rest)
                    if feats is None or job.built is None:
                        return False
                    runner = stack.enter_context(TrunkRunner(job.session.module, job.built.plan))
                else:
                    feats = None if x is None else runner(x)
                _write(job, view, step, feats, rest)
        if job.data.rest_full is not None and job.built is not None:
            job.built.store.write(view, 0, job.data.rest_full, first=1)
    return True


def _first_chunk(job: _Pass, x: Any, rest: list[Tensor] | None) -> Tensor | None:
    """Trace or capture the first chunk, check the cut, allocate the store; the chunk's features."""
    session = job.session
    if x is None:  # n >= world: every rank has samples in its first chunk
        raise RuntimeError("FeatureCache: the first chunk of the build is empty")
    # with gradients: a graph from the features to a trainable parameter shows that the trunk uses it
    with torch.enable_grad():
        found = _features(job, x)
    if found is None:
        return None
    plan, output, graph = found
    output, features = detached(output), graph.detach()
    job.whole[:] = [detached(w) for w in job.whole]
    _check_cut(job, plan, output, features, graph)
    del graph
    _check_forward(job, plan, features)
    job.templates = [features[:1], *(r[:1] for r in rest or [])]
    full_rest = job.data.rest_full if job.data.rest_full is not None else rest or []
    rows = [features[0], *(r[0] for r in full_rest)]
    job.built = session.allocate(job.key, job.data, plan, rows, job.views)
    return features


def _features(job: _Pass, x: Any) -> tuple[TrunkPlan, Any, Tensor] | None:
    """``(plan, network output, boundary output)`` on the first chunk; the plan comes from a trace if unknown."""
    session = job.session
    module, name = session.module, session.network_name
    network = module.get_submodule(name)
    call = _whole_forward(module, network, job.whole) if name and _defines_forward(module) else None
    try:
        if job.plan is not None:
            return (job.plan, *capture_boundary(module, job.plan, x, call))
        frozen = {n for n, m in module.named_modules() if all(not p.requires_grad for p in m.parameters())}
        frozen.add(f"{name}.{METHOD}".lstrip("."))
        output, trace, captured = trace_forward(
            network, name, x, method=session.options.method, capture=frozen.__contains__, call=call
        )
    except NotImplementedError as err:
        raise TypeError(
            f"FeatureCache calls the network ({type(network).__name__}) with the batch's inputs, but its forward "
            "is not implemented; keep the layers in a submodule (e.g. self.net) or define forward."
        ) from err
    plan = session.plan_from_trace(trace)
    if plan is None:
        return None
    job.plan = plan
    return plan, output, captured[plan.boundary]


def _check_cut(job: _Pass, plan: TrunkPlan, output: Any, features: Tensor, graph: Tensor) -> None:
    """Raise the :func:`cut_problem` of this process, or of another one (every process agrees)."""
    session = job.session
    problem = cut_problem(session.module, session.network_name, plan, output, features, graph)
    if session.runtime.all_agree(problem is None):
        return
    raise problem or CutRejected(
        f"FeatureCache: the cut at {plan.boundary} failed its check on another process", plan
    )


def cut_problem(
    pl_module: torch.nn.Module,
    network_name: str,
    plan: TrunkPlan,
    output: Any,
    features: Tensor,
    graph: Tensor,
) -> CutRejected | None:
    """Why ``plan``'s cut would not reproduce live training, or ``None`` (this process's look, no collectives).

    Three checks, in order: ``network(features)`` with the trunk skipped must run (an exception, e.g. a tensor
    size mismatch, is the returned error's ``__cause__``); the features (``graph``: the boundary's output computed
    with gradients enabled) must not depend on a trainable parameter; and the replay must reproduce ``output``.
    """
    network = pl_module.get_submodule(network_name)
    check = Shadow()
    check.apply(pl_module, plan)
    error: Exception | None = None
    try:
        replay = network(features)
    except Exception as exc:  # the layers after the cut cannot take the features: a failed check
        replay, error = None, exc
    finally:
        check.remove()
    if replay is None:
        problem = CutRejected(
            f"FeatureCache: the layers after {plan.boundary} cannot run on its output (cached) "
            f"({type(error).__name__}: {error}): the network's forward transforms the trunk's output with code "
            f"that is not a module (e.g. a reshape, a class token) before the head. {_fix(network)}",
            plan,
        )
        problem.__cause__ = error
        return problem
    used = trainable_inputs(graph, pl_module)
    if used:
        shown = ", ".join(used[:8]) + (f" (+{len(used) - 8} more)" if len(used) > 8 else "")
        return CutRejected(
            f"FeatureCache: the output of {plan.boundary} depends on trainable parameters the frozen modules do "
            f"not hold: {shown}. The network's forward uses them before the boundary (e.g. `x + self.shift` "
            "between frozen layers, a class token or position embedding), so cached features would keep their "
            "values of the build while live training updates them. Freeze them too (requires_grad_(False), or "
            "select them in LayerFreezer), or set a `boundary` below the point where they are used.",
            plan,
        )
    diff = max_difference(output, replay)
    scale = max_difference(output, _zeros_like(output))
    exact = features.dtype in (torch.float32, torch.float64)
    if diff <= (1e-5 + 1e-4 * scale if exact else 1e-3 + 1e-2 * scale):
        return None
    return CutRejected(
        f"FeatureCache: the network's output computed from the cached output of {plan.boundary} differs from "
        f"its output on the inputs (max |diff| {diff:.3g}): its forward transforms the inputs before the "
        "boundary with code that is not a module, or runs trunk modules again after it. Cache an "
        f"nn.Sequential-like network. {_fix(network)}",
        plan,
    )


def detached(output: Any) -> Any:
    """``output`` (a tensor, or a list, tuple or dict of them) without autograd history."""
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, list | tuple) and not hasattr(output, "_fields"):
        return type(output)(detached(o) for o in output)
    if isinstance(output, dict):
        return {k: detached(v) for k, v in output.items()}
    return output


def _fix(network: torch.nn.Module) -> str:
    """What to do about a cut the network's forward does not reproduce."""
    name = type(network).__name__
    if callable(getattr(network, "forward_features", None)) and callable(
        getattr(network, "forward_head", None)
    ):
        return (
            f"{name} defines forward_features/forward_head: use FeatureCache(boundary='forward_features') (with "
            "everything forward_features uses frozen), or set a lower `boundary`."
        )
    return (
        "Set a lower `boundary` (a module whose output the rest of the forward takes as is), or give the network "
        "forward_features/forward_head and use boundary='forward_features'."
    )


def _whole_forward(
    module: torch.nn.Module, network: torch.nn.Module, whole: list[Any]
) -> Callable[[Any], Any]:
    """A function of the inputs that runs ``module(x)`` (kept in ``whole``) and returns the network's output.

    A forward that cannot take the inputs alone, or that does not call the network exactly once, is replaced
    by the network itself (and ``whole`` stays empty: nothing to check).
    """

    def run(x: Any) -> Any:
        box: list[Any] = []
        handle = network.register_forward_hook(lambda m, args, out: box.append(out))
        try:
            out = module(x)
        except (TypeError, NotImplementedError):
            if box:
                raise
            return network(x)
        finally:
            handle.remove()
        if len(box) != 1:
            return box[-1] if box else network(x)
        whole.append(out)
        return box[0]

    return run


def _check_forward(job: _Pass, plan: TrunkPlan, features: Tensor) -> None:
    """Raise :class:`CutRejected` when the LightningModule's own ``forward`` changes the inputs before the network.

    Only when the network is a child and the module's class defines ``forward`` (run on the first chunk with
    the network, see :func:`_whole_forward`): ``module(features)`` with the trunk skipped must reproduce
    ``module(inputs)``.
    """
    if not job.whole:
        return
    module, name, expected = job.session.module, job.session.network_name, job.whole[0]
    check = Shadow()
    check.apply(module, plan)
    error: Exception | None = None
    try:
        replay = module(features)
    except Exception as exc:  # a forward that cannot run on features fails the check
        replay, error = None, exc
    finally:
        check.remove()
    diff = float("inf") if replay is None else max_difference(expected, replay)
    scale = max_difference(expected, _zeros_like(expected))
    exact = features.dtype in (torch.float32, torch.float64)
    tol = 1e-5 + 1e-4 * scale if exact else 1e-3 + 1e-2 * scale
    if not job.session.runtime.all_agree(diff <= tol):
        raise CutRejected(
            f"FeatureCache: {type(module).__name__}.forward changes the inputs before calling {name} (max |diff| "
            f"{diff:.3g} between forward(cached output of {plan.boundary}) and forward(inputs)): preprocessing "
            f"such as `self.{name}((x - mean) / std)` would be applied to the cached features a second time. Move "
            f"it into a module at the start of {name} (e.g. nn.Sequential(Normalize(), backbone)) or into the "
            "dataset's transform."
            + (
                f" (The forward on the cached features raised {type(error).__name__}: {error}.)"
                if error
                else ""
            ),
            plan,
        ) from error


def _defines_forward(module: torch.nn.Module) -> bool:
    """Whether a user class in the module's MRO defines ``forward`` (not torch's or Lightning's own)."""
    for cls in type(module).__mro__:
        if cls.__module__.split(".")[0] in ("torch", "pytorch_lightning", "lightning"):
            continue
        if "forward" in vars(cls):
            return True
    return False


def _write(job: _Pass, view: int, step: int, feats: Tensor | None, rest: list[Tensor] | None) -> None:
    """Gather one chunk from every rank and store it at its rows."""
    runtime, size, n = job.session.runtime, job.size, job.data.num_samples
    world = runtime.world_size
    values: list[Tensor | None] = [feats, *(rest or [])] if feats is not None else [None] * len(job.templates)
    start = step * size * world
    count = min(size * world, n - start)
    if world > 1:
        gathered: list[Tensor | None] = []
        for value, template in zip(values, job.templates, strict=True):
            padded = template.new_zeros((size, *template.shape[1:]))
            if value is not None:
                padded[: len(value)] = value
            stacked = runtime.all_gather(padded)  # [world, size, ...]
            gathered.append(stacked.transpose(0, 1).reshape(world * size, *template.shape[1:]))
        values = gathered
    if count > 0 and job.built is not None:
        job.built.store.write(view, start, [v[:count] for v in values if v is not None])


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
