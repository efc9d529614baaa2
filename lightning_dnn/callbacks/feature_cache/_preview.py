"""Where FeatureCache would cut a network now, and why (:func:`preview_cut`), without a fit.

It runs the same trace, plan and checks as the first build (``_plan``, ``_build.cut_problem``, ``_trunk``) on
one batch of inputs; the freeze audit shows the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_dnn.callbacks.feature_cache._build import cut_problem, detached
from lightning_dnn.callbacks.feature_cache._plan import (
    METHOD,
    find_network,
    full_name,
    make_plan,
    trace_forward,
)
from lightning_dnn.callbacks.feature_cache._trunk import train_mode_modules

__all__ = ["CutPreview", "preview_cut"]


@dataclass(frozen=True)
class CutPreview:
    """Where FeatureCache would cut: the boundary and trunk, or ``None``, and why.

    Attributes:
        boundary: the module whose output would be cached (or ``"<network>.forward_features"``); ``None``: no cut.
        trunk: the modules the cached features depend on.
        refused: whether FeatureCache would refuse the cut (an error at fit start) rather than cache it.
        reason: why it cuts there, or why it cannot.
    """

    boundary: str | None
    trunk: tuple[str, ...]
    refused: bool
    reason: str


def preview_cut(
    pl_module: nn.Module, inputs: Any, *, boundary: str | None = None, modes: dict[str, bool] | None = None
) -> CutPreview:
    """Trace ``pl_module``'s network on ``inputs`` and find the cut FeatureCache would make with these freezes.

    The network runs once in eval mode with gradients enabled (a graph from the features to a trainable parameter
    shows a tensor the trunk uses), its modes restored afterwards; nothing else changes. The training mode the
    module is in counts for the check of trunk layers in training mode.

    Args:
        pl_module: the LightningModule (or the network itself), frozen as training will start.
        inputs: one batch of the network's inputs, on its device.
        boundary: as ``FeatureCache(boundary=...)``.
        modes: module name -> whether training will run it in training mode (default: its mode now).

    Returns:
        The cut, or why there is none.

    Raises:
        ValueError: ``boundary`` selects no module or several.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> _ = net[0].requires_grad_(False)
        >>> preview_cut(net, torch.randn(3, 4))
        CutPreview(boundary='0', trunk=('0',), refused=False, reason='caches the output of 0: 2 is trainable')
    """
    network_name, boundary_name = find_network(pl_module, boundary)
    network = pl_module.get_submodule(network_name)
    saved = {n: m.training for n, m in pl_module.named_modules()}
    modes = {**saved, **(modes or {})}
    method = boundary == METHOD
    frozen = {n for n, m in pl_module.named_modules() if all(not p.requires_grad for p in m.parameters())}
    frozen.add(full_name(network_name, METHOD))
    network.eval()
    try:
        with torch.enable_grad():
            output, trace, captured = trace_forward(
                network, network_name, inputs, method=method, capture=frozen.__contains__
            )
        plan, complete = make_plan(trace, pl_module, network_name, boundary=boundary_name, method=method)
        stop = _first_trainable(pl_module, list(trace.counts), () if plan is None else plan.trunk)
        if plan is None:
            why = f"{stop} is trainable" if stop else "no frozen module with weights runs first"
            return CutPreview(None, (), boundary is not None, f"nothing to cache: {why}")
        if boundary is not None and not complete:
            wanted = boundary_name or full_name(network_name, METHOD)
            return CutPreview(
                plan.boundary,
                plan.trunk,
                True,
                f"boundary {wanted} refused: the layers up to it must be frozen and run once "
                f"({stop or 'a module'} is trainable or shared with the head); cacheable up to {plan.boundary}",
            )
        graph = captured[plan.boundary]
        with torch.no_grad():
            problem = cut_problem(pl_module, network_name, plan, detached(output), graph.detach(), graph)
    finally:
        for name, module in pl_module.named_modules():
            module.training = saved[name]
    if problem is not None:
        return CutPreview(plan.boundary, plan.trunk, True, str(problem).removeprefix("FeatureCache: "))
    layers = train_mode_modules(pl_module, plan, modes)
    if layers:
        return CutPreview(
            plan.boundary,
            plan.trunk,
            True,
            f"refused unless train_mode_trunk='allow': trunk layers in training mode: {', '.join(layers[:8])}",
        )
    after = f": {stop} is trainable" if stop else ""
    return CutPreview(plan.boundary, plan.trunk, False, f"caches the output of {plan.boundary}{after}")


def _first_trainable(pl_module: nn.Module, order: list[str], trunk: tuple[str, ...]) -> str | None:
    """The first module called (outside the trunk) that holds a trainable parameter itself."""
    inside = tuple(t + "." for t in trunk)
    for name in order:
        if name in trunk or name.startswith(inside):
            continue
        if any(p.requires_grad for p in pl_module.get_submodule(name).parameters(recurse=False)):
            return name
    return None
