"""LayerFreezer's unfreeze schedule: the forms ``unfreeze`` accepts, the automatic schedule, the plan and its checks."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from lightning_dnn._checks import check_int, check_number
from lightning_dnn._selection import compile_patterns, select_modules, shorten
from lightning_dnn.callbacks._frozen_set import (
    holds_parameters,
    owned_parameters,
    owner_map,
    with_descendants,
)

__all__ = [
    "Milestones",
    "PlannedStep",
    "StepSpec",
    "auto_steps",
    "network_root",
    "outermost",
    "parse_unfreeze",
    "plan_steps",
    "planned_steps",
    "resolve_auto",
    "schedule_label",
    "select_step",
    "step_arg",
    "step_label",
]

Milestones = Literal["epoch", "metric"]

_STEP_KEYS = ("pattern", "lr", "epoch")


@dataclass(frozen=True)
class StepSpec:
    """One configured unfreeze step.

    Attributes:
        patterns: the regexes selecting the modules to unfreeze; ``None``: everything still frozen.
        epoch: the (0-based) epoch at whose start the step runs (``milestones="epoch"``), else ``None``.
        lr: the learning rate of the step's new param group, or ``None``.
        modules: exact module names (the automatic schedule), used instead of ``patterns`` when set.

    Example:
        >>> step = StepSpec(patterns=tuple(compile_patterns("unfreeze", "hidden2")), epoch=2, lr=1e-3)
        >>> step_label(step), step.epoch, step.lr
        ('hidden2', 2, 0.001)
    """

    patterns: tuple[re.Pattern[str], ...] | None
    epoch: int | None = None
    lr: float | None = None
    modules: frozenset[str] | None = None


@dataclass(frozen=True)
class PlannedStep:
    """One step of a LayerFreezer schedule resolved against a network (:meth:`LayerFreezer.dry_run`).

    Attributes:
        index: the step's position in the schedule, from 0 (its depth below the head is ``index + 1``).
        trigger: the epoch at whose start it runs, or ``"metric"`` (when the monitored metric stops improving).
        pattern: the step's patterns joined with ``|``, ``"all"`` (everything still frozen), or the module names
            of an automatic step.
        modules: the outermost modules it unfreezes, by name relative to the LightningModule.
        parameters: the parameter tensors it makes trainable, by name.
        numel: the number of scalar parameters in them.
        lr: the learning rate its param group starts with, when it is absolute (a step ``lr``, ``unfrozen_lr``).
        lr_factor: otherwise the factor to the first param group's lr at that point (``layer_decay ** depth``;
            1.0: the group follows the first group exactly).

    Example:
        >>> step = PlannedStep(0, 2, "hidden2", ("net.hidden2",), ("net.hidden2.weight",), 64, 1e-3, 1.0)
        >>> step.trigger, step.numel, step.lr
        (2, 64, 0.001)
    """

    index: int
    trigger: int | str
    pattern: str
    modules: tuple[str, ...]
    parameters: tuple[str, ...]
    numel: int
    lr: float | None
    lr_factor: float


def step_label(step: StepSpec, universe: Iterable[str] | None = None) -> str:
    """The step's patterns as one string (for messages, the state key and :class:`PlannedStep`).

    ``universe``: the network's module names, for the exact modules of an automatic step (see :func:`outermost`).

    Example:
        >>> step_label(StepSpec(patterns=None)), step_label(StepSpec(None, modules=frozenset({"net.b", "net.a"})))
        ('all', 'net.a|net.b')
    """
    if step.modules is not None:
        return "|".join(outermost(step.modules, universe))
    if step.patterns is None:
        return "all"
    return "|".join(p.pattern for p in step.patterns)


def outermost(names: Iterable[str], universe: Iterable[str] | None = None) -> list[str]:
    """The names of a set of modules that have no ancestor in it, sorted.

    With ``universe`` (all the module names of the network), an ancestor counts only when the set holds all its
    descendants: a module in the set for the tensors it holds itself (a ViT root's ``cls_token``) does not hide
    the submodules listed next to it.

    Example:
        >>> outermost({"net.a", "net.a.linear", "net.b"})
        ['net.a', 'net.b']
        >>> outermost({"net", "net.a"}, universe=["net", "net.a", "net.b"])
        ['net', 'net.a']
    """
    names = set(names)
    covering = names
    if universe is not None:
        universe = list(universe)
        covering = {
            o for o in names if all(n in names for n in universe if n.startswith(o + ".") or (not o and n))
        }
    return sorted(
        n for n in names if not any((not o and n) or n.startswith(o + ".") for o in covering if o != n)
    )


def parse_unfreeze(unfreeze: Any, milestones: Milestones) -> list[StepSpec] | Literal["auto"]:
    """Check and normalise ``unfreeze`` into an ordered list of steps (or ``"auto"``).

    Accepted forms:

    * ``{epoch: pattern}`` or ``{epoch: (pattern, lr)}`` (``milestones="epoch"``), e.g. ``{2: ("hidden2", 1e-3)}``;
    * a list of steps, each a pattern (a regex or a list of them) or a dict ``{"pattern": ..., "lr": ...,
      "epoch": ...}`` (``"lr"`` optional; ``"epoch"`` required with ``milestones="epoch"``, refused with
      ``"metric"``), the form a LightningCLI YAML writes;
    * ``"auto"``: one step per top-level block of the network, top-down (see :func:`auto_steps`).

    With ``milestones="epoch"`` the steps are sorted by epoch; two steps at one epoch are refused.

    Raises:
        TypeError: a form other than these, epochs that are not integers, patterns that are not regexes.
        ValueError: negative epochs, a non-positive lr, unknown keys in a step dict, duplicate epochs.

    Example:
        >>> steps = parse_unfreeze({4: "hidden1", 2: ("hidden2", 1e-3)}, "epoch")
        >>> [(step_label(s), s.epoch, s.lr) for s in steps]
        [('hidden2', 2, 0.001), ('hidden1', 4, None)]
        >>> [step_label(s) for s in parse_unfreeze(["hidden3", {"pattern": "hidden2", "lr": 0.01}], "metric")]
        ['hidden3', 'hidden2']
    """
    if unfreeze is None:
        return []
    if isinstance(unfreeze, str):
        if unfreeze == "auto":
            return "auto"
        if milestones == "metric":
            return [_parse_step(0, unfreeze, milestones)]
        raise TypeError(_epoch_form_error(repr(unfreeze)))
    if isinstance(unfreeze, Mapping):
        if milestones == "metric":
            raise TypeError(
                "`unfreeze` as {epoch: pattern} fixes the epochs, but milestones='metric' advances when the "
                f"monitored metric stops improving: give an ordered list of steps instead, got {unfreeze!r}"
            )
        steps = []
        for epoch, value in unfreeze.items():
            check_int(f"unfreeze key {epoch!r}", epoch, low=0)
            pattern, lr = _pattern_and_lr(value)
            steps.append(_make_step(f"unfreeze[{epoch}]", pattern, epoch, lr))
        return _sorted_by_epoch(steps)
    if isinstance(unfreeze, Sequence) and len(unfreeze) > 0:
        steps = [_parse_step(i, item, milestones) for i, item in enumerate(unfreeze)]
        return _sorted_by_epoch(steps) if milestones == "epoch" else steps
    raise TypeError(_epoch_form_error(f"{type(unfreeze).__name__} {unfreeze!r}"))


def _epoch_form_error(got: str) -> str:
    return (
        "`unfreeze` must be a dict {epoch: pattern} (or {epoch: (pattern, lr)}), a non-empty list of steps "
        "(dicts {'pattern': ..., 'epoch': ..., 'lr': ...}; plain patterns with milestones='metric') or 'auto', "
        f"got {got}"
    )


def _pattern_and_lr(value: Any) -> tuple[Any, Any]:
    """``pattern`` or ``(pattern, lr)`` (a 2-sequence whose second item is a number) or a step dict."""
    if isinstance(value, Mapping):
        return value.get("pattern"), value.get("lr")
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and isinstance(value[1], int | float)
        and not isinstance(value[1], bool)
    ):
        return value[0], value[1]
    return value, None


def _parse_step(index: int, item: Any, milestones: Milestones) -> StepSpec:
    arg = f"unfreeze[{index}]"
    if not isinstance(item, Mapping):
        if milestones == "epoch":
            raise TypeError(
                _epoch_form_error(f"step {index} {item!r} without an epoch")
                + f": write {{'pattern': {item!r}, 'epoch': N}} or use milestones='metric'"
            )
        pattern, lr = _pattern_and_lr(item)
        return _make_step(arg, pattern, None, lr)
    unknown = sorted(str(k) for k in item if k not in _STEP_KEYS)
    if unknown:
        raise ValueError(f"`{arg}` has unknown keys {unknown}; a step accepts {list(_STEP_KEYS)}")
    if "pattern" not in item:
        raise ValueError(f"`{arg}` needs a 'pattern', got {dict(item)!r}")
    epoch = item.get("epoch")
    if milestones == "metric" and epoch is not None:
        raise ValueError(
            f"`{arg}` has an 'epoch' ({epoch!r}), but milestones='metric' advances when the monitored metric "
            "stops improving; drop the epochs or use milestones='epoch'"
        )
    if milestones == "epoch":
        if epoch is None:
            raise TypeError(_epoch_form_error(f"step {index} {dict(item)!r} without an 'epoch'"))
        check_int(f"{arg} epoch", epoch, low=0)
    return _make_step(arg, item["pattern"], epoch, item.get("lr"))


def _make_step(arg: str, pattern: Any, epoch: int | None, lr: Any) -> StepSpec:
    patterns = tuple(compile_patterns(arg, pattern))
    checked = None if lr is None else check_number(f"{arg} lr", lr, low=0.0, low_inclusive=False)
    return StepSpec(patterns=patterns, epoch=epoch, lr=checked)


def _sorted_by_epoch(steps: list[StepSpec]) -> list[StepSpec]:
    ordered = sorted(steps, key=lambda s: s.epoch if s.epoch is not None else -1)
    for a, b in itertools.pairwise(ordered):
        if a.epoch == b.epoch:
            raise ValueError(
                f"`unfreeze` has two steps at epoch {a.epoch} ({step_label(a)!r} and {step_label(b)!r}); "
                "merge them into one step with a list of patterns"
            )
    return ordered


def network_root(pl_module: nn.Module) -> str:
    """The name of the module holding the network: ``"net"`` when the LightningModule holds one as ``self.net``.

    Example:
        >>> class M(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(2, 2)
        >>> network_root(M()), network_root(nn.Linear(2, 2))
        ('net', '')
    """
    return "net" if isinstance(getattr(pl_module, "net", None), nn.Module) else ""


def auto_steps(pl_module: nn.Module, frozen: Iterable[str], owned: Mapping[str, int]) -> list[StepSpec]:
    """One step per top-level block of the network holding frozen parameters, top-down (last child first).

    The network is the module held as ``self.net`` (else the LightningModule); its top-level blocks are its
    children in definition order. A block none of whose parameters is frozen (the head) gets no step. Parameters
    held directly by the network's root (a ViT's ``cls_token`` and ``pos_embed``) join the last (lowest) step.

    Args:
        pl_module: the LightningModule.
        frozen: the names of the modules frozen now.
        owned: module name -> the number of frozen parameter tensors it holds directly.

    Returns:
        The steps, each with its exact ``modules`` (names relative to ``pl_module``, descendants included).

    Example:
        >>> net = nn.Sequential()
        >>> for name in ("hidden1", "hidden2", "output"): net.add_module(name, nn.Linear(2, 2))
        >>> steps = auto_steps(net, {"hidden1", "hidden2"}, {"hidden1": 2, "hidden2": 2})
        >>> [step_label(s) for s in steps]
        ['hidden2', 'hidden1']
    """
    root = network_root(pl_module)
    network = pl_module.get_submodule(root)
    frozen = set(frozen)
    prefix = root + "." if root else ""
    steps: list[set[str]] = []
    for child, module in network.named_children():
        names = {prefix + child} | {f"{prefix}{child}.{n}" for n, _ in module.named_modules() if n}
        if any(owned.get(n, 0) for n in names & frozen):
            steps.append(names & frozen)
    steps.reverse()
    if owned.get(root, 0) and root in frozen:
        if steps:
            steps[-1].add(root)
        else:
            steps.append({root})
    return [StepSpec(patterns=None, modules=frozenset(s)) for s in steps]


def resolve_auto(
    pl_module: nn.Module, frozen: set[str], foreign: set[int], milestones: Milestones
) -> list[StepSpec]:
    """The automatic schedule (:func:`auto_steps`) for ``pl_module``, with epochs for ``milestones="epoch"``.

    Step ``k`` (from 1) then runs at epoch ``k`` (ULMFiT's gradual unfreezing). ``foreign``: ids of parameters
    nobody may unfreeze.

    Example:
        >>> net = nn.Sequential()
        >>> for name in ("hidden1", "hidden2", "output"): net.add_module(name, nn.Linear(2, 2))
        >>> [(s.epoch, step_label(s)) for s in resolve_auto(net, {"hidden1", "hidden2"}, set(), "epoch")]
        [(1, 'hidden2'), (2, 'hidden1')]
    """
    owned = {
        name: sum(id(p) not in foreign for p in module.parameters(recurse=False))
        for name, module in pl_module.named_modules()
        if name in frozen
    }
    steps = auto_steps(pl_module, frozen, owned)
    if milestones == "epoch":
        steps = [StepSpec(None, epoch=k, modules=s.modules) for k, s in enumerate(steps, start=1)]
    return steps


def step_arg(index: int, step: StepSpec) -> str:
    """How messages name a step: ``unfreeze[epoch]`` (epoch milestones) or ``unfreeze[index]``.

    Example:
        >>> step_arg(0, StepSpec(None, epoch=3)), step_arg(1, StepSpec(None))
        ('unfreeze[3]', 'unfreeze[1]')
    """
    return f"unfreeze[{step.epoch if step.epoch is not None else index}]"


def select_step(pl_module: nn.Module, index: int, step: StepSpec, frozen: set[str]) -> set[str]:
    """The modules of ``frozen`` that step ``index`` selects (its patterns' modules with their descendants).

    Raises:
        ValueError: when one of its patterns selects no module of ``pl_module``.

    Example:
        >>> net = nn.Sequential()
        >>> for name in ("hidden1", "hidden2", "output"): net.add_module(name, nn.Linear(2, 2))
        >>> select_step(net, 0, parse_unfreeze({1: "hidden[12]"}, "epoch")[0], {"hidden1"})
        {'hidden1'}
    """
    if step.modules is not None:
        return set(step.modules) & frozen
    if step.patterns is None:
        return set(frozen)
    chosen = [n for n, _ in select_modules(pl_module, list(step.patterns), arg=step_arg(index, step))]
    return with_descendants(chosen, [n for n, _ in pl_module.named_modules() if n]) & frozen


def plan_steps(
    pl_module: nn.Module, steps: Sequence[StepSpec], initial: set[str], foreign: set[int]
) -> list[tuple[list[str], list[tuple[str, nn.Parameter]]]]:
    """Simulate the schedule from the frozen set ``initial``: each step's modules and the parameters it frees.

    Parameters whose ids are in ``foreign`` never become trainable.

    Raises:
        ValueError: a pattern that selects no module, a step that unfreezes no frozen parameter, a step that
            selects modules holding parameters an earlier step unfroze (a step ``"all"`` takes what is left).

    Example:
        >>> net = nn.Sequential()
        >>> for name in ("hidden1", "hidden2", "output"): net.add_module(name, nn.Linear(2, 2))
        >>> steps = parse_unfreeze({1: "hidden2", 2: "hidden[12]"}, "epoch")
        >>> plan_steps(net, steps, {"hidden1", "hidden2"}, set())
        Traceback (most recent call last):
            ...
        ValueError: `unfreeze[2]`='hidden[12]' overlaps earlier steps [0]: it also selects hidden2, ...
    """
    frozen = set(initial)
    owners = owner_map(pl_module)
    by_step: dict[str, int] = {}  # module -> the step that unfroze it
    plan = []
    for index, step in enumerate(steps):
        # "all" means everything still frozen: it overlaps nothing
        selected = select_step(pl_module, index, step, frozen if step.patterns is None else initial)
        new = selected & frozen
        remaining = frozen - new
        params = [
            (n, p)
            for n, p in owned_parameters(pl_module, new)
            if id(p) not in foreign and not any(o in remaining for o in owners[id(p)])
        ]
        where = f"epoch {step.epoch}" if step.epoch is not None else f"step {index}"
        if not params:
            raise _nothing_error(pl_module, index, step, frozen, new, foreign, where)
        overlap = {n: by_step[n] for n in selected - new if n in by_step and holds_parameters(pl_module, n)}
        if overlap:
            raise ValueError(
                f"`{step_arg(index, step)}`={step_label(step)!r} overlaps earlier steps "
                f"{sorted(set(overlap.values()))}: it also selects {shorten(outermost(overlap), 12)}, already "
                "unfrozen by them. Each module is unfrozen by one step: narrow the pattern to what is still "
                f"frozen at {where} ({shorten(outermost(frozen), 12)})."
            )
        by_step.update(dict.fromkeys(new, index))
        frozen = remaining
        plan.append((sorted(new), params))
    return plan


def planned_steps(
    pl_module: nn.Module,
    steps: Sequence[StepSpec],
    initial: set[str],
    foreign: set[int],
    lr_of: Callable[[int, StepSpec], tuple[float | None, float]],
) -> list[PlannedStep]:
    """The schedule as :meth:`LayerFreezer.dry_run` shows it: :func:`plan_steps`, each step with its start lr.

    ``lr_of(index, step)``: the step's absolute start lr (or None) and otherwise its factor to the lr of the group
    it follows.

    Example:
        >>> net = nn.Sequential()
        >>> for name in ("hidden1", "hidden2", "output"): net.add_module(name, nn.Linear(2, 2))
        >>> steps = parse_unfreeze({1: "hidden2"}, "epoch")
        >>> plan = planned_steps(net, steps, {"hidden2"}, set(), lambda index, step: (None, 1.0))
        >>> [(s.trigger, s.modules, s.numel) for s in plan]
        [(1, ('hidden2',), 6)]
    """
    plan = plan_steps(pl_module, steps, initial, foreign)
    universe = [n for n, _ in pl_module.named_modules()]
    out = []
    for index, (step, (modules, params)) in enumerate(zip(steps, plan, strict=True)):
        lr, factor = lr_of(index, step)
        out.append(
            PlannedStep(
                index=index,
                trigger="metric" if step.epoch is None else step.epoch,
                pattern=step_label(step, universe),
                modules=tuple(outermost(modules, universe)),
                parameters=tuple(n for n, _ in params),
                numel=sum(p.numel() for _, p in params),
                lr=lr,
                lr_factor=factor,
            )
        )
    return out


def schedule_label(spec: Sequence[StepSpec] | Literal["auto"], milestones: Milestones) -> Any:
    """The ``unfreeze`` schedule as LayerFreezer's state key shows it: ``{epoch: label}``, labels, or ``"auto"``.

    Example:
        >>> schedule_label(parse_unfreeze({2: "hidden2"}, "epoch"), "epoch")
        {2: 'hidden2'}
    """
    if spec == "auto":
        return "auto"
    if milestones == "epoch":
        return {s.epoch: step_label(s) for s in spec}
    return [step_label(s) for s in spec]


def _nothing_error(
    pl_module: nn.Module,
    index: int,
    step: StepSpec,
    frozen: set[str],
    new: set[str],
    foreign: set[int],
    where: str,
) -> ValueError:
    pats = "all" if step.patterns is None else [p.pattern for p in step.patterns]
    still = shorten(outermost(frozen), 12) if frozen else "nothing"
    gone = [n for n, p in owned_parameters(pl_module, new) if id(p) in foreign]
    why = (
        f" It selects only {shorten(gone, 12)}, frozen before this fit by something other than a LayerFreezer, "
        "which LayerFreezer never unfreezes: call `requires_grad_(True)` on them before `fit` to train them."
        if gone
        else ""
    )
    return ValueError(
        f"`{step_arg(index, step)}`={pats} unfreezes no frozen parameter: it must select modules frozen by "
        f"`freeze` and not unfrozen by an earlier step. Frozen at {where}: {still}.{why}"
    )
