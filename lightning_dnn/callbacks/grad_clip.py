"""Gradient clipping by value and/or norm, per layer group, as a Lightning callback."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from typing_extensions import override

from lightning_dnn._checks import check_bool, check_number
from lightning_dnn._lightning import rank_zero_warn
from lightning_dnn._selection import Patterns, compile_patterns, select_parameters
from lightning_dnn._state_key import StateKeyOnce

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["GradientClipping"]

_SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")
_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6)


def _check_norm_type(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == math.inf:
        return math.inf
    if isinstance(value, int | float) and not isinstance(value, bool) and not math.isfinite(value):
        raise ValueError(f"`norm_type` must be > 0 or math.inf, got {value!r}")
    return check_number("norm_type", value, low=0.0, low_inclusive=False)


def _norms(grads: Sequence[Tensor], norm_type: float) -> list[Tensor]:
    """Per-tensor ``norm_type``-norms: one foreach kernel per (device, dtype) group, no host synchronisation."""
    first = grads[0]
    if all(g.device == first.device and g.dtype == first.dtype for g in grads):  # the usual case: one group
        return list(torch._foreach_norm(list(grads), norm_type))
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault((g.device, g.dtype), []).append(i)
    norms: list[Tensor] = [grads[0]] * len(grads)
    for indices in groups.values():
        for i, n in zip(indices, torch._foreach_norm([grads[i] for i in indices], norm_type), strict=True):
            norms[i] = n
    return norms


def _total(norms: Sequence[Tensor], norm_type: float) -> Tensor:
    """Combine per-tensor norms into the norm of the concatenation (as ``clip_grad_norm_`` does)."""
    device = norms[0].device
    if any(n.device != device for n in norms):
        norms = [n.to(device) for n in norms]
    return torch.linalg.vector_norm(torch.stack(list(norms)), norm_type)


def _scale_(grads: Sequence[Tensor], coefs: Sequence[Tensor] | Tensor | float) -> None:
    """``grads[i] *= coefs[i]`` (or ``*= coefs`` for one shared coefficient), foreach per (device, dtype) group."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault((g.device, g.dtype), []).append(i)
    for (device, _), indices in groups.items():
        if isinstance(coefs, float):
            torch._foreach_mul_([grads[i] for i in indices], coefs)
        elif isinstance(coefs, Tensor):
            torch._foreach_mul_([grads[i] for i in indices], coefs.to(device))
        else:
            torch._foreach_mul_([grads[i] for i in indices], [coefs[i].to(device) for i in indices])


class _NormStatistics:
    """The running statistics of a module's batch-norm layers, copied before a step's first batch to undo it.

    The layers are found once per fit; their buffers are looked up at each copy (moving the module to a device
    replaces them), in the layers' buffer dicts (``nn.Module.__getattr__`` would cost more than the copy), and
    the copies are reused while the buffers stay the same tensors.
    """

    _NAMES = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self) -> None:
        self.layers: list[tuple[_NormBase, dict[str, Tensor | None]]] = []
        self.taken = False
        self._buffers: list[Tensor] = []
        self._copies: list[Tensor] = []

    def bind(self, module: nn.Module) -> None:
        """Watch the batch-norm layers of ``module`` (any ``_NormBase`` that tracks running statistics)."""
        self.layers = [
            (m, m._buffers) for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats
        ]
        self._buffers, self._copies, self.taken = [], [], False

    def take(self) -> None:
        """Copy the statistics of the layers in training mode (the ones a forward pass updates)."""
        buffers = [
            b for m, named in self.layers if m.training for b in map(named.get, self._NAMES) if b is not None
        ]
        if len(buffers) != len(self._buffers) or any(
            a is not b for a, b in zip(buffers, self._buffers, strict=True)
        ):
            self._buffers = buffers
            self._copies = [torch.empty_like(b) for b in buffers]
        if buffers:
            torch._foreach_copy_(self._copies, buffers)
        self.taken = bool(buffers)

    def restore(self) -> None:
        """Put the copied statistics back."""
        if self.taken:
            torch._foreach_copy_(self._buffers, self._copies)

    def release(self) -> None:
        """Forget the copy (its step is done); the next batch takes a new one."""
        self.taken = False


class GradientClipping(StateKeyOnce):
    """Clip gradients by value and/or norm, optionally only those of some layers, after AMP unscaling.

    Runs in ``on_before_optimizer_step``, which Lightning calls after the closure (forward and backward) and,
    under 16-bit AMP, after ``GradScaler.unscale_`` (pytorch-lightning 2.6, ``plugins/precision/amp.py``,
    ``MixedPrecision.optimizer_step``: "``unscale`` happens after the closure is executed, but before the
    ``on_before_optimizer_step`` hook"), so thresholds apply to true gradients. Under DDP the gradients are
    already all-reduced there, so every rank clips (and skips) identically. With gradient accumulation the hook
    runs once per optimizer step, on the accumulated gradients.

    For each stepping optimizer, the selected parameters it holds that have a gradient are processed in order:

    1. The pre-clip ``norm_type``-norm over all of them is computed (one foreach kernel per device and dtype).
    2. Non-finite gradients (``skip_nonfinite=True``): when any gradient of the optimizer, selected or not,
       holds NaN or inf (the norm over all of them is not finite), every gradient of the optimizer is set to
       ``None``, so torch optimizers skip the whole step (no update, no weight decay, no momentum or Adam moment
       update for any parameter; LR schedulers and ``global_step`` still advance), and the running statistics of
       every batch-norm layer (any ``_NormBase`` in training mode: ``running_mean``, ``running_var``,
       ``num_batches_tracked``) are restored to their values before the step's first batch (its forward pass has
       already updated them, with NaN when it overflowed): the model is left as if the batch had never been
       seen. A warning naming the non-finite gradients is emitted the first time; the count is kept in
       ``skipped_steps``, logged and checkpointed. This check costs one host synchronisation per step, and with
       batch norm one copy of its buffers per step. Under 16-bit AMP the grad scaler skips such steps itself
       (they are routine while it calibrates its scale) and they are not counted; the batch-norm statistics of a
       step it skips are restored all the same. A finite gradient whose norm overflows the dtype also counts as
       non-finite, as in ``clip_grad_norm_(error_if_nonfinite=True)``. Other state that a forward pass changes
       (a random generator, a custom module's buffers) is not restored.
    3. By norm (``norm``): globally, like ``torch.nn.utils.clip_grad_norm_(selected, norm, norm_type)``: every
       gradient is multiplied by ``min(1, norm / (total + 1e-6))``; or, with ``per_parameter=True``, each
       gradient by ``min(1, norm / (‖g‖ + 1e-6))``.
    4. By value (``value``): each element is clamped to ``[-value, value]``, like
       ``torch.nn.utils.clip_grad_value_``. With both, the norm is clipped first (Keras' order for ``clipnorm``
       and ``clipvalue``).

    The pre-clip norm is logged with ``pl_module.log`` as ``grad_norm`` (``grad_norm/<pattern>`` with a pattern)
    and the skip count as ``skipped_steps`` (``skipped_steps/<pattern>``), on logging steps only
    (``Trainer(log_every_n_steps=...)``), so logging adds no host synchronisation on the other steps.

    Lightning's ``Trainer(gradient_clip_val=...)`` clips all parameters of an optimizer with one value; this
    callback replaces it and refuses to run together with it.

    Args:
        value: Clip each gradient element to ``[-value, value]``; ``> 0`` or ``None``.
        norm: Clip the gradient norm to this value; ``> 0`` or ``None``. At least one of ``value`` and ``norm``
            is required.
        norm_type: The p of the p-norm, ``> 0`` or ``math.inf``; used for clipping and for the logged norm.
        pattern: Clip only the parameters of modules selected by the library's selection rule (regex or list
            of regexes, ``re.fullmatch`` on a dotted module or parameter name of the LightningModule, or on that
            name without its first component, never a deeper suffix, e.g. ``"hidden[12]"``); the
            global norm is then taken over those parameters only and the other gradients are left untouched.
            ``None`` selects every parameter. The selection is made at fit start, after
            ``LightningModule.configure_model``, so layers created there are found.
        per_parameter: With ``norm``, clip each parameter's gradient norm separately instead of the global norm.
        log_norm: Log the pre-clip norm (and ``skipped_steps``).
        skip_nonfinite: Skip optimizer steps whose gradients are not finite, all of them and not only the
            selected ones, and restore the batch-norm statistics of such steps (see above). ``False`` saves the
            host synchronisation and the buffer copy, and lets non-finite gradients reach the optimizer.

    Raises:
        ValueError: for non-positive thresholds, neither ``value`` nor ``norm``, ``per_parameter`` without
            ``norm``; at fit start when used with ``Trainer(gradient_clip_val=...)``, when ``pattern`` selects
            nothing (the message lists the modules) or the strategy shards parameters.
        TypeError: for arguments of the wrong type.

    Example:
        >>> import pytorch_lightning as pl, torch
        >>> from torch import nn
        >>> class Regressor(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.hidden = nn.Linear(4, 8)
        ...         self.out = nn.Linear(8, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return nn.functional.mse_loss(self.out(self.hidden(x).relu()), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> _ = torch.manual_seed(0)
        >>> data = torch.utils.data.TensorDataset(torch.randn(16, 4), 100 * torch.randn(16, 1))
        >>> clip = GradientClipping(norm=1.0, pattern="hidden")
        >>> trainer = pl.Trainer(max_steps=2, callbacks=[clip], logger=False, log_every_n_steps=1,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(Regressor(), torch.utils.data.DataLoader(data, batch_size=8))
        >>> bool(trainer.callback_metrics["grad_norm/hidden"] > 1.0), clip.skipped_steps
        (True, 0)
    """

    def __init__(
        self,
        *,
        value: float | None = None,
        norm: float | None = None,
        norm_type: float = 2.0,
        pattern: Patterns | None = None,
        per_parameter: bool = False,
        log_norm: bool = True,
        skip_nonfinite: bool = True,
    ) -> None:
        super().__init__()
        if value is None and norm is None:
            raise ValueError("GradientClipping needs `value` and/or `norm`, got neither (both are None).")
        self.value = None if value is None else check_number("value", value, low=0.0, low_inclusive=False)
        self.norm = None if norm is None else check_number("norm", norm, low=0.0, low_inclusive=False)
        self.norm_type = _check_norm_type(norm_type)
        self.per_parameter = check_bool("per_parameter", per_parameter)
        if self.per_parameter and self.norm is None:
            raise ValueError("`per_parameter=True` clips norms, so it needs `norm`; got `norm=None`.")
        self.log_norm = check_bool("log_norm", log_norm)
        self.skip_nonfinite = check_bool("skip_nonfinite", skip_nonfinite)
        self._patterns = None if pattern is None else compile_patterns("pattern", pattern)
        self.pattern = pattern
        suffix = "" if self._patterns is None else "/" + "|".join(p.pattern for p in self._patterns)
        self._norm_key = f"grad_norm{suffix}"
        self._skipped_key = f"skipped_steps{suffix}"
        self._skipped_steps = 0
        self._warned = False
        self._selected: set[int] | None = None
        self._per_optimizer: dict[int, tuple[tuple[int, ...], list[nn.Parameter], list[nn.Parameter]]] = {}
        self._statistics = _NormStatistics()
        self._stepped = False  # an optimizer step ran during the current batch

    @override
    def state_key_fields(self) -> dict[str, Any]:
        """The arguments in the checkpoint key."""
        pattern = None if self._patterns is None else [p.pattern for p in self._patterns]
        return {
            "value": self.value,
            "norm": self.norm,
            "norm_type": self.norm_type,
            "pattern": pattern,
            "per_parameter": self.per_parameter,
        }

    @property
    def skipped_steps(self) -> int:
        """Number of optimizer steps skipped for non-finite gradients, including those before a resume."""
        return self._skipped_steps

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self._skipped_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._skipped_steps = int(state_dict.get("skipped_steps", 0))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        clip_val = trainer.gradient_clip_val
        if clip_val is not None and clip_val > 0:
            raise ValueError(
                f"GradientClipping cannot run together with Trainer(gradient_clip_val={clip_val}): both would clip "
                "the same gradients. Remove one of them: drop `gradient_clip_val` from the Trainer, or remove the "
                "GradientClipping callback."
            )
        strategy = type(trainer.strategy)
        if any(cls.__name__ in _SHARDED_STRATEGIES for cls in strategy.__mro__):
            raise ValueError(
                f"GradientClipping needs whole gradients on every rank, but the strategy {strategy.__name__} "
                "shards them; use DDP (strategy='ddp') or a single device."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # resolved here, after `configure_model`, so layers created there are found
        if self._patterns is None:
            self._selected = None
        else:
            self._selected = {id(p) for _, p in select_parameters(pl_module, self._patterns, arg="pattern")}
        self._per_optimizer = {}
        self._warned = False
        self._statistics.bind(pl_module)
        self._stepped = False

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the first batch of a step (several under gradient accumulation): copy what its forward passes change
        if self.skip_nonfinite and not self._statistics.taken:
            self._statistics.take()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._stepped:
            self._stepped = False
            self._statistics.release()

    def _owned(self, optimizer: torch.optim.Optimizer) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(selected, others)``: the parameters of ``optimizer``, cached until its param groups change size."""
        signature = tuple(len(group["params"]) for group in optimizer.param_groups)
        cached = self._per_optimizer.get(id(optimizer))
        if cached is None or cached[0] != signature:
            unique = list({id(p): p for group in optimizer.param_groups for p in group["params"]}.values())
            selected = self._selected
            cached = (
                signature,
                [p for p in unique if selected is None or id(p) in selected],
                [p for p in unique if selected is not None and id(p) not in selected],
            )
            self._per_optimizer[id(optimizer)] = cached
        return cached[1], cached[2]

    @staticmethod
    def _is_logging_step(trainer: pl.Trainer) -> bool:
        every = int(getattr(trainer, "log_every_n_steps", 0))  # set by the Trainer's logger connector
        return every > 0 and ((trainer.global_step + 1) % every == 0 or trainer.should_stop)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._stepped = True
        selected, others = self._owned(optimizer)
        params = [p for p in selected if p.grad is not None]
        rest = [p for p in others if p.grad is not None]
        if not params and not rest:
            return
        _refuse_sparse(pl_module, params)
        grads: list[Tensor] = [p.grad for p in params]  # type: ignore[misc]
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        # with a grad scaler, the scaler skips non-finite steps; the check only tells whether to undo batch norm
        check = self.skip_nonfinite and (not scaled or self._statistics.taken)
        logging_step = self.log_norm and self._is_logging_step(trainer)

        norms: list[Tensor] | None = None
        total: Tensor | None = None
        if grads and (self.norm is not None or check or logging_step):
            norms = _norms(grads, self.norm_type)
            total = _total(norms, self.norm_type)
        if logging_step and total is not None:
            pl_module.log(self._norm_key, total, on_step=True, on_epoch=False, logger=bool(trainer.loggers))

        finite, total_value = self._finite(total, rest) if check else (True, None)
        if not finite:
            if not scaled:
                self._skip(trainer, pl_module, optimizer)
            self._statistics.restore()
        elif grads:
            if self.norm is not None and norms is not None and total is not None:
                self._clip_norm(self.norm, grads, norms, total, total_value)
            if self.value is not None:
                torch._foreach_clamp_min_(grads, -self.value)
                torch._foreach_clamp_max_(grads, self.value)

        if logging_step and check and not scaled:
            count = float(self._skipped_steps)
            pl_module.log(
                self._skipped_key, count, on_step=True, on_epoch=False, logger=bool(trainer.loggers)
            )

    def _finite(self, total: Tensor | None, rest: list[nn.Parameter]) -> tuple[bool, float | None]:
        """Whether every gradient (selected or not) is finite, and the selected ones' total norm on the host.

        This is the one host synchronisation of a step: the selected total and the other gradients' total norm
        are read together.
        """
        parts = [] if total is None else [total]
        if rest:
            # a sparse gradient outside the pattern is not clipped, but its values are checked all the same
            grads = [_values(p.grad) for p in rest]  # type: ignore[arg-type]
            other = _total(_norms(grads, self.norm_type), self.norm_type)
            parts.append(other if total is None else other.to(total.device, total.dtype))
        values = parts[0].reshape(1).tolist() if len(parts) == 1 else torch.stack(parts).tolist()
        return all(math.isfinite(v) for v in values), None if total is None else values[0]

    def _clip_norm(
        self, norm: float, grads: list[Tensor], norms: list[Tensor], total: Tensor, total_value: float | None
    ) -> None:
        """Scale ``grads`` to the norm limit: per parameter, or globally like ``clip_grad_norm_``."""
        if self.per_parameter:
            coefs = torch._foreach_add(norms, _EPS)
            torch._foreach_reciprocal_(coefs)
            torch._foreach_mul_(coefs, norm)
            torch._foreach_clamp_max_(coefs, 1.0)
            _scale_(grads, coefs)
        elif total_value is None:
            _scale_(grads, torch.clamp(norm / (total + _EPS), max=1.0))
        else:
            # the total is already on the host: compute clip_grad_norm_'s coefficient there (in float64, no
            # kernels), and skip the no-op multiply by exactly 1.0 that most steps would do
            coef = norm / (total_value + _EPS)
            if coef < 1.0:
                _scale_(grads, coef)

    def _skip(self, trainer: pl.Trainer, pl_module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._skipped_steps += 1
        if not self._warned:
            self._warned = True
            undone = " and restoring the batch-norm running statistics" if self._statistics.taken else ""
            rank_zero_warn(
                f"GradientClipping: non-finite gradients at global step {trainer.global_step} in "
                f"{_nonfinite_names(pl_module, optimizer, self.norm_type)}; skipping this optimizer step (all its "
                f"gradients are set to None){undone}. Later skips are counted in `skipped_steps` without a warning."
            )
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    def __getstate__(self) -> dict[str, Any]:
        # parameter ids and optimizer caches belong to one fit; they are rebuilt at the next fit start
        state = self.__dict__.copy()
        state.update(_selected=None, _per_optimizer={}, _statistics=_NormStatistics(), _stepped=False)
        return state


def _refuse_sparse(pl_module: nn.Module, params: Sequence[Tensor]) -> None:
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            name = next((n for n, q in pl_module.named_parameters() if q is p), "?")
            raise TypeError(
                f"GradientClipping does not support sparse gradients (parameter {name!r}); "
                "leave its module out of `pattern`."
            )


def _nonfinite_names(pl_module: nn.Module, optimizer: torch.optim.Optimizer, norm_type: float) -> str:
    """The names of the optimizer's parameters whose gradients are not finite, for the warning (a few)."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"] if p.grad is not None}
    named = [(n, p) for n, p in pl_module.named_parameters() if id(p) in held]
    bad = [n for n, p in named if not bool(torch.isfinite(_values(p.grad)).all())]  # type: ignore[arg-type]
    if not bad:
        return f"no single gradient (the {norm_type}-norm of the finite gradients overflows)"
    shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
    return shown if len(bad) == 1 else f"{shown} ({len(bad)} of {len(named)} parameter tensors)"


def _values(grad: Tensor) -> Tensor:
    """The stored values of a gradient: itself, or a sparse one's non-zero values."""
    return grad.coalesce().values() if grad.is_sparse else grad
