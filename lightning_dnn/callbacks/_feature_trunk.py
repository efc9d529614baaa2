"""The frozen trunk of a network, for :class:`~lightning_dnn.callbacks.FeatureCache`: find it, run it, skip it.

* **Find**: one forward pass with hooks on every submodule records the module calls as a tree
  (:class:`Trace`). The trunk is a prefix of that call sequence: the root's calls in order, descending into a
  container that is only partly frozen, stopping at the first module that has trainable parameters, at the
  explicit boundary, or at a module that runs more than once (shared by trunk and head). A :class:`TrunkPlan`
  names the boundary, the modules to skip and every module whose weights the features depend on.
* **Run**: :class:`TrunkRunner` calls the network on a batch and stops it, by an exception raised from a forward
  hook, as soon as the boundary has produced its output (``forward_features`` is simply called).
* **Skip**: :class:`Shadow` gives the trunk's outermost modules an instance-level ``forward`` that returns its
  input (``forward_features`` for a method plan), and sets their forward hooks aside, so ``network(features)``
  runs the head only. The module tree, ``state_dict`` and parameters are untouched; removing the instance
  attribute restores the class's forward.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

__all__ = [
    "METHOD",
    "BoundaryNotReached",
    "Shadow",
    "Trace",
    "TrunkPlan",
    "TrunkRunner",
    "capture_boundary",
    "make_plan",
    "max_difference",
    "stochastic_modules",
    "trace_forward",
    "trunk_tensors",
]

METHOD = "forward_features"
_WINDOW = "<forward_features>"


class BoundaryNotReached(Exception):
    """Raised by the boundary's forward hook to stop the network once the features exist."""


@dataclass
class _Call:
    name: str
    children: list[_Call] = field(default_factory=list)
    tensor_out: bool = False


@dataclass
class Trace:
    """The module calls of one forward pass of the network (names are full names in the LightningModule)."""

    root: _Call
    counts: dict[str, int]

    def window(self) -> _Call | None:
        """The pseudo-call holding the calls made inside ``forward_features`` (method traces only)."""
        for call in self.root.children:
            if call.name == _WINDOW:
                return call
        return None


@dataclass(frozen=True)
class TrunkPlan:
    """How the trunk is cut. Names are full module names in the LightningModule.

    Attributes:
        network: the network called with the batch's inputs (``""``: the LightningModule itself).
        boundary: the module whose output is cached, or ``"<network>.forward_features"``.
        shadow: the modules to skip while serving cached features (empty for a method plan).
        trunk: every module the features depend on (its parameters and buffers are fingerprinted).
        method: skip ``network.forward_features`` instead of modules.
    """

    network: str
    boundary: str
    shadow: tuple[str, ...]
    trunk: tuple[str, ...]
    method: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "boundary": self.boundary,
            "shadow": list(self.shadow),
            "trunk": list(self.trunk),
            "method": self.method,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrunkPlan:
        return cls(
            str(data["network"]),
            str(data["boundary"]),
            tuple(data["shadow"]),
            tuple(data["trunk"]),
            bool(data["method"]),
        )


def _full(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def trace_forward(
    network: nn.Module, network_name: str, x: Any, *, method: bool, capture: Callable[[str], bool]
) -> tuple[Any, Trace, dict[str, Tensor]]:
    """Run ``network(x)`` once, recording its module calls and the outputs of the modules ``capture`` selects.

    With ``method``, the calls made inside ``network.forward_features`` are grouped under one pseudo-call whose
    output is captured under the name ``"<network>.forward_features"``.
    """
    root = _Call(network_name)
    stack = [root]
    counts: dict[str, int] = {}
    captured: dict[str, Tensor] = {}
    handles = []

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            counts[name] = counts.get(name, 0) + 1
            call = _Call(name)
            stack[-1].children.append(call)
            stack.append(call)

        return hook

    def post_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if stack[-1].name == name:
                stack.pop().tensor_out = isinstance(output, Tensor)
            if isinstance(output, Tensor) and capture(name):
                captured[name] = output

        return hook

    for name, module in network.named_modules():
        if name:
            full = _full(network_name, name)
            handles.append(module.register_forward_pre_hook(pre_hook(full)))
            handles.append(module.register_forward_hook(post_hook(full)))
    original: Callable[..., Any] = getattr(network, METHOD, None) or _passthrough
    boundary = _full(network_name, METHOD)

    def window(*args: Any, **kwargs: Any) -> Any:
        call = _Call(_WINDOW)
        stack[-1].children.append(call)
        stack.append(call)
        out = original(*args, **kwargs)
        stack.pop().tensor_out = isinstance(out, Tensor)
        if isinstance(out, Tensor):
            captured[boundary] = out
        return out

    try:
        with _instance_attr(network, METHOD, window) if method else contextlib.nullcontext():
            output = network(x)
    finally:
        for h in handles:
            h.remove()
    return output, Trace(root, counts), captured


@contextlib.contextmanager
def _instance_attr(module: nn.Module, name: str, value: Any) -> Iterator[None]:
    """Set an instance attribute (shadowing a method) inside the block; restore what was there after."""
    previous = module.__dict__.get(name, _MISSING)
    setattr(module, name, value)
    try:
        yield
    finally:
        if previous is _MISSING:
            module.__dict__.pop(name, None)
        else:
            setattr(module, name, previous)


def _module_names(call: _Call) -> Iterator[str]:
    yield call.name
    for child in call.children:
        yield from _module_names(child)


def make_plan(
    trace: Trace,
    pl_module: nn.Module,
    network_name: str,
    *,
    boundary: str | None,
    method: bool,
) -> tuple[TrunkPlan | None, bool]:
    """The longest frozen prefix of the traced calls, up to ``boundary`` (a module name) if given.

    Returns ``(plan, complete)``: ``plan`` is ``None`` when nothing can be cached; ``complete`` says whether
    the requested boundary (the module, or all of ``forward_features``) is covered.
    """
    modules = dict(pl_module.named_modules())

    def frozen(name: str) -> bool:
        return all(not p.requires_grad for p in modules[name].parameters())

    def partly_frozen(name: str) -> bool:
        return any(not p.requires_grad for p in modules[name].parameters())

    def stateful(name: str) -> bool:
        m = modules[name]
        return any(True for _ in m.parameters()) or any(True for _ in m.buffers())

    def usable(call: _Call) -> bool:
        return all(trace.counts.get(n, 0) <= 1 for n in _module_names(call)) and frozen(call.name)

    def walk(calls: list[_Call], limit: str | None) -> tuple[list[_Call], bool]:
        trunk: list[_Call] = []
        for call in calls:
            if limit is not None and limit.startswith(call.name + "."):
                sub, reached = walk(call.children, limit)
                return trunk + sub, reached
            if usable(call):
                trunk.append(call)
                if call.name == limit:
                    return trunk, True
                continue
            if call.children and partly_frozen(call.name) and trace.counts.get(call.name, 0) <= 1:
                sub, _ = walk(call.children, None)
                trunk.extend(sub)
            return trunk, False
        return trunk, limit is None

    if method:
        window = trace.window()
        if window is None:
            return None, False
        names = [n for c in window.children for n in _module_names(c)]
        root = modules[network_name]
        whole = (
            all(trace.counts.get(n, 0) <= 1 for n in names)
            and all(frozen(n) for n in names)
            and all(not p.requires_grad for p in root.parameters(recurse=False))
        )
        if whole and window.tensor_out:
            trunk = tuple(dict.fromkeys(c.name for c in window.children))
            return TrunkPlan(network_name, _full(network_name, METHOD), (), trunk, method=True), True
        calls, complete = walk(window.children, None)[0], False
    else:
        calls, complete = walk(trace.root.children, boundary)
    if boundary is None or not complete:
        while calls and not stateful(calls[-1].name):  # trailing activations/dropout stay with the head
            calls.pop()
    while calls and not calls[-1].tensor_out:
        calls.pop()
        complete = False
    if not calls or not any(stateful(c.name) for c in calls):
        return None, False
    trunk = tuple(c.name for c in calls)
    return TrunkPlan(network_name, trunk[-1], trunk, trunk), complete


def trunk_tensors(pl_module: nn.Module, plan: TrunkPlan) -> list[tuple[str, Tensor]]:
    """The parameters and buffers the cached features depend on, by full name (for the fingerprint)."""
    out: list[tuple[str, Tensor]] = []
    for name in plan.trunk:
        module = pl_module.get_submodule(name)
        out.extend((_full(name, n), p) for n, p in module.named_parameters())
        out.extend((_full(name, n), b) for n, b in module.named_buffers())
    if plan.method:
        root = pl_module.get_submodule(plan.network)
        out.extend((_full(plan.network, n), p) for n, p in root.named_parameters(recurse=False))
        out.extend((_full(plan.network, n), b) for n, b in root.named_buffers(recurse=False))
    return out


def stochastic_modules(pl_module: nn.Module, plan: TrunkPlan) -> list[str]:
    """Trunk modules that would be random in training mode (dropout, RReLU): off in the cached features."""
    found = []
    for name in plan.trunk:
        for sub, m in pl_module.get_submodule(name).named_modules():
            if (isinstance(m, _DropoutNd) and m.p > 0) or isinstance(m, nn.RReLU):
                found.append(_full(name, sub))
    return found


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


def capture_boundary(pl_module: nn.Module, plan: TrunkPlan, x: Any) -> tuple[Any, Tensor]:
    """Run the whole network on ``x``; return its output and the boundary's output."""
    network = pl_module.get_submodule(plan.network)
    box: list[Tensor] = []
    if plan.method:
        original: Callable[..., Any] = getattr(network, METHOD)

        def capture(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            box.append(out)
            return out

        with _instance_attr(network, METHOD, capture):
            output = network(x)
    else:

        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            box.append(out)

        handle = pl_module.get_submodule(plan.boundary).register_forward_hook(hook)
        try:
            output = network(x)
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


def _passthrough(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else next(iter(kwargs.values()))


class Shadow:
    """Skip the trunk: its outermost modules (or ``forward_features``) return their input unchanged.

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
            self._saved.append((module, attr, module.__dict__.get(attr, _MISSING)))
            setattr(module, attr, _passthrough)
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
            elif previous is _MISSING:
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


_MISSING = object()
