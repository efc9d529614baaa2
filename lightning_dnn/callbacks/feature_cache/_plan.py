"""Find the frozen trunk of a network: trace its module calls once and cut their longest frozen prefix.

:class:`TrunkPlan` says how the trunk is cut; names are full module names in the LightningModule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from lightning_dnn._selection import compile_patterns, select_modules

__all__ = [
    "METHOD",
    "MISSING",
    "Trace",
    "TrunkPlan",
    "find_network",
    "full_name",
    "instance_attr",
    "make_plan",
    "passthrough",
    "trace_forward",
]

METHOD = "forward_features"
_WINDOW = "<forward_features>"


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


def full_name(prefix: str, name: str) -> str:
    """``prefix.name``, or whichever of the two is not empty."""
    return f"{prefix}.{name}" if prefix and name else prefix or name


def find_network(pl_module: nn.Module, boundary: str | None) -> tuple[str, str | None]:
    """The module called with the batch's inputs, and the full name of an explicit boundary module.

    The network is the module with ``forward_features``/``forward_head`` for ``boundary="forward_features"``,
    the child holding the boundary for a module name, else the only child that holds parameters (``self.net``),
    or ``""`` (the LightningModule itself).

    Raises:
        ValueError: no network defines ``forward_features``, or the boundary does not select exactly one module.

    Example:
        >>> holder = nn.Module(); holder.net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> find_network(holder, None), find_network(holder, "net.0")
        (('net', None), ('net', 'net.0'))
    """
    if boundary == METHOD:
        for name, module in pl_module.named_modules():
            if callable(getattr(module, "forward_features", None)) and callable(
                getattr(module, "forward_head", None)
            ):
                return name, None
        raise ValueError(
            "`boundary`='forward_features' needs a network with `forward_features` and `forward_head` "
            f"methods (timm models, lightning_dnn.nn.MLP); {type(pl_module).__name__} has none."
        )
    if boundary is not None:
        patterns = compile_patterns("boundary", boundary)
        names = [n for n, _ in select_modules(pl_module, patterns, arg="boundary")]
        if len(names) != 1:
            raise ValueError(f"`boundary`={boundary!r} must select exactly one module, got {names}")
        return (names[0].split(".")[0] if "." in names[0] else ""), names[0]
    holders = [n for n, c in pl_module.named_children() if any(True for _ in c.parameters())]
    if len(holders) == 1 and not any(True for _ in pl_module.parameters(recurse=False)):
        return holders[0], None
    return "", None


def trace_forward(
    network: nn.Module,
    network_name: str,
    x: Any,
    *,
    method: bool,
    capture: Callable[[str], bool],
    call: Callable[[Any], Any] | None = None,
) -> tuple[Any, Trace, dict[str, Tensor]]:
    """Run ``network(x)`` once, recording its module calls and the outputs of the modules ``capture`` selects.

    ``call`` replaces ``network`` as the function run on ``x`` (it must return the network's output). With
    ``method``, the calls made inside ``network.forward_features`` are grouped under one pseudo-call whose
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
            full = full_name(network_name, name)
            handles.append(module.register_forward_pre_hook(pre_hook(full)))
            handles.append(module.register_forward_hook(post_hook(full)))
    original: Callable[..., Any] = getattr(network, METHOD, None) or passthrough
    boundary = full_name(network_name, METHOD)

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
        with instance_attr(network, METHOD, window) if method else contextlib.nullcontext():
            output = (call or network)(x)
    finally:
        for h in handles:
            h.remove()
    return output, Trace(root, counts), captured


@contextlib.contextmanager
def instance_attr(module: nn.Module, name: str, value: Any) -> Iterator[None]:
    """Set an instance attribute (shadowing a method) inside the block; restore what was there after."""
    previous = module.__dict__.get(name, MISSING)
    setattr(module, name, value)
    try:
        yield
    finally:
        if previous is MISSING:
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

    The trunk is a prefix of the traced call sequence: the root's calls in order, descending into a container
    that is only partly frozen, stopping at the first module that has trainable parameters or at the explicit
    boundary. A module may run several times inside the trunk (the one ``relu`` of a torchvision residual
    block); the prefix is shortened until every module in it has all its calls inside it (a module shared by
    trunk and head stays with the head), and until the boundary runs once. Trailing modules without weights
    (activations, dropout) stay with the head unless the boundary names them.

    Returns:
        ``(plan, complete)``: ``plan`` is ``None`` when nothing can be cached; ``complete`` says whether the
        requested boundary (the module, or all of ``forward_features``) is covered.
    """
    planner = _Planner(trace, pl_module)
    if method:
        window = trace.window()
        if window is None:
            return None, False
        if planner.whole_window(window, network_name):
            trunk = tuple(dict.fromkeys(c.name for c in window.children))
            return TrunkPlan(network_name, full_name(network_name, METHOD), (), trunk, method=True), True
        calls, complete = planner.walk(window.children, None)[0], False
    else:
        calls, complete = planner.walk(trace.root.children, boundary)
    calls, complete = planner.enclosed(calls, complete)
    if boundary is None or not complete:  # trailing activations/dropout stay with the head
        while calls and not planner.stateful(calls[-1].name):
            calls.pop()
    while calls and not (calls[-1].tensor_out and planner.single(calls, calls[-1].name)):
        calls.pop()  # the boundary's output is captured at its one call in the trunk
        complete = False
    if not calls or not any(planner.stateful(c.name) for c in calls):
        return None, False
    trunk = tuple(dict.fromkeys(c.name for c in calls))
    return TrunkPlan(network_name, trunk[-1], trunk, trunk), complete


class _Planner:
    """The questions :func:`make_plan` asks about the traced modules."""

    def __init__(self, trace: Trace, pl_module: nn.Module) -> None:
        self.counts = trace.counts
        self.modules = dict(pl_module.named_modules())

    def frozen(self, name: str) -> bool:
        return all(not p.requires_grad for p in self.modules[name].parameters())

    def partly_frozen(self, name: str) -> bool:
        return any(not p.requires_grad for p in self.modules[name].parameters())

    def stateful(self, name: str) -> bool:
        m = self.modules[name]
        return any(True for _ in m.parameters()) or any(True for _ in m.buffers())

    def once(self, name: str) -> bool:
        return self.counts.get(name, 0) <= 1

    def usable(self, call: _Call) -> bool:
        return self.frozen(call.name)

    def enclosed(self, calls: list[_Call], complete: bool) -> tuple[list[_Call], bool]:
        """The longest prefix of ``calls`` in which every module has all its calls (none is shared with the head)."""
        while calls:
            inside: dict[str, int] = {}
            for call in calls:
                for name in _module_names(call):
                    inside[name] = inside.get(name, 0) + 1
            cut = next(
                (i for i, c in enumerate(calls) if any(inside[n] < self.counts[n] for n in _module_names(c))),
                None,
            )
            if cut is None:
                return calls, complete
            calls, complete = calls[:cut], False
        return calls, complete

    def single(self, calls: list[_Call], name: str) -> bool:
        """Whether ``name`` is called exactly once among ``calls`` (and their sub-calls)."""
        return sum(n == name for c in calls for n in _module_names(c)) == 1

    def whole_window(self, window: _Call, network_name: str) -> bool:
        """Whether all of ``forward_features`` is frozen, holds all calls of its modules and returns a tensor."""
        names = [n for c in window.children for n in _module_names(c)]
        root = self.modules[network_name]
        inside: dict[str, int] = {}
        for n in names:
            inside[n] = inside.get(n, 0) + 1
        return (
            window.tensor_out
            and all(inside[n] == self.counts[n] and self.frozen(n) for n in names)
            and all(not p.requires_grad for p in root.parameters(recurse=False))
        )

    def walk(self, calls: list[_Call], limit: str | None) -> tuple[list[_Call], bool]:
        """The usable prefix of ``calls`` and whether it reached ``limit`` (or ran to the end, without one)."""
        trunk: list[_Call] = []
        for call in calls:
            if limit is not None and limit.startswith(call.name + "."):
                sub, reached = self.walk(call.children, limit)
                return trunk + sub, reached
            if self.usable(call):
                trunk.append(call)
                if call.name == limit:
                    return trunk, True
                continue
            if call.children and self.partly_frozen(call.name) and self.once(call.name):
                trunk.extend(self.walk(call.children, None)[0])
            return trunk, False
        return trunk, limit is None


def passthrough(*args: Any, **kwargs: Any) -> Any:
    """A forward that returns its input (the first argument)."""
    return args[0] if args else next(iter(kwargs.values()))


MISSING = object()  # marks an instance attribute that was not there
