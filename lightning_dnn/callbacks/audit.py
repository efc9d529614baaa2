"""The freeze audit: what trains, what is frozen, what DDP syncs and where FeatureCache cuts, in one table.

:func:`freeze_audit` computes it for a module (before or during a fit); :class:`FreezeAuditor` logs it at fit start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from typing_extensions import override

from lightning_dnn._checks import check_bool
from lightning_dnn._lightning import Callback, is_strategy, rank_zero_info, rank_zero_warn
from lightning_dnn.callbacks.feature_cache import FeatureCache
from lightning_dnn.callbacks.feature_cache._plan import find_network
from lightning_dnn.callbacks.feature_cache._preview import CutPreview, preview_cut

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["FreezeAudit", "FreezeAuditor", "HeldParameter", "ModuleRow", "NormRow", "freeze_audit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModuleRow:
    """One row of the table: a block of the network (or, verbose, a module holding tensors itself).

    Attributes:
        name: the module's name relative to the audited module (``""``: the audited module itself).
        kind: its class name.
        trainable: scalar parameters that require gradients (each shared tensor counted once, in its first row).
        frozen: scalar parameters that do not.
        norms: its normalization layers with running statistics by mode, e.g. ``"2 eval"``, ``"1 eval, 1 train"``.
        flags: what needs a look (see :class:`FreezeAudit`).
    """

    name: str
    kind: str
    trainable: int
    frozen: int
    norms: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class NormRow:
    """A normalization layer (batch norm and the other ``_NormBase`` layers).

    Attributes:
        name: its name.
        kind: its class name.
        training: whether training will run it in training mode: its mode now, unless ``kept_eval``.
        frozen: whether none of its parameters is trainable (also true without affine parameters).
        running_stats: whether it holds running statistics (``running_mean``).
        tracking: ``track_running_stats``: whether training mode updates them.
        kept_eval: whether the freezer keeps it in eval mode during training (LayerFreezer with ``bn="eval"``
            keeps the normalization layers it froze in eval mode, from the first training epoch on).
        flag: what is wrong with it, or ``None``.
    """

    name: str
    kind: str
    training: bool
    frozen: bool
    running_stats: bool
    tracking: bool
    kept_eval: bool
    flag: str | None


@dataclass(frozen=True)
class HeldParameter:
    """A parameter held directly by a module that has children (a ViT's ``cls_token``, a ``self.shift``).

    Attributes:
        name: the parameter's full name.
        holder: the module holding it.
        numel: its number of scalars.
        trainable: whether it requires gradients.
    """

    name: str
    holder: str
    numel: int
    trainable: bool


@dataclass(frozen=True)
class FreezeAudit:
    """What training will update, keep fixed, sync under DDP and cache, as rows and as a table (``str()``).

    Flags: ``"partly frozen"`` (a row with trainable and frozen parameters), ``"frozen norm not fixed"``
    (its running statistics change or it normalizes with batch statistics, though its weights are frozen),
    ``"holds parameters itself"`` (patterns naming its children do not select them).

    Attributes:
        title: what was audited.
        rows: the table's rows.
        norms: every normalization layer.
        held: parameters held directly by modules that have children.
        ddp: what DistributedDataParallel will and will not sync, as sentences.
        cut: where FeatureCache would cut now, or ``None`` (``cut_note`` says why none was traced).
        cut_note: why the cut was not traced (no example input, an error), or ``""``.
        schedule: the freezer's steps as sentences (from its ``dry_run``), or why not.

    Example:
        >>> from lightning_dnn.nn import MLP
        >>> from lightning_dnn.callbacks import LayerFreezer
        >>> audit = freeze_audit(MLP(4, (8,), 2), freezer=LayerFreezer("hidden1", unfreeze={2: "hidden1"}))
        >>> [(row.name, row.trainable, row.frozen) for row in audit.rows]
        [('hidden1', 0, 40), ('output', 18, 0)]
        >>> audit.schedule[0]
        'step 0 at epoch 2: unfreezes hidden1 (40 scalars), lr x1 of the first group'
    """

    title: str
    rows: tuple[ModuleRow, ...]
    norms: tuple[NormRow, ...]
    held: tuple[HeldParameter, ...]
    ddp: tuple[str, ...]
    cut: CutPreview | None
    cut_note: str
    schedule: tuple[str, ...]

    @property
    def trainable(self) -> int:
        """All trainable scalar parameters.

        Example:
            >>> freeze_audit(nn.Linear(2, 3)).trainable
            9
        """
        return sum(r.trainable for r in self.rows)

    @property
    def frozen(self) -> int:
        """All frozen scalar parameters.

        Example:
            >>> freeze_audit(nn.Linear(2, 3).requires_grad_(False)).frozen
            9
        """
        return sum(r.frozen for r in self.rows)

    @property
    def problems(self) -> list[str]:
        """The flagged findings, one sentence each (what a user should look at before training).

        Example:
            >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).requires_grad_(False)
            >>> freeze_audit(net).problems
            ['1: frozen BatchNorm1d not fixed: running statistics keep updating']
        """
        found = [f"{n.name}: frozen {n.kind} not fixed: {n.flag}" for n in self.norms if n.flag]
        found += [
            f"{h.name}: trainable parameter held by {h.holder or 'the root'} itself, not by a child"
            for h in self.held
            if h.trainable
        ]
        if self.cut is not None and self.cut.refused:
            found.append(f"FeatureCache: {self.cut.reason}")
        found += [s for s in self.schedule if s.startswith("invalid")]
        return found

    def __str__(self) -> str:
        header = ("module", "type", "trainable", "frozen", "norms", "flags")
        body = [
            (r.name or "(root)", r.kind, f"{r.trainable:,}", f"{r.frozen:,}", r.norms, "; ".join(r.flags))
            for r in self.rows
        ]
        total = ("total", "", f"{self.trainable:,}", f"{self.frozen:,}", "", "")
        lines = [f"Freeze audit of {self.title}", *_table([header, *body, total], numeric=(2, 3))]
        if self.norms:
            lines.append("Normalization layers:")
            for n in self.norms:
                state = "frozen" if n.frozen else "trainable"
                stats = "running stats" if n.running_stats else "batch stats only"
                tracked = ", not tracking" if n.running_stats and not n.tracking else ""
                flag = f"  <- {n.flag}" if n.flag else ""
                mode = (
                    "train mode"
                    if n.training
                    else "eval mode" + (" (kept by the freezer)" if n.kept_eval else "")
                )
                lines.append(f"  {n.name} ({n.kind}): {mode}, {state}, {stats}{tracked}{flag}")
        for h in self.held:
            state = "trainable" if h.trainable else "frozen"
            lines.append(
                f"Held by {h.holder or 'the root'} itself: {h.name} ({h.numel:,}, {state}): patterns naming its "
                "children do not select it"
            )
        lines += [f"DDP: {s}" for s in self.ddp]
        if self.cut is not None:
            lines.append(f"FeatureCache: {self.cut.reason}")
        elif self.cut_note:
            lines.append(f"FeatureCache: {self.cut_note}")
        lines += [f"Schedule: {s}" for s in self.schedule]
        return "\n".join(lines)


def freeze_audit(
    pl_module_or_net: nn.Module,
    *,
    freezer: Any = None,
    cache: FeatureCache | None = None,
    trainer: pl.Trainer | None = None,
    example_input: Any = None,
    verbose: bool = False,
) -> FreezeAudit:
    """Audit the freeze state of a LightningModule or network: one table, and the findings that need a look.

    It reads ``requires_grad`` and the modules' modes as they are now (call it after freezing, or let
    :class:`FreezeAuditor` call it at fit start, after every freezer's initial freeze) and changes nothing.

    Args:
        pl_module_or_net: the LightningModule (names like ``net.hidden1``) or a bare network.
        freezer: a freezer with ``dry_run(module)`` (LayerFreezer): its schedule is listed (and validated);
            default: the first such callback of ``trainer``.
        cache: a FeatureCache whose ``boundary`` the cut uses; default: the one in ``trainer``'s callbacks.
        trainer: the fit's Trainer: its callbacks, and its DDP settings (the wrapped model's
            ``forward_sync_buffers``/``broadcast_buffers`` and ``find_unused_parameters``) once it is wrapped.
        example_input: one batch of the network's inputs, to trace where FeatureCache would cut; default:
            ``pl_module.example_input_array``. Without one, the cut is not traced.
        verbose: one row per module that holds parameters or buffers itself, instead of one per block of the
            network (its direct children).

    Returns:
        The audit (``str()`` is the table).

    Raises:
        TypeError: ``pl_module_or_net`` is not an ``nn.Module``, ``verbose`` is not a bool.

    Example:
        >>> from lightning_dnn.nn import MLP
        >>> net = MLP(4, (8,), 2, norm="batch")
        >>> _ = net.hidden1.requires_grad_(False)
        >>> audit = freeze_audit(net, example_input=torch.randn(5, 4))
        >>> [(r.name, r.trainable, r.frozen, r.norms) for r in audit.rows]
        [('hidden1', 0, 48, '1 train'), ('output', 18, 0, '')]
        >>> audit.cut.boundary, audit.cut.refused  # hidden1's batch norm is in training mode
        ('hidden1', True)
        >>> audit.problems[0]
        'hidden1.bn: frozen BatchNorm1d not fixed: running statistics keep updating'
    """
    module = pl_module_or_net
    if not isinstance(module, nn.Module):
        raise TypeError(f"`pl_module_or_net` must be an nn.Module, got {type(module).__name__}")
    check_bool("verbose", verbose)
    callbacks = list(getattr(trainer, "callbacks", None) or [])
    if freezer is None:
        freezer = next((c for c in callbacks if callable(getattr(c, "dry_run", None))), None)
    if cache is None:
        cache = next((c for c in callbacks if isinstance(c, FeatureCache)), None)
    kept_eval, original = _kept_eval(freezer), module
    if trainer is None and freezer is not None:
        module, kept_eval = _with_initial_freeze(module, freezer, kept_eval)
    network_name = find_network(module, None)[0]
    norms = tuple(_norm_rows(module, kept_eval))
    held = tuple(_held(module))
    rows = tuple(_rows(module, network_name, norms, held, verbose))
    if example_input is None:
        example_input = getattr(module, "example_input_array", None)
    cut, note = _cut(module, cache, example_input, {n.name: n.training for n in norms})
    return FreezeAudit(
        title=f"{type(module).__name__}" + (f" (network: {network_name})" if network_name else ""),
        rows=rows,
        norms=norms,
        held=held,
        ddp=tuple(_ddp(module, norms, trainer)),
        cut=cut,
        cut_note=note,
        schedule=tuple(_schedule(freezer, original)),
    )


class FreezeAuditor(Callback):  # type: ignore[misc]
    """Log the :func:`freeze_audit` table at fit start (rank zero) and warn about its findings.

    At ``on_fit_start`` every freezer has applied its initial freeze (LayerFreezer freezes right after
    ``configure_model``), the strategy has wrapped the model (so the audit reads DDP's real settings) and the
    optimizers exist; no batch has run. The table goes to the ``lightning_dnn.callbacks.audit`` logger at INFO,
    the findings (:attr:`FreezeAudit.problems`) to a warning; :attr:`audit` keeps the last one.

    Args:
        example_input: one batch of the network's inputs (on any device: moved to the module's) to trace where
            FeatureCache would cut; default: the LightningModule's ``example_input_array``.
        verbose: as in :func:`freeze_audit`.

    Example:
        >>> import pytorch_lightning as pl
        >>> from lightning_dnn import DNNClassifier
        >>> from lightning_dnn.callbacks import LayerFreezer
        >>> from lightning_dnn.loading import DeviceBatchLoader
        >>> from lightning_dnn.nn import MLP
        >>> auditor = FreezeAuditor(example_input=torch.randn(4, 4))
        >>> data = DeviceBatchLoader(torch.randn(16, 4), torch.randint(0, 3, (16,)), batch_size=8)
        >>> trainer = pl.Trainer(max_epochs=1, callbacks=[LayerFreezer("hidden1"), auditor], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(DNNClassifier(MLP(4, (8, 8), 3)), data)
        >>> [(r.name, r.trainable, r.frozen) for r in auditor.audit.rows]
        [('net.hidden1', 0, 40), ('net.hidden2', 72, 0), ('net.output', 27, 0)]
    """

    def __init__(self, *, example_input: Any = None, verbose: bool = False) -> None:
        super().__init__()
        self.example_input = example_input
        self.verbose = check_bool("verbose", verbose)
        self.audit: FreezeAudit | None = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Audit the module as training is about to start; log the table, warn about the findings."""
        x = self.example_input
        if isinstance(x, torch.Tensor):
            x = x.to(pl_module.device)
        self.audit = freeze_audit(pl_module, trainer=trainer, example_input=x, verbose=self.verbose)
        rank_zero_info(str(self.audit))
        problems = self.audit.problems
        if problems:
            rank_zero_warn("FreezeAuditor: " + " | ".join(problems))


# --------------------------------------------------------------------------------------------------- parts --
def _with_initial_freeze(module: nn.Module, freezer: Any, kept_eval: set[str]) -> tuple[nn.Module, set[str]]:
    """Before training: a copy of ``module`` frozen as ``freezer`` will freeze it at fit start (else ``module``).

    A freezer that has not frozen anything yet (its ``initially_frozen`` modules all still trainable) would show
    an audit of the network as it is *before* the fit; the copy shows it as the fit will start.
    """
    initially_frozen = getattr(freezer, "initially_frozen", None)
    if not callable(initially_frozen):
        return module, kept_eval
    try:
        names = set(initially_frozen(module))
    except ValueError:
        return module, kept_eval  # the schedule row reports the error (dry_run raises it too)
    own = (p for n, m in module.named_modules() if n in names for p in m.parameters(recurse=False))
    if not any(p.requires_grad for p in own):
        return module, kept_eval  # already frozen: audit it as it is
    copy = deepcopy(module)
    for name, copied in copy.named_modules():
        if name in names:
            for param in copied.parameters(recurse=False):  # its own tensors: an ancestor's other children stay
                param.requires_grad_(False)
    if getattr(freezer, "bn", None) == "eval":
        kept_eval = kept_eval | names
    return copy, kept_eval


def _kept_eval(freezer: Any) -> set[str]:
    """The modules whose normalization layers ``freezer`` keeps in eval mode (LayerFreezer, ``bn="eval"``)."""
    if getattr(freezer, "bn", None) != "eval" or not callable(getattr(freezer, "state_dict", None)):
        return set()
    return set(freezer.state_dict().get("frozen", ()))


def _norm_rows(module: nn.Module, kept_eval: set[str]) -> Iterable[NormRow]:
    for name, m in module.named_modules():
        if not isinstance(m, _NormBase):
            continue
        frozen = not any(p.requires_grad for p in m.parameters())
        stats = m.running_mean is not None
        kept = name in kept_eval
        training = m.training and not kept
        flag = None
        if frozen and training and stats and m.track_running_stats:
            flag = "running statistics keep updating"
        elif frozen and training and stats:
            flag = "normalizes with batch statistics (track_running_stats=False), not its running ones"
        elif frozen and not stats and isinstance(m, _BatchNorm):
            flag = "no running statistics: normalizes with batch statistics in every mode"
        yield NormRow(
            name, type(m).__name__, training, frozen, stats, bool(m.track_running_stats), kept, flag
        )


def _held(module: nn.Module) -> Iterable[HeldParameter]:
    for name, m in module.named_modules():
        if not any(True for _ in m.children()):
            continue
        for local, p in m.named_parameters(recurse=False):
            full = f"{name}.{local}" if name else local
            yield HeldParameter(full, name, p.numel(), p.requires_grad)


def _rows(
    module: nn.Module, network: str, norms: Sequence[NormRow], held: Sequence[HeldParameter], verbose: bool
) -> Iterable[ModuleRow]:
    seen: set[int] = set()
    if verbose:
        chosen = [
            (n, m, False)
            for n, m in module.named_modules()
            if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        ]
    else:
        root = module.get_submodule(network)
        prefix = f"{network}." if network else ""
        chosen = [(network, root, False)] if any(True for _ in root.parameters(recurse=False)) else []
        chosen += [(prefix + n, c, True) for n, c in root.named_children()]
        if network:  # the LightningModule's other children (metrics, a second network)
            chosen += [(n, c, True) for n, c in module.named_children() if n != network]
    for name, m, recurse in chosen:
        params = [
            p for p in (m.parameters() if recurse else m.parameters(recurse=False)) if id(p) not in seen
        ]
        seen.update(id(p) for p in params)
        inside = [n for n in norms if _within(n.name, name, recurse)]
        if not params and not inside:
            continue
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        flags = []
        if trainable and frozen:
            flags.append("partly frozen")
        if any(n.flag for n in inside):
            flags.append("frozen norm not fixed")
        if any(_within(h.holder, name, recurse) for h in held):
            flags.append("holds parameters itself")
        yield ModuleRow(name, type(m).__name__, trainable, frozen, _modes(inside), tuple(flags))


def _within(name: str, row: str, recurse: bool) -> bool:
    """Whether the module ``name`` is the row's module (or, for a block row, inside it)."""
    if name == row:
        return True
    return recurse and (not row or name.startswith(row + "."))


def _modes(norms: Sequence[NormRow]) -> str:
    counts = {"eval": 0, "train": 0}
    for n in norms:
        if n.running_stats:
            counts["train" if n.training else "eval"] += 1
    return ", ".join(f"{c} {mode}" for mode, c in counts.items() if c)


def _ddp(module: nn.Module, norms: Sequence[NormRow], trainer: Any) -> Iterable[str]:
    frozen = [p for p in module.parameters() if not p.requires_grad]
    wrapped = getattr(getattr(trainer, "strategy", None), "model", None)
    is_ddp = trainer is not None and is_strategy(trainer.strategy, "DDPStrategy")
    sync = getattr(wrapped, "forward_sync_buffers", getattr(wrapped, "broadcast_buffers", None))
    prefix = "" if is_ddp else "under DDP, "
    if not frozen:
        yield f"{prefix}every parameter requires grad: DDP averages every gradient"
    else:
        yield (
            f"{prefix}{len(frozen)} frozen parameter tensors ({sum(p.numel() for p in frozen):,} scalars) are not in "
            "the gradient buckets: DDP registers the parameters that require grad when it wraps the model, so one "
            "unfrozen later is not averaged by DDP (LayerFreezer averages those itself)"
        )
    training = [n for n in norms if n.training and n.running_stats and n.kind != "SyncBatchNorm"]
    if not training:
        return
    shown = ", ".join(n.name for n in training[:6]) + (
        f" (+{len(training) - 6})" if len(training) > 6 else ""
    )
    if sync is None:
        buffers = (
            "rank 0's buffers are broadcast at every forward (broadcast_buffers, DDP's default), so their "
        )
        buffers += "running statistics follow rank 0's batches; with it off they diverge across ranks"
    elif sync:
        buffers = (
            "rank 0's buffers are broadcast at every forward, so their running statistics follow rank 0's "
        )
        buffers += "batches only"
    else:
        buffers = "buffers are not synced after the start, so their running statistics diverge across ranks"
    yield (
        f"{prefix}batch norm in training mode ({shown}) normalizes with each rank's own batch statistics (no "
        f"SyncBatchNorm: Trainer(sync_batchnorm=True) converts them); {buffers}"
    )


def _cut(
    module: nn.Module, cache: FeatureCache | None, inputs: Any, modes: dict[str, bool]
) -> tuple[CutPreview | None, str]:
    if inputs is None:
        return None, "cut not traced: pass `example_input` (or set the module's `example_input_array`)"
    boundary = None if cache is None else cache.boundary
    try:
        return preview_cut(module, inputs, boundary=boundary, modes=modes), ""
    except Exception as err:  # an audit reports, it does not stop the fit
        return None, f"cut not traced: {type(err).__name__}: {err}"


def _schedule(freezer: Any, module: nn.Module) -> Iterable[str]:
    if freezer is None:
        return
    dry_run = getattr(freezer, "dry_run", None)
    if not callable(dry_run):
        yield f"{type(freezer).__name__} has no dry_run(); its schedule is not shown"
        return
    try:
        steps = list(dry_run(module))
    except ValueError as err:
        yield f"invalid: {err}"
        return
    if not steps:
        yield f"{type(freezer).__name__}: no unfreezing step (the frozen layers stay frozen)"
    for s in steps:
        when = f"at epoch {s.trigger}" if isinstance(s.trigger, int) else f"on {s.trigger}"
        lr = f"lr {s.lr:g}" if s.lr is not None else f"lr x{s.lr_factor:g} of the first group"
        yield f"step {s.index} {when}: unfreezes {', '.join(s.modules)} ({s.numel:,} scalars), {lr}"


def _table(rows: Sequence[Sequence[str]], numeric: tuple[int, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out
