"""Run the frozen trunk up to its boundary (:class:`TrunkRunner`), or skip it (:class:`Shadow`).

Also the trunk's tensors (for the fingerprint) and its modules that depend on the training mode.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.dropout import _DropoutNd

from lightning_dnn.callbacks.feature_cache._plan import (
    METHOD,
    MISSING,
    TrunkPlan,
    full_name,
    instance_attr,
    passthrough,
)

__all__ = [
    "BoundaryNotReached",
    "Shadow",
    "TrunkRunner",
    "capture_boundary",
    "max_difference",
    "train_mode_modules",
    "trainable_inputs",
    "trunk_tensors",
]


class BoundaryNotReached(Exception):
    """Raised by the boundary's forward hook to stop the network once the features exist."""


def trunk_tensors(pl_module: nn.Module, plan: TrunkPlan) -> list[tuple[str, Tensor]]:
    """The parameters and buffers the cached features depend on, by full name (for the fingerprint)."""
    out: list[tuple[str, Tensor]] = []
    for name in plan.trunk:
        module = pl_module.get_submodule(name)
        out.extend((full_name(name, n), p) for n, p in module.named_parameters())
        out.extend((full_name(name, n), b) for n, b in module.named_buffers())
    if plan.method:
        root = pl_module.get_submodule(plan.network)
        out.extend((full_name(plan.network, n), p) for n, p in root.named_parameters(recurse=False))
        out.extend((full_name(plan.network, n), b) for n, b in root.named_buffers(recurse=False))
    return out


def train_mode_modules(pl_module: nn.Module, plan: TrunkPlan, modes: dict[str, bool]) -> list[str]:
    """Trunk modules that behave otherwise in training mode and were in it (``modes``: name -> ``training``).

    Batch norm (and other norms with running statistics) normalizes with the batch's statistics, dropout and
    RReLU draw random numbers: the cache is built in eval mode, so live training would see other features.
    Batch norm without running statistics (``track_running_stats=False`` at construction) normalizes every
    batch with its own statistics in either mode, so it is listed whatever its mode.
    """
    found = []
    for name in plan.trunk:
        for sub, m in pl_module.get_submodule(name).named_modules():
            full = full_name(name, sub)
            if (modes.get(full, False) and _mode_dependent(m)) or _batch_statistics_only(m):
                found.append(full)
    return found


def trainable_inputs(tensor: Tensor, pl_module: nn.Module) -> list[str]:
    """The names of the trainable parameters of ``pl_module`` that ``tensor`` was computed from (autograd graph).

    ``tensor`` must come from a forward run with gradients enabled; a frozen trunk leaves it without a graph.

    Example:
        >>> import torch
        >>> net = nn.Linear(2, 2); shift = nn.Parameter(torch.zeros(2)); net.register_parameter("shift", shift)
        >>> net.weight.requires_grad_(False); net.bias.requires_grad_(False)
        Parameter containing: ...
        >>> trainable_inputs(net(torch.ones(1, 2)) + net.shift, net)
        ['shift']
    """
    if tensor.grad_fn is None:
        return []
    names = {id(p): n for n, p in pl_module.named_parameters()}
    found: dict[int, None] = {}
    seen: set[int] = set()
    stack: list[Any] = [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor) and id(variable) in names:
            found[id(variable)] = None
        stack.extend(fn for fn, _ in node.next_functions)
    return [names[i] for i in found]


def _batch_statistics_only(m: nn.Module) -> bool:
    return isinstance(m, _BatchNorm) and m.running_mean is None


def _mode_dependent(m: nn.Module) -> bool:
    if isinstance(m, _NormBase):
        # In training mode a norm with running statistics normalizes with the batch's statistics, whether or not
        # it still updates them: Lightning's BaseFinetuning.freeze (finetuning-scheduler) sets
        # track_running_stats=False on frozen batch norm and leaves it in training mode.
        return m.running_mean is not None or bool(m.track_running_stats)
    if isinstance(m, nn.MultiheadAttention):
        return m.dropout > 0
    if isinstance(m, _DropoutNd) or _DROP.search(
        type(m).__name__
    ):  # torchvision StochasticDepth, timm DropPath
        p = getattr(m, "p", getattr(m, "drop_prob", 1.0))
        return not isinstance(p, int | float) or p > 0
    return isinstance(m, nn.RReLU)


_DROP = re.compile(r"Dropout|DropPath|StochasticDepth|DropBlock")


class TrunkRunner:
    """Compute the boundary's output for batches of inputs (the head does not run): a context manager.

    For a module boundary a forward hook, registered once, stores the output and stops the network by raising
    :class:`BoundaryNotReached`; ``forward_features`` is simply called.
    """

    def __init__(self, pl_module: nn.Module, plan: TrunkPlan) -> None:
        self.network = pl_module.get_submodule(plan.network)
        self.plan = plan
        self._boundary = None if plan.method else pl_module.get_submodule(plan.boundary)
        self._box: list[Tensor] = []
        self._handle: Any = None

    def __enter__(self) -> TrunkRunner:
        if self._boundary is not None:
            self._handle = self._boundary.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self._box.append(output)
        raise BoundaryNotReached

    def __call__(self, x: Any) -> Tensor:
        if self.plan.method:
            out: Tensor = getattr(self.network, METHOD)(x)
            return out
        try:
            self.network(x)
        except BoundaryNotReached:
            pass
        if not self._box:
            raise RuntimeError(
                f"FeatureCache: the network's forward did not call the boundary {self.plan.boundary!r}"
            )
        return self._box.pop()


def capture_boundary(
    pl_module: nn.Module, plan: TrunkPlan, x: Any, call: Callable[[Any], Any] | None = None
) -> tuple[Any, Tensor]:
    """Run the whole network on ``x`` (through ``call`` if given); return its output and the boundary's output."""
    network = pl_module.get_submodule(plan.network)
    run = call or network
    box: list[Tensor] = []
    if plan.method:
        original: Callable[..., Any] = getattr(network, METHOD)

        def capture(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            box.append(out)
            return out

        with instance_attr(network, METHOD, capture):
            output = run(x)
    else:

        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            box.append(out)

        handle = pl_module.get_submodule(plan.boundary).register_forward_hook(hook)
        try:
            output = run(x)
        finally:
            handle.remove()
    if len(box) != 1 or not isinstance(box[0], Tensor):
        raise RuntimeError(f"FeatureCache: the boundary {plan.boundary!r} did not run exactly once")
    return output, box[0]


def max_difference(a: Any, b: Any) -> float:
    """The largest absolute difference between two outputs (tensors, or tuples/lists/dicts of them).

    Example:
        >>> import torch
        >>> max_difference((torch.ones(2), {"k": torch.zeros(1)}), (torch.ones(2), {"k": torch.ones(1)}))
        1.0
    """
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape:
            return float("inf")
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        return max([max_difference(x, y) for x, y in zip(a, b, strict=True)], default=0.0)
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return max([max_difference(a[k], b[k]) for k in a], default=0.0)
    return 0.0 if a == b else float("inf")


class Shadow:
    """Skip the trunk: its outermost modules (or ``forward_features``) return their input unchanged.

    The skipped modules get an instance-level ``forward`` that returns its input, so ``network(features)`` runs
    the head only. The module tree, ``state_dict`` and parameters are untouched; removing the instance attribute
    restores the class's forward.

    A skipped module's forward (pre-)hooks are set aside as well (hooks registered meanwhile are kept), so
    nothing observes a frozen layer "running" on cached features: for every purpose it does not run.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> shadow = Shadow()
        >>> shadow.apply(net, TrunkPlan("", "1", ("0", "1"), ("0", "1")))
        >>> torch.equal(net(torch.ones(4, 3)), net[2](torch.ones(4, 3)))
        True
        >>> shadow.remove(); net(torch.ones(4, 2)).shape
        torch.Size([4, 1])
    """

    _HOOKS = ("_forward_pre_hooks", "_forward_hooks")

    def __init__(self) -> None:
        self.plan: TrunkPlan | None = None
        self._module: nn.Module | None = None
        self._saved: list[tuple[nn.Module, str, Any]] = []

    def apply(self, pl_module: nn.Module, plan: TrunkPlan) -> None:
        """Skip ``plan``'s trunk (replacing any trunk skipped before)."""
        self.remove()
        if plan.method:
            targets = [(pl_module.get_submodule(plan.network), METHOD)]
        else:
            targets = [(pl_module.get_submodule(name), "forward") for name in plan.shadow]
        for module, attr in targets:
            self._saved.append((module, attr, module.__dict__.get(attr, MISSING)))
            setattr(module, attr, passthrough)
            if attr == "forward":
                for hooks in self._HOOKS:
                    self._saved.append((module, hooks, getattr(module, hooks)))
                    setattr(module, hooks, OrderedDict())
        self.plan, self._module = plan, pl_module

    def remove(self) -> None:
        """Run the trunk normally again."""
        while self._saved:
            module, attr, previous = self._saved.pop()
            if attr in self._HOOKS:
                previous.update(getattr(module, attr))  # keep hooks registered while skipped
                setattr(module, attr, previous)
            elif previous is MISSING:
                module.__dict__.pop(attr, None)
            else:
                setattr(module, attr, previous)
        self.plan = None

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Run the trunk normally inside the block, then skip it again if it was skipped."""
        plan, module = self.plan, self._module
        self.remove()
        try:
            yield
        finally:
            if plan is not None and module is not None:
                self.apply(module, plan)
