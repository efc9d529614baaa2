"""LayerFreezer: freeze layers before training and unfreeze them in steps (progressive unfreezing).

The schedule's forms live in ``_freeze_schedule.py``, the metric-driven advances in ``_phases.py``, the param-group
and scheduler surgery in ``_param_groups.py`` (the groups a step adds: ``_freeze_groups.py``), the frozen set in
``_frozen_set.py``, the DDP gradient averaging in ``_ddp_sync.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from torch import nn
from typing_extensions import override

from lightning_dnn._checks import check_bool, check_choice, check_int, check_number
from lightning_dnn._lightning import is_strategy, rank_zero_info, rank_zero_warn
from lightning_dnn._selection import Patterns, compile_patterns, select_modules, shorten
from lightning_dnn._state_key import StateKeyOnce
from lightning_dnn.callbacks._configure_model import AfterConfigureModel, after_configure_model
from lightning_dnn.callbacks._ddp_sync import UnsyncedGradients
from lightning_dnn.callbacks._freeze_groups import (
    GroupOptions,
    add_step_groups,
    check_schedulers,
    restore_group,
    scheduler_starts,
    step_lr,
    step_record,
    user_buckets,
)
from lightning_dnn.callbacks._freeze_schedule import (
    Milestones,
    PlannedStep,
    StepSpec,
    outermost,
    parse_unfreeze,
    plan_steps,
    planned_steps,
    resolve_auto,
    schedule_label,
    select_step,
)
from lightning_dnn.callbacks._frozen_set import (
    check_freezes_something,
    freeze_params,
    frozen_norms,
    head_frozen_set,
    hold_eval,
    marked_frozen,
    owned_parameters,
    refreeze,
    release_norms,
    release_stale,
    unfreeze_owned,
    warn_foreign,
    with_descendants,
)
from lightning_dnn.callbacks._param_groups import restart_scheduler
from lightning_dnn.callbacks._phases import MetricPhases, metric_phases
from lightning_dnn.callbacks._user_groups import Bucket

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["LayerFreezer", "PlannedStep"]

BNMode = Literal["eval", "train"]


class LayerFreezer(StateKeyOnce):
    """Freeze modules before training and unfreeze them in steps: at chosen epochs, or on a metric plateau.

    Args:
        freeze: a regex, or a list of them, selecting the modules to freeze by name (the library's selection rule:
            ``re.fullmatch`` on the dotted name in ``pl_module.named_modules()``, whole or with exactly its first
            component dropped, so ``"hidden[1-3]"`` selects ``net.hidden1`` ... ``net.hidden3``). A selected module
            is frozen with all its submodules: ``requires_grad=False`` and ``grad=None`` on its parameters.
        unfreeze: the unfreeze steps, top-down, each unfreezing the frozen modules its pattern (a regex or a list
            of them) selects. ``{epoch: pattern}`` runs each step at the start of that (0-based) epoch, e.g.
            ``{2: "hidden3", 4: "hidden2"}``; ``{epoch: (pattern, lr)}`` gives a step its own learning rate. A list
            of steps is the ordered form: plain patterns with ``milestones="metric"``, or dicts ``{"pattern": ...,
            "epoch": ..., "lr": ...}`` (the form a LightningCLI YAML writes; ``"epoch"`` only with
            ``milestones="epoch"``). ``"auto"``: one step per top-level block of the network (the module held as
            ``self.net``, else the LightningModule's children) that has frozen parameters, top-down; parameters
            held by the network itself (a ViT's ``cls_token``) join the lowest step; with ``milestones="epoch"``
            step ``k`` (from 1) runs at epoch ``k`` (ULMFiT's gradual unfreezing). Every step must unfreeze
            something still frozen and nothing an earlier step unfroze (:meth:`dry_run` shows the plan).
        bn: ``"eval"`` keeps frozen normalization layers (batch norm and others with running statistics) in eval
            mode, so their running statistics never change; ``"train"`` lets them follow the model's mode (their
            affine parameters stay frozen, their statistics keep updating).
        unfrozen_lr: the learning rate each new param group starts with (discriminative rates); a step's own
            ``lr`` wins. From then on the attached schedulers move it in proportion to the first group: the new
            group's scheduler entries (``base_lrs``, ``initial_lr``, ``min_lrs``, ``max_lrs``, ...) are the first
            group's times ``lr / lr_0``, ``lr_0`` being the first group's current lr. ``None`` (default): start at
            ``lr_0`` and follow the first group exactly. (When ``lr_0`` is 0, e.g. at the start of a warm-up,
            the ratio is taken to the first group's ``initial_lr``, or its lr at fit start.) Schedulers that
            cannot keep a ratio (``CosineAnnealingLR`` with ``eta_min != 0``, absolute ``piecewise_constant``)
            are refused at fit start when a step's lr can differ from ``lr_0``.
        milestones: ``"epoch"`` (steps at fixed epochs) or ``"metric"``: the next step runs when ``monitor`` has
            not improved by more than ``min_delta`` for ``patience`` validation runs in a row (at the start of the
            next training batch). Under DDP the decision is rank 0's score, broadcast, so all ranks advance
            together. After an advance the wait count starts again and the best score is kept.
        monitor: the logged metric that drives ``milestones="metric"`` (required then, refused otherwise).
        mode: ``"min"`` or ``"max"``: which direction of ``monitor`` is an improvement.
        patience: validation runs without improvement before the next step (>= 1).
        min_delta: the smallest change of ``monitor`` that counts as an improvement (>= 0).
        restore_best: with ``milestones="metric"``, keep a CPU copy of the weights (the whole ``state_dict``) at
            the best score and load it back just before advancing. The copy is also saved in this callback's
            checkpoint state, so a resumed run restores the same weights.
        layer_decay: a factor in (0, 1]: step ``k`` (``k = 1`` for the first step, the block just under the head)
            starts at ``lr * layer_decay ** k``, ``lr`` being ``unfrozen_lr`` or, without it, the first group's
            current lr (the group then keeps that factor to it). A step's own ``lr`` is taken as is.
        reset_scheduler: at every step, after the new param group is added, each scheduler attached to the
            optimizer starts over, as a fresh scheduler of the same class and arguments would: its state at fit
            start (step count 0), every group's base lr its ``initial_lr`` (the lr it started the fit with; the
            new group's: the step's lr) and every group's lr the schedule's value at step 0.

    Unfrozen parameters that are not in any optimizer yet are added to the first optimizer
    (``trainer.optimizers[0]``) as a param group named ``"unfrozen-epoch{N}"`` (``"unfrozen-step{k}"`` with
    ``milestones="metric"``); its other hyper-parameters come from the optimizer's defaults (its constructor
    arguments). Unfrozen parameters that the optimizer already holds (a ``configure_optimizers`` that passes all
    ``self.parameters()``) simply start receiving gradients; frozen ones have ``grad=None``, which every
    ``torch.optim`` optimizer skips, weight decay included.

    Param groups built by the user (e.g. timm's ``param_groups_layer_decay``, which skips frozen parameters): when
    the optimizer has several param groups, LayerFreezer calls ``configure_optimizers`` once more at fit start with
    its frozen parameters trainable (the optimizer built then is discarded) to learn which group each would have
    joined. An unfrozen parameter then joins a new group ``"unfrozen-epoch{N}/{group}"`` (``{group}``: that
    group's ``"name"`` or ``group{i}``) with that group's hyper-parameters (``weight_decay``, ``lr_scale``, ...)
    and its lr: the live group with the same settings is followed exactly (its scheduler entries are copied),
    else the first group at the lr ratio the user's groups had at fit start. A step ``lr``/``unfrozen_lr``/
    ``layer_decay`` sets the lr as above and keeps the other settings.

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
    code) are never taken over: they stay frozen, even at a step that selects their module, and a warning names
    them. Reusing the same LayerFreezer for a new fit starts its schedule again.

    Resume: the checkpoint stores which modules are frozen and which steps were applied (by name), with the
    metric state (best score, wait count, steps triggered, the best weights); the model is frozen as at the start
    of the original run, then the steps are replayed in ``on_fit_start``, before Lightning restores the optimizer
    and scheduler states, which find the param groups they were saved with. A step that falls due while Lightning
    skips ``on_train_epoch_start`` (a resume from a checkpoint written at the last batch of the epoch before it) is
    applied in ``on_train_start``, before the first batch. Under DDP, whose reducer cannot register parameters
    unfrozen after the wrap, this callback averages their gradients itself after backward (only on the
    micro-batches where DDP synchronizes).

    Supported strategies with an ``unfreeze`` schedule: single device and DDP (``"ddp"``, ``"ddp_spawn"``, ...).
    FSDP (``FSDPStrategy``, which Lightning 2.6 runs on GPUs only) takes a ``freeze`` without ``unfreeze``: create
    the layers in ``configure_model`` and the frozen parameters have ``requires_grad=False`` when FSDP wraps
    them (Lightning's default ``use_orig_params=True`` lets frozen and trainable parameters share a flat
    parameter); they get no gradient and never change. ``bench/fsdp_check.py`` (run by ``bench/gpu_check.sh``)
    checks this on one GPU.

    Raises:
        TypeError: ``freeze``/``unfreeze`` of the wrong type, epochs that are not integers.
        ValueError: invalid regexes, negative epochs, ``bn``/``milestones``/``mode`` not among their choices,
            a non-positive lr, ``layer_decay`` outside (0, 1], ``monitor``/``restore_best`` without
            ``milestones="metric"``; in ``setup``: patterns selecting no module (the message lists the available
            ones), a step that unfreezes nothing frozen or something an earlier step unfroze, an unsupported
            strategy; at fit start: a step lr with a scheduler that cannot keep the new group in proportion.
        RuntimeError: with ``milestones="metric"``, when ``monitor`` is not among the logged metrics at a check.

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
        >>> [(s.trigger, s.modules, s.lr) for s in freezer.dry_run(Net())]
        [(1, ('hidden1',), 0.01)]
    """

    def __init__(
        self,
        freeze: Patterns,
        *,
        unfreeze: Mapping[int, Any] | Sequence[Any] | str | None = None,
        bn: BNMode = "eval",
        unfrozen_lr: float | None = None,
        milestones: Milestones = "epoch",
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        patience: int = 2,
        min_delta: float = 0.0,
        restore_best: bool = False,
        layer_decay: float | None = None,
        reset_scheduler: bool = False,
    ) -> None:
        super().__init__()
        self._freeze: list[re.Pattern[str]] = compile_patterns("freeze", freeze)
        # When set (freeze_all_but_head), every module outside these head modules is frozen instead of `_freeze`.
        self._head: list[re.Pattern[str]] | None = None
        self.milestones: Milestones = check_choice("milestones", milestones, ("epoch", "metric"))  # type: ignore[assignment]
        self._spec: list[StepSpec] | Literal["auto"] = parse_unfreeze(unfreeze, self.milestones)
        self.bn: BNMode = check_choice("bn", bn, ("eval", "train"))  # type: ignore[assignment]
        self.unfrozen_lr: float | None = (
            None
            if unfrozen_lr is None
            else check_number("unfrozen_lr", unfrozen_lr, low=0.0, low_inclusive=False)
        )
        self.layer_decay: float | None = (
            None
            if layer_decay is None
            else check_number("layer_decay", layer_decay, low=0.0, high=1.0, low_inclusive=False)
        )
        self.reset_scheduler = check_bool("reset_scheduler", reset_scheduler)
        self._phases: MetricPhases | None = metric_phases(
            self.milestones, monitor, mode, patience, min_delta, restore_best
        )
        # Run-time state.
        self._steps: list[StepSpec] = [] if self._spec == "auto" else list(self._spec)
        self._module: pl.LightningModule | None = None
        self._frozen: set[str] = set()  # names of the modules currently frozen (descendants included)
        self._applied: list[dict[str, Any]] = []  # steps applied so far, in order (see state_dict)
        self._triggered = 0  # milestones="metric": the steps decided so far
        self._checks = 0  # milestones="metric": validation runs seen in this fit
        self._frozen_norms: list[nn.Module] = []
        self._foreign: set[int] = set()  # ids of parameters frozen before the fit by others: never touched
        self._pending_state: dict[str, Any] | None = None  # loaded before `setup`: applied there
        self._unsynced = UnsyncedGradients()  # parameters we unfroze that DDP does not sync
        self._base_lrs: list[Any] = []  # every group's lr at fit start (a float or a tensor)
        self._buckets: dict[int, Bucket] = {}  # id(parameter) -> where it goes (user param groups)
        self._scheduler_starts: list[tuple[Any, dict[str, Any]]] = []  # reset_scheduler: states at fit start
        self._initial: AfterConfigureModel | None = None  # the initial freeze, until `configure_model` ran

    @classmethod
    def freeze_all_but_head(
        cls,
        head: Patterns = "output",
        epochs: int | None = None,
        *,
        bn: BNMode = "eval",
        unfrozen_lr: float | None = None,
        **kwargs: Any,
    ) -> LayerFreezer:
        """Freeze every module except the head, then (optionally) unfreeze everything after ``epochs`` epochs.

        fastai's ``fine_tune(epochs)``: train only the new head first, then the whole network. Every module that
        is neither a ``head`` module nor inside one is frozen; an ancestor of the head (the container holding
        it) keeps its submodules apart, but the parameters it holds itself (a ViT's ``cls_token`` and
        ``pos_embed``) are frozen too.

        Args:
            head: regex (or list) selecting the head modules, e.g. ``"output"`` for an ``MLP``.
            epochs: train the head alone for this many epochs, then unfreeze all; ``None`` keeps the rest frozen
                (or follows ``unfreeze`` in ``kwargs``, e.g. ``unfreeze="auto", milestones="metric"``).
            bn: as in :class:`LayerFreezer`.
            unfrozen_lr: as in :class:`LayerFreezer`.
            **kwargs: the other keyword arguments of :class:`LayerFreezer`.

        Returns:
            A configured :class:`LayerFreezer`.

        Raises:
            ValueError: ``epochs`` together with ``unfreeze``.

        Example:
            >>> freezer = LayerFreezer.freeze_all_but_head("output", epochs=2)
            >>> freezer.state_key
            "LayerFreezer{'freeze': 'all but output', 'unfreeze': {2: 'all'}}"
        """
        head_patterns = compile_patterns("head", head)
        if epochs is not None:
            check_int("epochs", epochs, low=1)
            if kwargs.get("unfreeze") is not None:
                raise ValueError(
                    f"give `epochs` ({epochs}) or `unfreeze` ({kwargs['unfreeze']!r}), not both: `epochs` "
                    "unfreezes everything at once"
                )
        inst = cls(head_patterns, bn=bn, unfrozen_lr=unfrozen_lr, **kwargs)
        inst._head, inst._freeze = inst._freeze, []
        if epochs is not None:
            inst._spec = [StepSpec(patterns=None, epoch=epochs)]
            inst._steps = list(inst._spec)
        return inst

    # -------------------------------------------------------------------------------------------- dry run --
    def initially_frozen(self, pl_module: nn.Module) -> list[str]:
        """The modules whose own tensors this freezer freezes when a fit starts on ``pl_module``; changes nothing.

        Args:
            pl_module: the LightningModule (or any module) the freezer will be used with, its layers built.

        Returns:
            Every such module's name, sorted: a selected module and all its submodules, and for
            :meth:`freeze_all_but_head` also the head's ancestors (``""`` for the root), whose directly held
            tensors (ViT's ``cls_token``) are frozen without their other children.

        Raises:
            ValueError: ``freeze`` selects no module of ``pl_module``.

        Example:
            >>> net = nn.Sequential()
            >>> for name in ("hidden1", "hidden2", "output"): net.add_module(name, nn.Linear(2, 2))
            >>> LayerFreezer("hidden[12]").initially_frozen(net)
            ['hidden1', 'hidden2']
        """
        return sorted(self._initial_frozen(pl_module))

    def dry_run(self, pl_module: nn.Module) -> list[PlannedStep]:
        """Resolve the whole schedule against ``pl_module`` without changing it, and check it.

        Args:
            pl_module: the LightningModule (or any module) the freezer will be used with, its layers built.

        Returns:
            One :class:`PlannedStep` per step, in order: its trigger, patterns, the modules and parameters it
            unfreezes and the lr its param group starts with.

        Raises:
            ValueError: the errors ``setup`` would raise: a pattern that selects no module, a step that unfreezes
                nothing still frozen, a step that selects parameters an earlier step unfroze, a ``freeze`` that
                selects no parameter.

        Example:
            >>> net = nn.Sequential()
            >>> for name in ("hidden1", "hidden2", "output"): net.add_module(name, nn.Linear(2, 2))
            >>> freezer = LayerFreezer("hidden[12]", unfreeze="auto", milestones="metric", monitor="val_loss",
            ...                        layer_decay=0.5)
            >>> [(s.index, s.trigger, s.modules, s.numel, s.lr_factor) for s in freezer.dry_run(net)]
            [(0, 'metric', ('hidden2',), 6, 0.5), (1, 'metric', ('hidden1',), 6, 0.25)]
        """
        frozen = self._initial_frozen(pl_module)
        check_freezes_something(pl_module, frozen)
        foreign = {id(p) for p in pl_module.parameters() if not p.requires_grad} - marked_frozen(pl_module)
        steps = self._resolve_steps(pl_module, frozen, foreign)
        lr_of = partial(step_lr, unfrozen_lr=self.unfrozen_lr, layer_decay=self.layer_decay)
        return planned_steps(pl_module, steps, frozen, foreign, lr_of)

    # ----------------------------------------------------------------------------------------------- state --
    @override
    def state_key_fields(self) -> dict[str, Any]:
        """The arguments in the checkpoint key: ``freeze``, the ``unfreeze`` schedule, and ``monitor``."""
        if self._head is not None:
            freeze = "all but " + "|".join(p.pattern for p in self._head)
        else:
            freeze = "|".join(p.pattern for p in self._freeze)
        fields: dict[str, Any] = {"freeze": freeze, "unfreeze": schedule_label(self._spec, self.milestones)}
        if self._phases is not None:
            fields["monitor"] = self._phases.monitor
        return fields

    @override
    def state_dict(self) -> dict[str, Any]:
        """Return what is frozen and what was unfrozen, by name, and the metric milestones' state.

        ``frozen``: the module names frozen now; ``unfrozen``: the applied steps, each with its index, the epoch
        it ran at, the module names it unfroze and the param groups it added (name and parameter names);
        ``triggered``: the steps decided so far (``milestones="metric"``); ``metric``: the best score, wait count,
        best epoch and best weights (``restore_best``), or None.
        """
        return {
            "frozen": sorted(self._frozen),
            "unfrozen": [step_record(rec, i) for i, rec in enumerate(self._applied)],
            "triggered": self._triggered,
            "metric": None if self._phases is None else self._phases.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        applied = [step_record(rec, i) for i, rec in enumerate(state_dict.get("unfrozen", []))]
        initial = set(state_dict.get("frozen", [])) | {m for rec in applied for m in rec.get("modules", [])}
        if self._module is None:  # not set up yet: `setup` applies it
            self._pending_state = dict(state_dict)
            return
        self._applied = applied
        self._triggered = int(state_dict.get("triggered", 0))
        if self._phases is not None and state_dict.get("metric") is not None:
            self._phases.load_state_dict(state_dict["metric"])
        # Lightning restores callbacks after `setup` and before the DDP wrap and `configure_optimizers`: freeze
        # exactly what was frozen at the start of the original run; `on_fit_start` replays the steps.
        module = self._module
        refreeze(module, self._own(module, self._frozen | initial), initial)
        self._frozen = initial & {n for n, _ in module.named_modules()}
        release_norms(module, self._frozen if self.bn == "eval" else set())
        self._refresh_norms()

    # ----------------------------------------------------------------------------------------------- hooks --
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._module = None  # set when the initial freeze runs; a checkpoint loaded before that waits for it
        self._applied = []  # a new fit starts the schedule again; a resume restores it in `load_state_dict`
        self._triggered = self._checks = 0
        if self._phases is not None:
            self._phases.reset()
        strategy = trainer.strategy
        supported = is_strategy(strategy, "SingleDeviceStrategy", "DDPStrategy")
        if self._spec and (not supported or is_strategy(strategy, "DeepSpeedStrategy")):
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
        check_freezes_something(pl_module, self._frozen)
        params = owned_parameters(pl_module, self._frozen)
        ours = marked_frozen(pl_module)
        self._foreign = {id(p) for p in pl_module.parameters() if not p.requires_grad} - ours
        self._steps = self._resolve_steps(pl_module, self._frozen, self._foreign)
        plan_steps(pl_module, self._steps, self._frozen, self._foreign)
        keep = self._frozen if self.bn == "eval" else set()
        release_stale(pl_module, ours - {id(p) for _, p in params}, keep)
        params = [(n, p) for n, p in params if id(p) not in self._foreign]
        freeze_params(pl_module, [p for _, p in params])
        self._refresh_norms()
        rank_zero_info(
            f"LayerFreezer: froze {len(params)} parameter tensors in {shorten(outermost(self._frozen), 12)}"
        )
        warn_foreign(pl_module, self._foreign)
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
        self._buckets, self._scheduler_starts, self._base_lrs = {}, [], []
        if trainer.optimizers and self._steps:
            groups = trainer.optimizers[0].param_groups
            self._base_lrs = [g.get("initial_lr", g["lr"]) for g in groups]
            frozen = [p for _, p in self._own(pl_module, self._frozen) if not p.requires_grad]
            self._buckets = user_buckets(pl_module, groups, frozen, self._base_lrs[0])
            check_schedulers(trainer, self._steps, self._group_options())
            if self.reset_scheduler:
                self._scheduler_starts = scheduler_starts(trainer)
        # Replay the steps the checkpoint applied so the optimizer has the param groups its state expects.
        for rec in self._applied:
            self._unfreeze(pl_module, [m for m in rec["modules"] if m in self._frozen])
            for group in rec["groups"]:
                restore_group(trainer, pl_module, self._steps, rec["step"], group, self._group_options())
        self._refresh_unsynced(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a resume from the last batch of an epoch, Lightning starts the next epoch without calling
        # `on_train_epoch_start`: a step due then is applied here, before the first batch.
        self._apply_due_steps(trainer, pl_module)
        self._apply_norm_mode()

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply_due_steps(trainer, pl_module)
        self._apply_norm_mode()

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # A metric decision (validation mid-epoch), or a restart path that skips the epoch-start hook: no batch
        # trains before a due step.
        if self._due(trainer):
            self._apply_due_steps(trainer, pl_module)
        # Validation (or user code) may have called `.train()` on the model since the last batch.
        self._apply_norm_mode()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        phases = self._phases
        if phases is None or self._module is None or trainer.sanity_checking:  # not in a fit (`validate`)
            return
        self._checks += 1
        if self._triggered >= len(self._steps):
            return
        score = phases.read(trainer)
        if not phases.check(score, pl_module, trainer.current_epoch):
            return
        restored = phases.restore_best and phases.restore(pl_module)
        self._triggered += 1
        rank_zero_info(
            f"LayerFreezer: {phases.monitor} has not improved on {phases.best:.6g} for {phases.patience} "
            f"validation runs: step {self._triggered} of {len(self._steps)} is due"
            + (f" (restored the weights of epoch {phases.best_epoch})" if restored else "")
        )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._phases is not None and self._checks == 0 and self._triggered < len(self._steps):
            rank_zero_warn(
                f"LayerFreezer(milestones='metric') saw no validation run in this fit, so {self._phases.monitor!r} "
                f"was never checked and {len(self._steps) - len(self._applied)} unfreeze steps never ran: give the "
                "fit a validation loop (val_dataloaders, limit_val_batches > 0) or use milestones='epoch'."
            )

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
            self._buckets, self._scheduler_starts = {}, []

    # ------------------------------------------------------------------------------------------- schedule --
    def _initial_frozen(self, pl_module: nn.Module) -> set[str]:
        if self._head is not None:
            return head_frozen_set(pl_module, self._head)
        chosen = [n for n, _ in select_modules(pl_module, self._freeze, arg="freeze")]
        return with_descendants(chosen, [n for n, _ in pl_module.named_modules() if n])

    def _resolve_steps(self, pl_module: nn.Module, frozen: set[str], foreign: set[int]) -> list[StepSpec]:
        if self._spec != "auto":
            return list(self._spec)
        return resolve_auto(pl_module, frozen, foreign, self.milestones)

    def _due(self, trainer: pl.Trainer) -> bool:
        index = len(self._applied)
        if index >= len(self._steps):
            return False
        epoch = self._steps[index].epoch
        return index < self._triggered if epoch is None else epoch <= trainer.current_epoch

    def _apply_due_steps(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        while self._due(trainer):
            self._apply_step(trainer, pl_module, len(self._applied))

    def _apply_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, index: int) -> None:
        modules = sorted(select_step(pl_module, index, self._steps[index], self._frozen))
        params = self._unfreeze(pl_module, modules)
        groups, added = add_step_groups(trainer, self._steps, index, params, self._group_options())
        self._applied.append(
            {"step": index, "epoch": trainer.current_epoch, "modules": modules, "groups": groups}
        )
        if self.reset_scheduler:
            for scheduler, start in self._scheduler_starts:
                restart_scheduler(scheduler, start)
        self._refresh_unsynced(pl_module)
        where = f" as param groups {[g['name'] for g in groups]}" if groups else ""
        rank_zero_info(
            f"LayerFreezer: epoch {trainer.current_epoch}: step {index + 1} unfroze "
            f"{shorten(outermost(set(modules)), 12)} ({len(params)} parameter tensors, {added} added to the "
            f"optimizer{where})"
        )

    def _group_options(self) -> GroupOptions:
        return GroupOptions(
            self.unfrozen_lr, self.layer_decay, self.reset_scheduler, self._buckets, self._base_lrs
        )

    # --------------------------------------------------------------------------------------------- helpers --
    def _unfreeze(self, pl_module: nn.Module, modules: Iterable[str]) -> list[tuple[str, nn.Parameter]]:
        """Unfreeze ``modules``; return the parameters that became trainable (frozen by no other module)."""
        modules = set(modules)
        if not modules:
            return []
        self._frozen -= modules
        params = unfreeze_owned(pl_module, self._own(pl_module, modules), self._frozen, modules)
        self._refresh_norms()
        return params

    def _own(self, root: nn.Module, modules: set[str]) -> list[tuple[str, nn.Parameter]]:
        """The parameters owned by ``modules`` that LayerFreezer may freeze and unfreeze (not the foreign ones)."""
        return [(n, p) for n, p in owned_parameters(root, modules) if id(p) not in self._foreign]

    def _refresh_norms(self) -> None:
        if self._module is not None:
            self._frozen_norms = frozen_norms(self._module, self._frozen)

    def _refresh_unsynced(self, pl_module: nn.Module) -> None:
        unfrozen = {m for rec in self._applied for m in rec["modules"]}
        self._unsynced.track(p for _, p in owned_parameters(pl_module, unfrozen))

    def _apply_norm_mode(self) -> None:
        if self.bn == "eval":
            hold_eval(self._frozen_norms)
