"""LayerFreezer: freeze layers before training and unfreeze them on a schedule (progressive unfreezing).

The param-group and scheduler surgery lives in ``_param_groups.py``, the DDP gradient averaging in
``_ddp_sync.py``; this module holds the freeze/unfreeze schedule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from typing_extensions import override

from lightning_dnn._checks import check_choice, check_int, check_number
from lightning_dnn._selection import Patterns, compile_patterns, select_modules, shorten
from lightning_dnn.callbacks._configure_model import AfterConfigureModel, after_configure_model
from lightning_dnn.callbacks._ddp_sync import UnsyncedGradients
from lightning_dnn.callbacks._param_groups import add_param_group, check_proportional, optimizer_param_ids
from lightning_dnn.callbacks._state_key import StateKeyOnce

__all__ = ["LayerFreezer"]

BNMode = Literal["eval", "train"]

#: Set on a module: the local names of its parameters that a LayerFreezer froze (survives a new LayerFreezer, a new
#: LightningModule around the network, ``copy.deepcopy`` and pickling, unlike an attribute on the parameter).
_FROZEN_MARK = "_layer_freezer_frozen"
#: Set on a normalization layer that a LayerFreezer put in eval mode.
_EVAL_MARK = "_layer_freezer_eval"


class LayerFreezer(StateKeyOnce):
    """Freeze modules before training and unfreeze them at chosen epochs.

    Args:
        freeze: a regex, or a list of them, selecting the modules to freeze by name (the library's selection rule:
            ``re.fullmatch`` on the dotted name in ``pl_module.named_modules()``, whole or with exactly its first
            component dropped, so ``"hidden[1-3]"`` selects ``net.hidden1`` ... ``net.hidden3``). A selected module
            is frozen with all its submodules: ``requires_grad=False`` and ``grad=None`` on its parameters.
        unfreeze: ``{epoch: pattern}``: at the start of (0-based) ``epoch``, unfreeze the frozen modules selected
            by ``pattern`` (a regex or a list of them), e.g. top-down ``{2: "hidden3", 4: "hidden2"}``. Each
            milestone must unfreeze something that is still frozen at that point.
        bn: ``"eval"`` keeps frozen normalization layers (batch norm and others with running statistics) in eval
            mode, so their running statistics never change; ``"train"`` lets them follow the model's mode (their
            affine parameters stay frozen, their statistics keep updating).
        unfrozen_lr: the learning rate each new param group starts with (discriminative rates). From then on the
            attached schedulers move it in proportion to the first group: the new group's scheduler entries
            (``base_lrs``, ``initial_lr``, ``min_lrs``, ``max_lrs``, ...) are the first group's times
            ``unfrozen_lr / lr_0``, ``lr_0`` being the first group's current lr. ``None`` (default): start at
            ``lr_0`` and follow the first group exactly. (When ``lr_0`` is 0, e.g. at the start of a warm-up,
            the ratio is taken to the first group's ``initial_lr``, or its lr at fit start.) Schedulers that
            cannot keep a ratio (``CosineAnnealingLR`` with ``eta_min != 0``, absolute ``piecewise_constant``)
            are refused at fit start when ``unfrozen_lr`` is set.

    Unfrozen parameters that are not in any optimizer yet are added to the first optimizer
    (``trainer.optimizers[0]``) as a param group named ``"unfrozen-epoch{N}"``; its other hyper-parameters come
    from the optimizer's defaults (its constructor arguments). Unfrozen parameters that the optimizer already holds
    (a ``configure_optimizers`` that passes all ``self.parameters()``) simply start receiving gradients; frozen
    ones have ``grad=None``, which every ``torch.optim`` optimizer skips, weight decay included.

    Freezing happens right after ``LightningModule.configure_model`` (in ``setup`` when the module does not
    override it), so layers created there are selected like those created in ``__init__``; that is before the
    strategy wraps the model and before ``configure_optimizers``, so a ``configure_optimizers`` that keeps only
    ``requires_grad`` parameters leaves the frozen ones out and DDP registers only the trainable ones (no
    ``find_unused_parameters=True``). Lightning has no callback hook at that point: ``setup`` wraps the module's
    ``configure_model`` on the instance for that one call (``is_overridden`` still sees the user's method). Frozen batch norm is put back in eval
    mode before every training batch, so validation (or user code calling ``.train()``) cannot release it.
    Parameters are compared by identity, never by value. Every LR scheduler attached to the optimizer is
    extended for a new group (``base_lrs``/``lr_lambdas``, ``ReduceLROnPlateau``'s ``min_lrs``, ``CyclicLR``'s
    ``max_lrs`` and momenta, ``OneCycleLR``'s per-group keys, the children of ``SequentialLR`` and
    ``ChainedScheduler``).

    Each fit starts from the ``freeze`` patterns: the pattern defines the frozen set of the network it is given.
    Parameters that an earlier LayerFreezer froze (a mark on their module records it, so it survives a new
    LayerFreezer, a new LightningModule around the same network, ``copy.deepcopy`` and pickling) and that the
    patterns no longer select are unfrozen at setup, and the normalization layers it put in eval mode follow the
    model's mode again; the log names them. Parameters frozen by anything else (``requires_grad_(False)`` in user
    code) are never taken over: they stay frozen, even at an ``unfreeze`` milestone that selects their module, and
    a warning names them. Reusing the same LayerFreezer for a new fit starts its schedule again.

    Resume: the checkpoint stores which modules are frozen and which milestones were applied (by name); the
    model is frozen as at the start of the original run, then the milestones are replayed in ``on_fit_start``,
    before Lightning restores the optimizer and scheduler states, which find the param groups they were saved
    with. A milestone that falls due while Lightning skips ``on_train_epoch_start`` (a resume from a checkpoint
    written at the last batch of the epoch before it) is applied in ``on_train_start``, before the first batch.
    Under DDP, whose reducer cannot register parameters unfrozen after the wrap, this callback averages their
    gradients itself after backward (only on the micro-batches where DDP synchronizes).

    Supported strategies with an ``unfreeze`` schedule: single device and DDP (``"ddp"``, ``"ddp_spawn"``, ...).
    FSDP (``FSDPStrategy``, which Lightning 2.6 runs on GPUs only) takes a ``freeze`` without ``unfreeze``: create
    the layers in ``configure_model`` and the frozen parameters have ``requires_grad=False`` when FSDP wraps
    them (Lightning's default ``use_orig_params=True`` lets frozen and trainable parameters share a flat
    parameter); they get no gradient and never change. ``bench/fsdp_check.py`` (run by ``bench/gpu_check.sh``)
    checks this on one GPU.

    Raises:
        TypeError: ``freeze``/``unfreeze`` of the wrong type, ``unfreeze`` keys that are not integers.
        ValueError: invalid regexes, negative epochs, ``bn`` not in ``{"eval", "train"}``, ``unfrozen_lr <= 0``;
            in ``setup``: patterns selecting no module (the message lists the available ones), a milestone that
            unfreezes nothing frozen, an unsupported strategy; at fit start: ``unfrozen_lr`` with a scheduler
            that cannot keep the new group in proportion.

    Example:
        >>> import torch, pytorch_lightning as pl
        >>> from torch import nn
        >>> class Net(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.hidden1, self.output = nn.Linear(4, 8), nn.Linear(8, 2)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.output(self.hidden1(batch[0]).relu()).logsumexp(1).mean()
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)
        >>> data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
        >>> freezer = LayerFreezer("hidden1", unfreeze={1: "hidden1"}, unfrozen_lr=0.01)
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[freezer], logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Net(), data)
        >>> [(g.get("name"), g["lr"]) for g in trainer.optimizers[0].param_groups]
        [(None, 0.1), ('unfrozen-epoch1', 0.01)]
    """

    def __init__(
        self,
        freeze: Patterns,
        *,
        unfreeze: Mapping[int, Patterns] | None = None,
        bn: BNMode = "eval",
        unfrozen_lr: float | None = None,
    ) -> None:
        super().__init__()
        self._freeze: list[re.Pattern[str]] = compile_patterns("freeze", freeze)
        # When set (freeze_all_but_head), every module outside these head modules is frozen instead of `_freeze`.
        self._head: list[re.Pattern[str]] | None = None
        # epoch -> patterns; None means "everything still frozen" (freeze_all_but_head).
        self._schedule: dict[int, list[re.Pattern[str]] | None] = _check_schedule(unfreeze)
        self.bn: BNMode = check_choice("bn", bn, ("eval", "train"))  # type: ignore[assignment]
        self.unfrozen_lr: float | None = (
            None
            if unfrozen_lr is None
            else check_number("unfrozen_lr", unfrozen_lr, low=0.0, low_inclusive=False)
        )
        # Run-time state.
        self._module: pl.LightningModule | None = None
        self._frozen: set[str] = set()  # names of the modules currently frozen (descendants included)
        self._applied: list[dict[str, Any]] = []  # milestones applied so far, in order (see state_dict)
        self._frozen_norms: list[nn.Module] = []
        self._foreign: set[int] = set()  # ids of parameters frozen before the fit by others: never touched
        self._next_milestone: int | None = None  # the earliest milestone not applied yet
        self._pending_state: dict[str, Any] | None = None  # loaded before `setup`: applied there
        self._unsynced = UnsyncedGradients()  # parameters we unfroze that DDP does not sync
        self._base_lr0: Any = None  # the first group's lr at fit start (a float or a tensor)
        self._initial: AfterConfigureModel | None = None  # the initial freeze, until `configure_model` ran

    @classmethod
    def freeze_all_but_head(
        cls,
        head: Patterns = "output",
        epochs: int | None = None,
        *,
        bn: BNMode = "eval",
        unfrozen_lr: float | None = None,
    ) -> LayerFreezer:
        """Freeze every module except the head, then (optionally) unfreeze everything after ``epochs`` epochs.

        fastai's ``fine_tune(epochs)``: train only the new head first, then the whole network. Every module that
        is neither a ``head`` module, inside one, nor an ancestor of one (the container holding the head) is frozen.

        Args:
            head: regex (or list) selecting the head modules, e.g. ``"output"`` for an ``MLP``.
            epochs: train the head alone for this many epochs, then unfreeze all; ``None`` keeps the rest frozen.
            bn: as in :class:`LayerFreezer`.
            unfrozen_lr: as in :class:`LayerFreezer`.

        Returns:
            A configured :class:`LayerFreezer`.

        Example:
            >>> freezer = LayerFreezer.freeze_all_but_head("output", epochs=2)
            >>> freezer.state_key
            "LayerFreezer{'freeze': 'all but output', 'unfreeze': {2: 'all'}}"
        """
        head_patterns = compile_patterns("head", head)
        if epochs is not None:
            check_int("epochs", epochs, low=1)
        inst = cls(head_patterns, bn=bn, unfrozen_lr=unfrozen_lr)
        inst._head, inst._freeze = inst._freeze, []
        inst._schedule = {} if epochs is None else {epochs: None}
        return inst

    # ----------------------------------------------------------------------------------------------- state --
    @override
    def state_key_fields(self) -> dict[str, Any]:
        """The arguments in the checkpoint key: the ``freeze`` patterns and the ``unfreeze`` schedule."""
        if self._head is not None:
            freeze = "all but " + "|".join(p.pattern for p in self._head)
        else:
            freeze = "|".join(p.pattern for p in self._freeze)
        unfreeze = {
            e: "all" if p is None else "|".join(x.pattern for x in p) for e, p in self._schedule.items()
        }
        return {"freeze": freeze, "unfreeze": unfreeze}

    @override
    def state_dict(self) -> dict[str, Any]:
        """Return what is frozen and what was unfrozen, by name.

        ``frozen``: the module names frozen now; ``unfrozen``: the applied milestones, each with the module names it
        unfroze, the parameter names of the param group it added (empty when none) and that group's name.
        """
        return {
            "frozen": sorted(self._frozen),
            "unfrozen": [
                {
                    "epoch": rec["epoch"],
                    "modules": list(rec["modules"]),
                    "group": list(rec["group"]),
                    "group_name": rec["group_name"],
                }
                for rec in self._applied
            ],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        applied = [dict(rec) for rec in state_dict.get("unfrozen", [])]
        initial = set(state_dict.get("frozen", [])) | {m for rec in applied for m in rec.get("modules", [])}
        if self._module is None:  # not set up yet: `setup` applies it
            self._pending_state = dict(state_dict)
            return
        self._applied = applied
        # Lightning restores callbacks after `setup` and before the DDP wrap and `configure_optimizers`: freeze
        # exactly what was frozen at the start of the original run; `on_fit_start` replays the milestones.
        module = self._module
        owners = _owner_map(module)
        now_frozen: list[nn.Parameter] = []
        now_trainable: list[nn.Parameter] = []
        for _, param in self._own(module, self._frozen | initial):
            frozen = any(o in initial for o in owners[id(param)])
            param.requires_grad_(not frozen)
            (now_frozen if frozen else now_trainable).append(param)
            if frozen:
                param.grad = None
        _mark_frozen(module, now_frozen, True)
        _mark_frozen(module, now_trainable, False)
        self._frozen = initial & {n for n, _ in module.named_modules()}
        self._release_norms(module)
        self._refresh_norms()
        self._sync_next_milestone()

    # ----------------------------------------------------------------------------------------------- hooks --
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._module = None  # set when the initial freeze runs; a checkpoint loaded before that waits for it
        self._applied = []  # a new fit starts the schedule again; a resume restores it in `load_state_dict`
        strategy = trainer.strategy
        supported = isinstance(strategy, SingleDeviceStrategy | DDPStrategy)
        if self._schedule and (not supported or isinstance(strategy, DeepSpeedStrategy)):
            raise ValueError(
                f"`LayerFreezer(unfreeze=...)` supports single-device and DDP strategies, got "
                f"{type(strategy).__name__}: parameters unfrozen after the model is wrapped are not "
                "trained correctly there. Freeze without `unfreeze`, or use strategy='ddp'."
            )
        # Layers created in `configure_model` exist only after it, and the strategy wraps the model right after it.
        self._initial = after_configure_model(pl_module, partial(self._freeze_initial, pl_module))

    def _freeze_initial(self, pl_module: pl.LightningModule) -> None:
        """Select and freeze the ``freeze`` modules, once the LightningModule's layers exist (see ``setup``)."""
        self._module = pl_module
        self._frozen = self._initial_frozen(pl_module)
        params = _owned_parameters(pl_module, self._frozen)
        if not params and not any(
            isinstance(m, _NormBase) for n, m in pl_module.named_modules() if n in self._frozen
        ):
            raise ValueError(
                f"`freeze` selects modules without parameters or normalization buffers: "
                f"{shorten(sorted(self._frozen), 12)}; select the layers that hold the weights."
            )
        ours = _marked_frozen(pl_module)
        self._foreign = {id(p) for p in pl_module.parameters() if not p.requires_grad} - ours
        self._validate_schedule(pl_module)
        self._release_stale(pl_module, ours - {id(p) for _, p in params})
        params = [(n, p) for n, p in params if id(p) not in self._foreign]
        for _, param in params:
            param.requires_grad_(False)
            param.grad = None
        _mark_frozen(pl_module, [p for _, p in params], True)
        self._refresh_norms()
        rank_zero_info(
            f"LayerFreezer: froze {len(params)} parameter tensors in {shorten(self._top(self._frozen), 12)}"
        )
        self._warn_foreign(pl_module)
        self._sync_next_milestone()
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_state_dict(state)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The strategy has wrapped the model and built the optimizers; optimizer/scheduler states are restored next.
        if self._initial is not None and not self._initial.done:  # `configure_model` replaced after `setup`
            self._initial.run()
            rank_zero_warn(
                "LayerFreezer froze its modules only at fit start, after the strategy wrapped the model: the "
                "LightningModule's `configure_model` was replaced after the callbacks' `setup`. Under DDP this "
                "needs `find_unused_parameters=True`; define `configure_model` as a method instead."
            )
        self._unsynced.attach(trainer.strategy.model, pl_module)
        if trainer.optimizers:
            group0 = trainer.optimizers[0].param_groups[0]
            self._base_lr0 = group0.get("initial_lr", group0["lr"])
            if self._schedule and self.unfrozen_lr is not None:
                for config in trainer.lr_scheduler_configs:
                    if config.scheduler.optimizer is trainer.optimizers[0]:
                        _check_scheduler(config.scheduler)
        # Replay the milestones the checkpoint applied so the optimizer has the param groups its state expects.
        for rec in self._applied:
            self._unfreeze(pl_module, [m for m in rec["modules"] if m in self._frozen])
            if rec["group"]:
                self._restore_group(trainer, pl_module, rec)
        self._refresh_unsynced(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a resume from the last batch of an epoch, Lightning starts the next epoch without calling
        # `on_train_epoch_start`: a milestone due then is applied here, before the first batch.
        self._apply_due_milestones(trainer, pl_module)
        self._apply_norm_mode()

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply_due_milestones(trainer, pl_module)
        self._apply_norm_mode()

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # A restart path that skips the epoch-start hook must still not train a batch before a due milestone.
        if self._next_milestone is not None and self._next_milestone <= trainer.current_epoch:
            self._apply_due_milestones(trainer, pl_module)
        # Validation (or user code) may have called `.train()` on the model since the last batch.
        self._apply_norm_mode()

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unsynced.after_backward(trainer.strategy.model)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # drop the references to the model; the state (names) stays for `state_dict`
            if self._initial is not None:
                self._initial.detach()  # `configure_model` never ran (the fit failed before it)
            self._initial = None
            self._module = None
            self._frozen_norms = []
            self._foreign = set()

    # --------------------------------------------------------------------------------------------- helpers --
    def _initial_frozen(self, pl_module: nn.Module) -> set[str]:
        names = [n for n, _ in pl_module.named_modules() if n]
        if self._head is not None:
            heads = [n for n, _ in select_modules(pl_module, self._head, arg="head")]
            return {
                n
                for n in names
                if not any(n == h or n.startswith(h + ".") or h.startswith(n + ".") for h in heads)
            }
        chosen = [n for n, _ in select_modules(pl_module, self._freeze, arg="freeze")]
        return _with_descendants(chosen, names)

    def _select_unfreeze(self, pl_module: nn.Module, epoch: int, frozen: set[str]) -> set[str]:
        patterns = self._schedule[epoch]
        if patterns is None:
            return set(frozen)
        chosen = [n for n, _ in select_modules(pl_module, patterns, arg=f"unfreeze[{epoch}]")]
        return _with_descendants(chosen, [n for n, _ in pl_module.named_modules() if n]) & frozen

    def _validate_schedule(self, pl_module: nn.Module) -> None:
        """Simulate the schedule: every milestone must unfreeze at least one frozen parameter."""
        frozen = set(self._frozen)
        for epoch in sorted(self._schedule):
            selected = self._select_unfreeze(pl_module, epoch, frozen)
            if not self._own(pl_module, selected):
                pats = self._schedule[epoch]
                shown = "all" if pats is None else [p.pattern for p in pats]
                still = shorten(self._top(frozen), 12) if frozen else "nothing"
                foreign = [n for n, p in _owned_parameters(pl_module, selected) if id(p) in self._foreign]
                why = (
                    f" It selects only {shorten(foreign, 12)}, frozen before this fit by something other than a "
                    "LayerFreezer, which LayerFreezer never unfreezes: call `requires_grad_(True)` on them "
                    "before `fit` to train them."
                    if foreign
                    else ""
                )
                raise ValueError(
                    f"`unfreeze[{epoch}]`={shown} unfreezes no frozen parameter: it must select modules frozen "
                    f"by `freeze` and not unfrozen by an earlier milestone. Frozen at epoch {epoch}: {still}.{why}"
                )
            frozen -= selected

    def _apply_milestone(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        modules = sorted(self._select_unfreeze(pl_module, epoch, self._frozen))
        params = self._unfreeze(pl_module, modules)
        held = optimizer_param_ids(trainer.optimizers)
        new = [(n, p) for n, p in params if id(p) not in held]
        group_name = f"unfrozen-epoch{epoch}"
        if new and trainer.optimizers:
            self._add_group(trainer, [p for _, p in new], [n for n, _ in new], group_name)
        elif new:
            rank_zero_warn(
                "LayerFreezer: the trainer has no optimizer; unfrozen parameters were not added to one."
            )
            new = []
        self._applied.append(
            {
                "epoch": epoch,
                "modules": modules,
                "group": [n for n, _ in new],
                "group_name": group_name if new else None,
            }
        )
        self._sync_next_milestone()
        self._refresh_unsynced(pl_module)
        where = f" as param group {group_name!r}" if new else ""
        rank_zero_info(
            f"LayerFreezer: epoch {epoch}: unfroze {shorten(self._top(set(modules)), 12)} "
            f"({len(params)} parameter tensors, {len(new)} added to the optimizer{where})"
        )

    def _unfreeze(self, pl_module: nn.Module, modules: Iterable[str]) -> list[tuple[str, nn.Parameter]]:
        """Unfreeze ``modules``; return the parameters that became trainable (frozen by no other module)."""
        modules = set(modules)
        if not modules:
            return []
        self._frozen -= modules
        owners = _owner_map(pl_module)
        params = []
        for name, param in self._own(pl_module, modules):
            if not any(o in self._frozen for o in owners[id(param)]):
                param.requires_grad_(True)
                params.append((name, param))
        _mark_frozen(pl_module, [p for _, p in params], False)
        for name, module in pl_module.named_modules():
            if name in modules and isinstance(module, _NormBase):
                module.train(pl_module.training)
                module.__dict__.pop(_EVAL_MARK, None)
        self._refresh_norms()
        return params

    def _own(self, root: nn.Module, modules: set[str]) -> list[tuple[str, nn.Parameter]]:
        """The parameters owned by ``modules`` that LayerFreezer may freeze and unfreeze (not the foreign ones)."""
        return [(n, p) for n, p in _owned_parameters(root, modules) if id(p) not in self._foreign]

    def _release_stale(self, pl_module: nn.Module, stale: set[int]) -> None:
        """Unfreeze what an earlier LayerFreezer froze and this one does not select; restore its norms' mode."""
        params = [(n, p) for n, p in pl_module.named_parameters() if id(p) in stale]
        for _, param in params:
            param.requires_grad_(True)
        _mark_frozen(pl_module, [p for _, p in params], False)
        norms = self._release_norms(pl_module)
        said = []
        if params:
            said.append(
                f"unfroze {len(params)} parameter tensors that an earlier LayerFreezer froze and `freeze` does not "
                f"select now: {shorten([n for n, _ in params], 12)}"
            )
        if norms:
            mode = "train" if pl_module.training else "eval"
            said.append(
                f"put {len(norms)} normalization layers that it kept in eval mode back in the model's {mode} "
                f"mode: {shorten(norms, 12)}"
            )
        if said:
            rank_zero_info("LayerFreezer: " + "; ".join(said))

    def _release_norms(self, pl_module: nn.Module) -> list[str]:
        """Put the norms a LayerFreezer kept in eval mode and this one does not back in the model's mode."""
        keep = self._frozen if self.bn == "eval" else set()
        released = []
        for name, module in pl_module.named_modules():
            if module.__dict__.get(_EVAL_MARK) and name not in keep:
                module.train(pl_module.training)
                del module.__dict__[_EVAL_MARK]
                released.append(name)
        return released

    def _warn_foreign(self, pl_module: nn.Module) -> None:
        if not self._foreign:
            return
        names = [n for n, p in pl_module.named_parameters() if id(p) in self._foreign]
        rank_zero_warn(
            f"LayerFreezer: {len(names)} parameter tensors were frozen before this fit by something other than a "
            f"LayerFreezer (e.g. `requires_grad_(False)`): {shorten(names, 12)}. They stay frozen: LayerFreezer "
            "neither takes them over nor unfreezes them at a milestone. To train them, call "
            "`requires_grad_(True)` on them before `fit`; to let LayerFreezer manage them, do that too and "
            "select them with `freeze`."
        )

    def _sync_next_milestone(self) -> None:
        done = {rec["epoch"] for rec in self._applied}
        self._next_milestone = min((e for e in self._schedule if e not in done), default=None)

    def _apply_due_milestones(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = {rec["epoch"] for rec in self._applied}
        for epoch in sorted(self._schedule):
            if epoch <= trainer.current_epoch and epoch not in done:
                self._apply_milestone(trainer, pl_module, epoch)

    def _restore_group(self, trainer: pl.Trainer, pl_module: nn.Module, rec: dict[str, Any]) -> None:
        """Add back the param group a milestone applied before the checkpoint was saved."""
        by_name = dict(pl_module.named_parameters())
        missing = [n for n in rec["group"] if n not in by_name]
        if missing:
            raise RuntimeError(
                f"LayerFreezer cannot restore param group {rec['group_name']!r}: the model has no "
                f"parameters {shorten(missing, 12)}."
            )
        params = [by_name[n] for n in rec["group"]]
        held = optimizer_param_ids(trainer.optimizers)
        if any(id(p) in held for p in params):
            raise RuntimeError(
                f"LayerFreezer cannot restore param group {rec['group_name']!r}: `configure_optimizers` "
                "already put some of its parameters in the optimizer, unlike the run that saved the "
                "checkpoint; the optimizer state would not match."
            )
        self._add_group(trainer, params, rec["group"], rec["group_name"])

    def _add_group(
        self, trainer: pl.Trainer, params: list[nn.Parameter], names: list[str], group_name: str
    ) -> None:
        optimizer = trainer.optimizers[0]
        add_param_group(
            optimizer,
            params,
            name=group_name,
            lr=self.unfrozen_lr,
            schedulers=[config.scheduler for config in trainer.lr_scheduler_configs],
            param_names=names,
            fallback_lr=self._base_lr0,
        )

    def _refresh_norms(self) -> None:
        module = self._module
        if module is None:
            return
        self._frozen_norms = [
            m for n, m in module.named_modules() if n in self._frozen and isinstance(m, _NormBase)
        ]

    def _refresh_unsynced(self, pl_module: nn.Module) -> None:
        unfrozen = {m for rec in self._applied for m in rec["modules"]}
        self._unsynced.track(p for _, p in _owned_parameters(pl_module, unfrozen))

    def _apply_norm_mode(self) -> None:
        if self.bn == "eval":
            for module in self._frozen_norms:
                if module.training:
                    module.train(False)
                    module.__dict__[_EVAL_MARK] = True  # so that a later fit can put it back

    def _top(self, names: set[str]) -> list[str]:
        """The outermost names of a set closed under descendants (for messages)."""
        return sorted(n for n in names if not any(n.startswith(o + ".") for o in names))


def _mark_frozen(root: nn.Module, params: Iterable[nn.Parameter], frozen: bool) -> None:
    """Record (or erase) on their modules that a LayerFreezer froze ``params``: local names in ``_FROZEN_MARK``."""
    ids = {id(p) for p in params}
    if not ids:
        return
    for module in root.modules():
        local = {n for n, p in module.named_parameters(recurse=False) if id(p) in ids}
        if not local:
            continue
        names = set(module.__dict__.get(_FROZEN_MARK, ()))
        names = names | local if frozen else names - local
        if names:
            module.__dict__[_FROZEN_MARK] = frozenset(names)
        else:
            module.__dict__.pop(_FROZEN_MARK, None)


def _marked_frozen(root: nn.Module) -> set[int]:
    """``id()`` of the parameters of ``root`` that a LayerFreezer froze and that are still frozen."""
    ids = set()
    for module in root.modules():
        names = module.__dict__.get(_FROZEN_MARK)
        if names:
            ids |= {
                id(p) for n, p in module.named_parameters(recurse=False) if n in names and not p.requires_grad
            }
    return ids


def _check_schedule(unfreeze: Mapping[int, Patterns] | None) -> dict[int, list[re.Pattern[str]] | None]:
    if unfreeze is None:
        return {}
    if not isinstance(unfreeze, Mapping):
        raise TypeError(
            f"`unfreeze` must be a dict {{epoch: pattern}}, got {type(unfreeze).__name__} {unfreeze!r}"
        )
    schedule: dict[int, list[re.Pattern[str]] | None] = {}
    for epoch, patterns in unfreeze.items():
        check_int(f"unfreeze key {epoch!r}", epoch, low=0)
        schedule[epoch] = compile_patterns(f"unfreeze[{epoch}]", patterns)
    return schedule


def _with_descendants(chosen: Sequence[str], names: Sequence[str]) -> set[str]:
    prefixes = tuple(c + "." for c in chosen)
    return set(chosen) | {n for n in names if n.startswith(prefixes)}


def _owned_parameters(root: nn.Module, modules: set[str]) -> list[tuple[str, nn.Parameter]]:
    """Parameters (deduplicated, ``named_parameters`` order) directly owned by one of the named ``modules``."""
    if not modules:
        return []
    ids = {id(p) for n, m in root.named_modules() if n in modules for p in m.parameters(recurse=False)}
    return [(n, p) for n, p in root.named_parameters() if id(p) in ids]


def _owner_map(root: nn.Module) -> dict[int, list[str]]:
    """``id(parameter)`` -> names of the modules that hold it directly (several when weights are tied)."""
    owners: dict[int, list[str]] = {}
    for name, module in root.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    return owners


def _check_scheduler(scheduler: Any) -> None:
    try:
        check_proportional(scheduler)
    except ValueError as err:
        raise ValueError(f"`unfrozen_lr`: {err}") from None
