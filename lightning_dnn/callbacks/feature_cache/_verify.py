"""``FeatureCache(verify=True)``: one training step on cached features compared with the same step run live.

:func:`verify_cache` runs the training step twice on copies of the LightningModule, on the same batch and with the
same random numbers: once on the cached features with the trunk skipped, once on the raw inputs; the losses and
the gradients of every trainable parameter must agree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_dnn.callbacks.feature_cache._build import CutRejected, isolated_rng, mix_seed
from lightning_dnn.callbacks.feature_cache._loaders import Data, rebuilder
from lightning_dnn.callbacks.feature_cache._trunk import (
    Shadow,
    capture_boundary,
    max_difference,
    train_mode_modules,
)

if TYPE_CHECKING:
    from lightning_dnn.callbacks.feature_cache._session import CacheEntry, CacheSession

__all__ = ["StepFn", "verify_cache"]

#: Runs the training step of a copy of the LightningModule on a batch (logging nothing); returns the loss or None.
StepFn = Callable[[nn.Module, Any], Tensor | None]


@dataclass
class _Step:
    loss: Tensor
    grads: dict[str, Tensor | None]
    boundary: Tensor | None = None


def verify_cache(session: CacheSession, entry: CacheEntry, data: Data, step: StepFn) -> None:
    """Compare one training step on ``entry``'s cached features with the same step on the raw inputs.

    The batch is this process's first build chunk (samples ``rank, rank + W, ...``, view 0, read with the build's
    random state); both steps run on deep copies of the module (the training run, its random streams and its
    metrics are untouched) in its current modes, under the precision context, with the same seed.

    Raises:
        CutRejected: the losses or gradients differ beyond the tolerance (the message names the likely cause).
        ValueError: the module cannot be deep-copied.
    """
    runtime, plan = session.runtime, entry.plan
    rank, world = runtime.global_rank, runtime.world_size
    size = session.options.batch_size or data.batch_size
    seed = mix_seed(session.options.seed, 0, rank)
    with isolated_rng(seed):
        chunks = data.chunks(rank, world, size, 1, seed, runtime.prepare_batch)
        x, _ = next(chunks)
        chunks.close()  # type: ignore[attr-defined]
    if x is None:
        raise RuntimeError("FeatureCache(verify=True): the first chunk is empty")
    idx = (torch.arange(len(x)) * world + rank).to(entry.store.index_device)
    stored = entry.store.batch(0, idx)
    build = rebuilder(entry.kind)
    modes = {n: m.training for n, m in session.module.named_modules()}
    cached = _run(session, step, build(stored), plan_to_skip=entry, seed=seed)
    live = _run(session, step, build([x, *stored[1:]]), plan_to_skip=None, seed=seed, capture=entry)
    problem = _compare(cached, live, stored[0])
    if runtime.all_agree(problem is None):
        return
    cause = _cause(session, entry, live, stored[0], modes) if problem is not None else ""
    raise CutRejected(
        f"FeatureCache(verify=True): the training step on the cached output of {plan.boundary} differs from the "
        f"same step run live: {problem or 'on another process'}. {cause}".rstrip(),
        plan,
    )


def _run(
    session: CacheSession,
    step: StepFn,
    batch: Any,
    *,
    plan_to_skip: CacheEntry | None,
    seed: int,
    capture: CacheEntry | None = None,
) -> _Step:
    try:
        module = copy.deepcopy(session.module)
    except Exception as err:
        raise ValueError(
            f"FeatureCache(verify=True) runs the training step on a copy of {type(session.module).__name__}, "
            f"which cannot be deep-copied ({type(err).__name__}: {err}); pass verify=False."
        ) from err
    if plan_to_skip is not None:
        Shadow().apply(module, plan_to_skip.plan)  # the copy is dropped afterwards
    boundary: Tensor | None = None
    with isolated_rng(seed), session.runtime.precision_context(), torch.enable_grad():
        if capture is not None:
            try:
                loss, boundary = capture_boundary(module, capture.plan, batch, lambda b: step(module, b))
            except RuntimeError:  # the step did not run the boundary exactly once
                loss = step(module, batch)
        else:
            loss = step(module, batch)
    if not isinstance(loss, Tensor):
        raise ValueError(
            "FeatureCache(verify=True): the training step returned no loss on the verification batch "
            f"(got {type(loss).__name__}); it needs a step that returns a loss tensor (or a dict with 'loss')."
        )
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True) if loss.requires_grad else ()
    out: dict[str, Tensor | None] = {n: None for n, _ in named}
    out.update({n: g.detach() for (n, _), g in zip(named, grads, strict=False) if g is not None})
    return _Step(loss.detach(), out, None if boundary is None else boundary.detach())


def _tolerance(reference: Tensor) -> tuple[float, float]:
    exact = reference.dtype in (torch.float32, torch.float64)
    return (1e-6, 1e-4) if exact else (1e-3, 1e-2)


def _compare(cached: _Step, live: _Step, features: Tensor) -> str | None:
    """``None`` when both steps agree, else what differs."""
    atol, rtol = _tolerance(features)
    diff = max_difference(cached.loss, live.loss)
    if diff > atol + rtol * float(live.loss.abs().max()):
        return f"loss {float(cached.loss):.6g} (cached) vs {float(live.loss):.6g} (live)"
    worst: tuple[float, str] = (0.0, "")
    for name, g_live in live.grads.items():
        g_cached = cached.grads.get(name)
        if (g_live is None) != (g_cached is None):
            return (
                f"the gradient of {name} is {'missing' if g_cached is None else 'present'} in the cached step"
            )
        if g_live is None or g_cached is None:
            continue
        d = max_difference(g_cached, g_live)
        tol = atol + rtol * float(g_live.abs().max()) if g_live.numel() else atol
        if d > tol and d - tol > worst[0]:
            worst = (d - tol, f"the gradient of {name} (max |diff| {d:.3g})")
    return worst[1] or None


def _cause(
    session: CacheSession, entry: CacheEntry, live: _Step, features: Tensor, modes: dict[str, bool]
) -> str:
    """The likely cause of a mismatch, from the trunk's output in the live step."""
    boundary = entry.plan.boundary
    if live.boundary is None:
        return (
            f"The training step did not run {boundary} exactly once on the raw batch: it calls the network in "
            "another way than `forward` does (or several times), which the cache cannot reproduce."
        )
    diff = max_difference(live.boundary, features)
    atol, rtol = _tolerance(features)
    if diff > atol + rtol * float(features.abs().max()):
        layers = train_mode_modules(session.module, entry.plan, modes)
        why = (
            f"trunk layers that run in training mode ({', '.join(layers[:8])})"
            if layers
            else "code in training_step that changes the inputs before the network, or a trunk whose output "
            "depends on something other than its frozen weights and the inputs"
        )
        return (
            f"The trunk's output in the live step differs from the cached features (max |diff| {diff:.3g}); likely "
            f"cause: {why}."
        )
    return (
        "The trunk's output is the same in both steps, so the step uses more than the network's output on the "
        "features: e.g. training_step reads the raw inputs itself (an input-dependent loss term) or the layers "
        f"after {boundary} draw random numbers that the trunk's layers also draw live."
    )
