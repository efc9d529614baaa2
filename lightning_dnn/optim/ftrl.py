r"""FTRL-Proximal with TensorFlow's semantics (:class:`FTRL` and the functional :func:`ftrl`).

The algorithm is McMahan et al., 2013, "Ad Click Prediction: a View from the Trenches" (KDD 2013,
https://research.google.com/pubs/archive/41159.pdf), Algorithm 1, generalised the way TensorFlow generalises it.
This module follows TensorFlow's implementation number for number:

* the ``ApplyFtrlV2`` / ``SparseApplyFtrlV2`` kernels in ``tensorflow/core/kernels/training_ops.cc``
  (``functor::ApplyFtrlV2<CPUDevice, T>`` and ``ComputeFtrl``), and
* the optimizers that call them, ``tf.keras.optimizers.Ftrl`` (``keras/optimizer_v2/ftrl.py``; Keras 3's
  ``keras/src/optimizers/ftrl.py`` writes the same formula in ``ops``) and ``tf.compat.v1.train.FtrlOptimizer``.
  They fold ``beta`` into the L2 strength, ``l2 + beta / (2 * lr)``, before calling the kernel.

Per element, with gradient ``g``, weight ``w``, accumulator ``n`` and linear term ``z`` (state), learning rate
``lr``, ``p = lr_power`` (<= 0), L1 ``l1``, L2 ``l2``, L2 shrinkage ``l2s`` and ``beta``::

    g_s    = g + 2 * l2s * w                     # shrinkage enters the linear term only
    n_new  = n + g * g                           # the gradient WITHOUT shrinkage, squared (current TF;
                                                 # some older kernels squared g_s)
    sigma  = (n_new ** -p - n ** -p) / lr        # sqrt is used when p == -0.5, as in TF
    z      = z + g_s - sigma * w
    q      = n_new ** -p / lr + 2 * (l2 + beta / (2 * lr))   # = (beta + n_new ** -p) / lr + 2 * l2
    w      = (sign(z) * l1 - z) / q   if |z| > l1   else 0   # exact zeros: sparse models
    n      = n_new

State starts at ``n = initial_accumulator_value`` and ``z = 0``; ``w`` starts wherever the model put it.

Where FTRL coincides with other optimizers (for the same gradient sequence; the tests check each statement):

* ``lr_power=0, l1=l2=l2_shrinkage=beta=0``: ``sigma = 0``, ``q = 1 / lr`` and ``w_t = -lr * sum(g_1..g_t)``:
  plain gradient descent *from zero*. The starting weights are dropped at the first step, so from
  ``w_0 != 0`` the iterates are ``w_t = w_t^SGD - w_0``; trained in a loop the two coincide only from ``w_0 = 0``.
* ``lr_power=-0.5, l1=l2=l2_shrinkage=beta=0``: the invariant ``z_t = -sqrt(n_t) * w_t / lr`` gives
  ``w_t = w_{t-1} - lr * g_t / sqrt(n_t)``, i.e. ``torch.optim.Adagrad(lr=lr, eps=0,
  initial_accumulator_value=initial_accumulator_value)``, provided the invariant holds at the start: when
  ``w_0 = 0`` (any initial accumulator), or when ``initial_accumulator_value = 0`` (any ``w_0``, as long as no
  element's first gradient is exactly zero). With ``w_0 != 0`` and an initial accumulator ``n_0 > 0`` the first
  step gives ``w_1 = w_0 * (1 - sqrt(n_0 / n_1)) - lr * g_1 / sqrt(n_1)``: it drops ``w_0 * sqrt(n_0 / n_1)``
  compared with AdaGrad, a difference that persists.

Floating point: every step is evaluated in the parameter's dtype with TF's differences kept intact
(``n_new ** -p - n ** -p`` is formed first, so without shrinkage a zero gradient leaves ``z`` exactly as it
was). Two products are
reassociated for speed: ``z`` is updated as ``(z + g_s) + (n ** -p - n_new ** -p) * (1 / lr) * w`` and the
weight as ``(-lr * softshrink(z, l1)) / (n_new ** -p + 2 * l2 * lr)``. The results therefore agree with TF's
float32 kernel to float32 rounding (errors relative to the weights' scale ~1e-7, the size of TF's own rounding
error), the zero pattern is the same, and zeroed weights are ``+0.0`` as in TF. The single-tensor and foreach
paths agree bit for bit.

Speed: :class:`FTRL` keeps ``n ** -lr_power`` between steps (a cache outside the state dict, recomputed bit for
bit when missing or stale), so a step computes one power per weight like Adam's one square root; on CPU one
step costs about as much as ``torch.optim.Adam`` (``bench/optim_step.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer
from typing_extensions import override

from lightning_dnn._checks import check_bool, check_number

__all__ = ["FTRL", "ftrl"]

_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "lr": {"low": 0.0, "low_inclusive": False},
    "lr_power": {"high": 0.0},
    "initial_accumulator_value": {"low": 0.0},
    "l1": {"low": 0.0},
    "l2": {"low": 0.0},
    "l2_shrinkage": {"low": 0.0},
    "beta": {"low": 0.0},
}
# Devices with foreach kernels worth defaulting to, as torch.optim decides for its own optimizers.
_FOREACH_DEVICES = ("cuda", "xpu")
# Where the foreach path writes the new weights tensor by tensor (as the single-tensor path does): CPU foreach
# kernels loop over the tensors anyway, and ``out=`` there saves passes and fresh buffers (page faults).
_PER_TENSOR_WEIGHT_DEVICES = ("cpu",)


def _validate_group(group: dict[str, Any]) -> None:
    """Check (and normalise to float) the hyper-parameters of one param group; raise naming the bad one."""
    for name, bounds in _HYPERPARAMETERS.items():
        group[name] = check_number(name, group[name], **bounds)
    foreach = group["foreach"]
    if foreach is not None and not isinstance(foreach, bool):
        raise TypeError(f"`foreach` must be None, True or False, got {type(foreach).__name__} {foreach!r}")
    check_bool("maximize", group["maximize"])


class FTRL(Optimizer):
    r"""FTRL-Proximal ("Follow The Regularized Leader") with exactly TensorFlow's semantics.

    McMahan et al., 2013, "Ad Click Prediction: a View from the Trenches", Algorithm 1 with per-coordinate
    learning rates, generalised as in TensorFlow (``tf.keras.optimizers.Ftrl``, kernel ``ApplyFtrlV2``). With
    ``l1 > 0`` weights whose linear term stays within ``[-l1, l1]`` are exactly zero, which is why FTRL trains
    sparse models. Update rule per element (state ``n`` accumulator, ``z`` linear)::

        g_s   = g + 2 * l2_shrinkage * w
        n_new = n + g ** 2
        z    += g_s - (n_new ** -lr_power - n ** -lr_power) / lr * w
        w     = (sign(z) * l1 - z) / (n_new ** -lr_power / lr + 2 * l2 + beta / lr)  if |z| > l1 else 0
        n     = n_new

    The module docstring of :mod:`lightning_dnn.optim.ftrl` gives the sources and the cases where FTRL equals
    plain gradient descent or AdaGrad.

    Sparse gradients (``nn.Embedding(sparse=True)``) are coalesced (duplicate indices summed, as Keras does
    before calling ``SparseApplyFtrlV2``) and update only the touched rows of the weight and of its state; the
    shrinkage term then acts on those rows only.

    Memory: the state is ``accumulator`` and ``linear`` (as TF's two slots) plus ``step``. Between steps the
    optimizer also keeps ``accumulator ** -lr_power`` for dense gradients, which saves a power (a square root)
    per weight and step; it is not part of ``state_dict()`` and is recomputed, bit for bit, after loading a
    state dict, changing ``lr_power`` or writing into the accumulator.

    Args:
        params: parameters or param groups, as for any ``torch.optim`` optimizer. Every hyper-parameter below
            may be overridden per group.
        lr: learning rate ``alpha`` of the paper, > 0.
        lr_power: power of the accumulator in the per-coordinate rate, <= 0; -0.5 is the paper's
            ``1 / sqrt(n)``, 0 a fixed rate.
        initial_accumulator_value: starting value of the accumulator ``n``, >= 0 (TF's default 0.1).
        l1: L1 regularisation strength ``lambda_1``, >= 0.
        l2: L2 regularisation strength ``lambda_2`` (a stabilisation penalty on the proximal step), >= 0.
        l2_shrinkage: L2 shrinkage strength, >= 0: adds ``2 * l2_shrinkage * w`` to the gradient in the linear
            term, i.e. a magnitude penalty ``l2_shrinkage * ||w||^2`` on the loss.
        beta: the paper's ``beta``, >= 0, added to ``n ** -lr_power`` in the denominator.
        foreach: use the ``torch._foreach_*`` implementation. ``None`` picks it when every parameter is on a
            CUDA (or XPU) device, as ``torch.optim`` does. Both implementations give the same numbers.
        maximize: maximise the objective instead of minimising it.

    Raises:
        ValueError: if a hyper-parameter is out of range, e.g. ``lr <= 0`` or ``lr_power > 0``.
        TypeError: if a hyper-parameter has the wrong type.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([0.5, -0.5, 0.0]))
        >>> opt = FTRL([w], lr=0.1, l1=0.05)
        >>> w.grad = torch.tensor([0.2, -0.01, 0.5])
        >>> opt.step()
        >>> w.data  # the middle weight's linear term stays inside [-l1, l1]: exactly zero
        tensor([ 0.0106,  0.0000, -0.0761])
        >>> sorted(opt.state[w])
        ['accumulator', 'linear', 'step']
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.001,
        *,
        lr_power: float = -0.5,
        initial_accumulator_value: float = 0.1,
        l1: float = 0.0,
        l2: float = 0.0,
        l2_shrinkage: float = 0.0,
        beta: float = 0.0,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "lr_power": lr_power,
            "initial_accumulator_value": initial_accumulator_value,
            "l1": l1,
            "l2": l2,
            "l2_shrinkage": l2_shrinkage,
            "beta": beta,
            "foreach": foreach,
            "maximize": maximize,
        }
        _validate_group(defaults)
        self._power_cache: dict[Tensor, _PowerCache] = {}
        super().__init__(params, defaults)

    @override
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, validating any hyper-parameter it overrides (see :class:`FTRL` for the ranges).

        Example:
            >>> opt = FTRL([torch.nn.Parameter(torch.zeros(2))])
            >>> opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "l1": 0.01})
            >>> [group["l1"] for group in opt.param_groups]
            [0.0, 0.01]
        """
        super().add_param_group(param_group)
        _validate_group(self.param_groups[-1])

    @override
    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._power_cache = {}
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("l2_shrinkage", 0.0)
            group.setdefault("beta", 0.0)
        for param_state in self.state.values():
            if "step" in param_state and not torch.is_tensor(param_state["step"]):
                param_state["step"] = torch.tensor(float(param_state["step"]), dtype=torch.float32)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        accumulators: list[Tensor],
        linears: list[Tensor],
        steps: list[Tensor],
        powers: list[Tensor | None],
    ) -> bool:
        """Collect the parameters with a gradient, creating their state on first use; return has_sparse_grad."""
        has_sparse_grad = False
        for p in group["params"]:
            if p.grad is None:
                continue
            if torch.is_complex(p):
                raise TypeError("FTRL does not support complex parameters (neither does TensorFlow's kernel)")
            if p.grad.layout not in (torch.strided, torch.sparse_coo):
                raise TypeError(f"FTRL supports dense and sparse COO gradients, got layout {p.grad.layout}")
            has_sparse_grad |= p.grad.is_sparse
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["accumulator"] = torch.full_like(
                    p, group["initial_accumulator_value"], memory_format=torch.preserve_format
                )
                state["linear"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            accumulators.append(state["accumulator"])
            linears.append(state["linear"])
            steps.append(state["step"])
            cached = self._power_cache.get(p)
            fresh = cached is not None and cached.matches(state["accumulator"], group["lr_power"])
            powers.append(cached.power if cached is not None and fresh else None)
        return has_sparse_grad

    @override
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            the closure's loss, or None without a closure.

        Example:
            >>> w = torch.nn.Parameter(torch.ones(2))
            >>> opt = FTRL([w], lr=0.5, lr_power=0.0)
            >>> w.grad = torch.tensor([1.0, -2.0])
            >>> opt.step()
            >>> w.data  # lr_power=0 without regularisation: w = -lr * sum(grads), whatever w started at
            tensor([-0.5000,  1.0000])
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            accumulators: list[Tensor] = []
            linears: list[Tensor] = []
            steps: list[Tensor] = []
            powers: list[Tensor | None] = []
            has_sparse_grad = self._init_group(group, params, grads, accumulators, linears, steps, powers)
            ftrl(
                params,
                grads,
                accumulators,
                linears,
                steps,
                accumulator_powers=powers,
                foreach=group["foreach"],
                has_sparse_grad=has_sparse_grad,
                lr=group["lr"],
                lr_power=group["lr_power"],
                initial_accumulator_value=group["initial_accumulator_value"],
                l1=group["l1"],
                l2=group["l2"],
                l2_shrinkage=group["l2_shrinkage"],
                beta=group["beta"],
                maximize=group["maximize"],
            )
            for p, accumulator, power in zip(params, accumulators, powers, strict=True):
                if power is None:
                    self._power_cache.pop(p, None)
                else:
                    self._power_cache[p] = _PowerCache(
                        accumulator, accumulator._version, group["lr_power"], power
                    )
        return loss


class _PowerCache:
    """``accumulator ** -lr_power`` kept between steps (not state: it is derived and recomputed bit for bit).

    It saves recomputing the old accumulator's power each step (a square root over every weight, the most
    expensive operation of the update). It is used only while it provably belongs to the accumulator: the same
    tensor object (``load_state_dict`` replaces it), unmodified since (its version counter, which every in-place
    write bumps) and the same ``lr_power``.
    """

    __slots__ = ("accumulator", "lr_power", "power", "version")

    def __init__(self, accumulator: Tensor, version: int, lr_power: float, power: Tensor) -> None:
        self.accumulator = accumulator
        self.version = version
        self.lr_power = lr_power
        self.power = power

    def matches(self, accumulator: Tensor, lr_power: float) -> bool:
        return (
            self.accumulator is accumulator
            and self.version == accumulator._version
            and self.lr_power == lr_power
        )


def _default_foreach(params: Sequence[Tensor]) -> bool:
    return len(params) > 0 and all(
        type(p) in (Tensor, torch.nn.Parameter) and p.device.type in _FOREACH_DEVICES for p in params
    )


def ftrl(
    params: list[Tensor],
    grads: list[Tensor],
    accumulators: list[Tensor],
    linears: list[Tensor],
    state_steps: list[Tensor],
    *,
    accumulator_powers: list[Tensor | None] | None = None,
    foreach: bool | None = None,
    has_sparse_grad: bool = False,
    lr: float,
    lr_power: float,
    initial_accumulator_value: float,
    l1: float,
    l2: float,
    l2_shrinkage: float,
    beta: float,
    maximize: bool,
) -> None:
    """Functional FTRL: update ``params``, ``accumulators``, ``linears`` and ``state_steps`` in place.

    The computation of :class:`FTRL` (see it for the update rule) without the optimizer object. Values are
    not validated here; :class:`FTRL` does that.

    Args:
        params: the weights ``w``.
        grads: their gradients, dense or sparse COO (matched by position).
        accumulators: the accumulators ``n``, same shapes as ``params``.
        linears: the linear terms ``z``, same shapes as ``params``.
        state_steps: one float scalar tensor per parameter, incremented by one.
        accumulator_powers: optional cache, one entry per parameter: ``accumulators[i] ** -lr_power`` or None
            (then computed). The entries are consumed (used as scratch) and replaced by the powers of the
            updated accumulators (None for sparse gradients and ``lr_power == 0``), ready for the next call.
        foreach: use ``torch._foreach_*`` kernels; None picks them when all params are on CUDA/XPU.
        has_sparse_grad: whether any gradient is sparse (lets the foreach path skip a scan).
        lr: learning rate.
        lr_power: power of the accumulator, <= 0.
        initial_accumulator_value: what the accumulators started at; when it is 0 (together with
            ``l2 = beta = 0`` and ``lr_power < 0``) the denominator can be zero and the zero-weight branch is
            evaluated exactly as TF's ``select`` does.
        l1: L1 strength.
        l2: L2 strength.
        l2_shrinkage: L2 shrinkage strength.
        beta: the paper's beta.
        maximize: ascend instead of descend.

    Example:
        >>> w, g = torch.tensor([1.0]), torch.tensor([0.5])
        >>> n, z, t = torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor(0.0)
        >>> ftrl([w], [g], [n], [z], [t], lr=1.0, lr_power=-0.5, initial_accumulator_value=0.0,
        ...      l1=0.0, l2=0.0, l2_shrinkage=0.0, beta=0.0, maximize=False)
        >>> w, n, z, t  # AdaGrad's step from zero accumulator: w - lr * g / sqrt(g ** 2) = 1 - 1
        (tensor([0.]), tensor([0.2500]), tensor([0.]), tensor(1.))
    """
    if accumulator_powers is None:
        accumulator_powers = [None] * len(params)
    lengths = [
        len(params),
        len(grads),
        len(accumulators),
        len(linears),
        len(state_steps),
        len(accumulator_powers),
    ]
    if len(set(lengths)) != 1:
        raise ValueError(
            "`params`, `grads`, `accumulators`, `linears`, `state_steps` and `accumulator_powers` must have the "
            f"same length, got {lengths}"
        )
    if foreach is None:
        foreach = _default_foreach(params)
    hyper = _Hyper(lr, lr_power, initial_accumulator_value, l1, l2, l2_shrinkage, beta, maximize)
    if foreach:
        _multi_tensor_ftrl(
            params, grads, accumulators, linears, state_steps, accumulator_powers, hyper, has_sparse_grad
        )
    else:
        _single_tensor_ftrl(params, grads, accumulators, linears, state_steps, accumulator_powers, hyper)


class _Hyper:
    """The scalars one step needs, with the derived constants computed once."""

    __slots__ = (
        "inv_lr",
        "l1",
        "l2_shrinkage",
        "lr",
        "lr_power",
        "maximize",
        "may_divide_by_zero",
        "two_l2",
    )

    def __init__(
        self,
        lr: float,
        lr_power: float,
        initial_accumulator_value: float,
        l1: float,
        l2: float,
        l2_shrinkage: float,
        beta: float,
        maximize: bool,
    ) -> None:
        self.lr = float(lr)
        self.inv_lr = 1.0 / self.lr
        self.lr_power = float(lr_power)
        self.l1 = float(l1)
        self.l2_shrinkage = float(l2_shrinkage)
        # tf.keras / tf.compat.v1 fold beta into the L2 strength before calling the kernel.
        self.two_l2 = 2.0 * (float(l2) + float(beta) / (2.0 * self.lr))
        self.maximize = maximize
        # q = n ** -p / lr + 2 * l2 is zero only if an accumulator is zero, which needs a zero start.
        self.may_divide_by_zero = (
            self.two_l2 == 0.0 and self.lr_power != 0.0 and initial_accumulator_value == 0.0
        )


def _accumulator_power(accumulator: Tensor, lr_power: float) -> Tensor:
    """``accumulator ** -lr_power`` as a new tensor; sqrt for the usual -0.5, as TF's kernel special-cases it."""
    if lr_power == -0.5:
        return accumulator.sqrt()
    return accumulator.pow(-lr_power)


def _constant_denominator(like: Tensor, h: _Hyper) -> Tensor:
    """``lr * q = 1 + 2 * l2 * lr`` for ``lr_power == 0`` (``n ** 0 == 1``), a 0-dim tensor in the param's dtype."""
    return torch.ones((), dtype=like.dtype, device=like.device).add_(h.two_l2 * h.lr)


def _write_weights(param: Tensor, linear: Tensor, denominator: Tensor, h: _Hyper) -> None:
    """``w = (sign(z) * l1 - z) / q`` where ``|z| > l1``, else 0, written into ``param``; ``denominator = lr * q``.

    Computed as ``0 + (-lr * softshrink(z, l1)) / (lr * q)``: ``softshrink(z, l1) = z - clip(z, -l1, l1)`` is
    ``-(sign(z) * l1 - z)`` outside the band and +0 inside, and adding to 0 keeps the zeros +0 as TF's
    ``select`` does. ``param`` is free scratch once ``z`` is updated.
    """
    shrunk = linear if h.l1 == 0.0 else torch._C._nn.softshrink(linear, h.l1, out=param)  # type: ignore[call-arg]
    zero_numerator = shrunk == 0 if h.may_divide_by_zero else None
    torch.addcdiv(param.new_zeros(()), shrunk, denominator, value=-h.lr, out=param)
    if zero_numerator is not None:
        param.masked_fill_(zero_numerator, 0.0)  # 0 / 0 where n_new == 0: TF's select gives 0


def _dense_update(
    param: Tensor,
    grad: Tensor,
    accumulator: Tensor,
    linear: Tensor,
    power: Tensor | None,
    h: _Hyper,
) -> Tensor | None:
    """One FTRL step on dense tensors of equal shape, in place (``param`` may be a gathered copy).

    ``power`` is ``accumulator ** -lr_power`` if known (cached from the previous step; used as scratch), else None.
    Returns the updated accumulator's power, None when ``lr_power == 0``.
    """
    if h.maximize:
        grad = torch.neg(grad)
    grad_s = grad if h.l2_shrinkage == 0.0 else torch.add(grad, param, alpha=2.0 * h.l2_shrinkage)
    new_power: Tensor | None = None
    if h.lr_power == 0.0:
        # n ** 0 == 1 before and after: sigma == 0 and the denominator is the constant 1 / lr + 2 * l2.
        accumulator.addcmul_(grad, grad)
        linear.add_(grad_s)
        denominator = _constant_denominator(param, h)
    else:
        old = power if power is not None else _accumulator_power(accumulator, h.lr_power)  # n ** -p
        accumulator.addcmul_(grad, grad)  # n_new = n + g * g (the gradient without shrinkage)
        new = _accumulator_power(accumulator, h.lr_power)  # n_new ** -p
        old.sub_(new)  # -(n_new ** -p - n ** -p): exactly 0 where g == 0, as in TF
        # z += g_s - sigma * w, with sigma * w = (n_new ** -p - n ** -p) / lr * w
        linear.add_(grad_s).addcmul_(old, param, value=h.inv_lr)
        denominator = new if h.two_l2 == 0.0 else torch.add(new, h.two_l2 * h.lr, out=old)  # lr * q
        new_power = new
    _write_weights(param, linear, denominator, h)
    return new_power


def _sparse_update(param: Tensor, grad: Tensor, accumulator: Tensor, linear: Tensor, h: _Hyper) -> None:
    """SparseApplyFtrlV2: the dense rule on the rows a coalesced sparse COO gradient touches; others untouched."""
    grad = grad.coalesce()  # sums duplicate indices: the update is not linear in the gradient
    index = tuple(grad.indices())
    rows = param[index]
    accumulator_rows = accumulator[index]
    linear_rows = linear[index]
    _dense_update(rows, grad.values(), accumulator_rows, linear_rows, None, h)
    param.index_put_(index, rows)
    accumulator.index_put_(index, accumulator_rows)
    linear.index_put_(index, linear_rows)


def _single_tensor_ftrl(
    params: list[Tensor],
    grads: list[Tensor],
    accumulators: list[Tensor],
    linears: list[Tensor],
    state_steps: list[Tensor],
    powers: list[Tensor | None],
    h: _Hyper,
) -> None:
    for i, (param, grad, accumulator, linear, step) in enumerate(
        zip(params, grads, accumulators, linears, state_steps, strict=True)
    ):
        step += 1
        if grad.is_sparse:
            _sparse_update(param, grad, accumulator, linear, h)
            powers[i] = None
            continue
        powers[i] = _dense_update(param, grad, accumulator, linear, powers[i], h)


def _multi_tensor_ftrl(
    params: list[Tensor],
    grads: list[Tensor],
    accumulators: list[Tensor],
    linears: list[Tensor],
    state_steps: list[Tensor],
    powers: list[Tensor | None],
    h: _Hyper,
    has_sparse_grad: bool,
) -> None:
    def take(items: list[Any], indices: list[int]) -> list[Any]:
        return [items[i] for i in indices]

    if has_sparse_grad:
        # Sparse gradients take the row-wise path one tensor at a time, as torch.optim.Adagrad does.
        sparse = [i for i, g in enumerate(grads) if g.is_sparse]
        _single_tensor_ftrl(
            take(params, sparse),
            take(grads, sparse),
            take(accumulators, sparse),
            take(linears, sparse),
            take(state_steps, sparse),
            [None] * len(sparse),
            h,
        )
        for i in sparse:
            powers[i] = None
    dense = [i for i, g in enumerate(grads) if not g.is_sparse]
    if not dense:
        return
    steps = take(state_steps, dense)
    cpu_steps = [s for s in steps if s.is_cpu]
    if cpu_steps:
        # Adding a CPU tensor avoids wrapping the scalar 1 once per step tensor (as torch.optim does).
        torch._foreach_add_(cpu_steps, torch.tensor(1.0), alpha=1.0)
    other_steps = [s for s in steps if not s.is_cpu]
    if other_steps:
        torch._foreach_add_(other_steps, 1.0)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i in dense:
        groups.setdefault((params[i].device, params[i].dtype), []).append(i)
    for indices in groups.values():
        new_powers = _foreach_dense_update(
            take(params, indices),
            take(grads, indices),
            take(accumulators, indices),
            take(linears, indices),
            take(powers, indices),
            h,
        )
        for i, new_power in zip(indices, new_powers, strict=True):
            powers[i] = new_power


def _foreach_dense_update(
    params: list[Tensor],
    grads: list[Tensor],
    accumulators: list[Tensor],
    linears: list[Tensor],
    powers: list[Tensor | None],
    h: _Hyper,
) -> list[Tensor | None]:
    """:func:`_dense_update` with foreach kernels, operation for operation (so bit for bit).

    Foreach kernels have no ``out=``, so the new powers (and the L1 numerators off CPU) are fresh tensors:
    cheap with CUDA's caching allocator.
    """
    if h.maximize:
        grads = list(torch._foreach_neg(grads))
    grads_s = grads
    if h.l2_shrinkage != 0.0:
        grads_s = list(torch._foreach_add(grads, params, alpha=2.0 * h.l2_shrinkage))
    new_powers: list[Tensor | None]
    if h.lr_power == 0.0:
        torch._foreach_addcmul_(accumulators, grads, grads)
        torch._foreach_add_(linears, grads_s)
        constant = _constant_denominator(params[0], h)
        denominators = [constant.expand_as(p) for p in params]
        new_powers = [None] * len(params)
    else:
        missing = [i for i, power in enumerate(powers) if power is None]
        computed = iter(_foreach_accumulator_power([accumulators[i] for i in missing], h.lr_power))
        olds = [power if power is not None else next(computed) for power in powers]
        torch._foreach_addcmul_(accumulators, grads, grads)
        news = _foreach_accumulator_power(accumulators, h.lr_power)
        torch._foreach_sub_(olds, news)
        torch._foreach_add_(linears, grads_s)
        torch._foreach_addcmul_(linears, olds, params, value=h.inv_lr)
        del olds
        denominators = news if h.two_l2 == 0.0 else list(torch._foreach_add(news, h.two_l2 * h.lr))
        new_powers = list(news)
    if params[0].device.type in _PER_TENSOR_WEIGHT_DEVICES:
        for param, linear, denominator in zip(params, linears, denominators, strict=True):
            _write_weights(param, linear, denominator, h)
        return new_powers
    if h.l1 == 0.0:
        numerators, value = linears, -h.lr
    else:
        # clip(z, -l1, l1) - z == -softshrink(z, l1) exactly (+0 inside the band), so value flips sign.
        numerators = list(torch._foreach_clamp_max(linears, h.l1))
        torch._foreach_clamp_min_(numerators, -h.l1)
        torch._foreach_sub_(numerators, linears)
        value = h.lr
    zero_numerators = [n == 0 for n in numerators] if h.may_divide_by_zero else None
    torch._foreach_zero_(params)
    torch._foreach_addcdiv_(params, numerators, denominators, value=value)
    if zero_numerators is not None:
        for param, mask in zip(params, zero_numerators, strict=True):
            param.masked_fill_(mask, 0.0)
    return new_powers


def _foreach_accumulator_power(accumulators: list[Tensor], lr_power: float) -> list[Tensor]:
    if not accumulators:
        return []
    if lr_power == -0.5:
        return list(torch._foreach_sqrt(accumulators))
    return list(torch._foreach_pow(accumulators, -lr_power))
