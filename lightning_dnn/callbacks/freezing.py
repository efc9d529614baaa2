"""LayerFreezer: freeze layers before training and unfreeze them on a schedule (progressive unfreezing).

The param-group and scheduler surgery lives in ``_param_groups.py``, the DDP gradient averaging in
``_ddp_sync.py``; this module holds the freeze/unfreeze schedule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from typing_extensions import override

from lightning_dnn._checks import check_choice, check_int, check_number
from lightning_dnn._selection import Patterns, compile_patterns, select_modules, shorten
from lightning_dnn.callbacks._ddp_sync import UnsyncedGradients
from lightning_dnn.callbacks._param_groups import add_param_group, check_proportional, optimizer_param_ids
from lightning_dnn.callbacks._state_key import StateKeyOnce

__all__ = ["LayerFreezer"]

BNMode = Literal["eval", "train"]


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

    Freezing happens in ``setup``, before the strategy wraps the model and before ``configure_optimizers``, so
    a ``configure_optimizers`` that keeps only ``requires_grad`` parameters leaves the frozen ones out and DDP
    registers only the trainable ones (no ``find_unused_parameters=True``). Frozen batch norm is put back in eval
    mode before every training batch, so validation (or user code calling ``.train()``) cannot release it.
    Parameters are compared by identity, never by value. Every LR scheduler attached to the optimizer is
    extended for a new group (``base_lrs``/``lr_lambdas``, ``ReduceLROnPlateau``'s ``min_lrs``, ``CyclicLR``'s
    ``max_lrs`` and momenta, ``OneCycleLR``'s per-group keys, the children of ``SequentialLR`` and
    ``ChainedScheduler``).

    Resume: the checkpoint stores which modules are frozen and which milestones were applied (by name); the
    model is frozen as at the start of the original run, then the milestones are replayed in ``on_fit_start``,
    before Lightning restores the optimizer and scheduler states, which find the param groups they were saved
    with. Under DDP, whose reducer cannot register parameters unfrozen after the wrap, this callback averages
    their gradients itself after backward (only on the micro-batches where DDP synchronizes).

    Supported strategies with an ``unfreeze`` schedule: single device and DDP (``"ddp"``, ``"ddp_spawn"``, ...).
    Modules created in ``LightningModule.configure_model`` do not exist yet in ``setup`` and cannot be selected.

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
        self._unsynced = UnsyncedGradients()  # parameters we unfroze that DDP does not sync
        self._base_lr0: Any = None  # the first group's lr at fit start (a float or a tensor)

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
        self._applied = applied
        if self._module is None:  # not set up yet: `setup` freezes, `on_fit_start` replays
            self._frozen = initial
            return
        # Lightning restores callbacks after `setup` and before the DDP wrap and `configure_optimizers`: freeze
        # exactly what was frozen at the start of the original run; `on_fit_start` replays the milestones.
        module = self._module
        owners = _owner_map(module)
        for _, param in _owned_parameters(module, self._frozen | initial):
            frozen = any(o in initial for o in owners[id(param)])
            param.requires_grad_(not frozen)
            if frozen:
                param.grad = None
        self._frozen = initial & {n for n, _ in module.named_modules()}
        self._refresh_norms()

    # ----------------------------------------------------------------------------------------------- hooks --
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
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
        self._validate_schedule(pl_module)
        strategy = trainer.strategy
        supported = isinstance(strategy, SingleDeviceStrategy | DDPStrategy)
        if self._schedule and (not supported or isinstance(strategy, DeepSpeedStrategy)):
            raise ValueError(
                f"`LayerFreezer(unfreeze=...)` supports single-device and DDP strategies, got "
                f"{type(strategy).__name__}: parameters unfrozen after the model is wrapped are not "
                "trained correctly there. Freeze without `unfreeze`, or use strategy='ddp'."
            )
        for _, param in params:
            param.requires_grad_(False)
            param.grad = None
        self._refresh_norms()
        rank_zero_info(
            f"LayerFreezer: froze {len(params)} parameter tensors in {shorten(self._top(self._frozen), 12)}"
        )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The strategy has wrapped the model and built the optimizers; optimizer/scheduler states are restored next.
        self._unsynced.attach(trainer.strategy.model, pl_module)
        if trainer.optimizers:
            group0 = trainer.optimizers[0].param_groups[0]
            self._base_lr0 = group0.get("initial_lr", group0["lr"])
            if self._schedule and self.unfrozen_lr is not None:
                for config in trainer.lr_scheduler_configs:
                    if config.scheduler.optimizer is trainer.optimizers[0]:
                        _check_scheduler(config.scheduler)
        # Replay the milestones applied before (resume, or a second `fit` with this callback) so the optimizer has
        # the param groups its saved state expects.
        for rec in self._applied:
            self._unfreeze(pl_module, [m for m in rec["modules"] if m in self._frozen])
            if rec["group"]:
                self._restore_group(trainer, pl_module, rec)
        self._refresh_unsynced(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply_norm_mode()

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = {rec["epoch"] for rec in self._applied}
        for epoch in sorted(self._schedule):
            if epoch <= trainer.current_epoch and epoch not in done:
                self._apply_milestone(trainer, pl_module, epoch)
        self._apply_norm_mode()

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Validation (or user code) may have called `.train()` on the model since the last batch.
        self._apply_norm_mode()

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unsynced.after_backward(trainer.strategy.model)

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
            if not _owned_parameters(pl_module, selected):
                pats = self._schedule[epoch]
                shown = "all" if pats is None else [p.pattern for p in pats]
                still = shorten(self._top(frozen), 12) if frozen else "nothing"
                raise ValueError(
                    f"`unfreeze[{epoch}]`={shown} unfreezes no frozen parameter: it must select modules frozen "
                    f"by `freeze` and not unfrozen by an earlier milestone. Frozen at epoch {epoch}: {still}."
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
        for name, param in _owned_parameters(pl_module, modules):
            if not any(o in self._frozen for o in owners[id(param)]):
                param.requires_grad_(True)
                params.append((name, param))
        for name, module in pl_module.named_modules():
            if name in modules and isinstance(module, _NormBase):
                module.train(pl_module.training)
        self._refresh_norms()
        return params

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

    def _top(self, names: set[str]) -> list[str]:
        """The outermost names of a set closed under descendants (for messages)."""
        return sorted(n for n in names if not any(n.startswith(o + ".") for o in names))


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
