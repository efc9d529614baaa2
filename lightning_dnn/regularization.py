"""L1/L2 weight penalties over the weights selected by a name pattern, never biases or normalization parameters.

A *weight* is the ``weight`` parameter of a ``Linear``, ``Bilinear``, convolution (``ConvNd`` and
``ConvTransposeNd``), ``Embedding`` or ``EmbeddingBag`` module. Every ``bias``, every parameter of a normalization
layer (batch, layer, group, instance norm) and every other parameter (PReLU slopes, ...) is left alone, as in
Géron's chapter 11, where the regularizers are attached to the ``weights`` of the dense layers only.

Scaling conventions (the penalty is ``l1 * sum|w| + l2 * sum w**2``, added to the mean loss of a batch):

* TF1's ``tf.contrib.layers.l1_regularizer(scale)`` is ``scale * sum|w|``: ``l1 = scale``. The chapter uses
  ``l1_regularizer(0.001)`` on every dense layer, and by hand ``base_loss + 0.001 * (sum|W1| + sum|W2|)``; both
  are ``WeightPenalty(l1=0.001)``.
* TF's ``l2_regularizer(scale)`` (and ``tf.nn.l2_loss``) is ``scale * sum(w**2) / 2``: ``l2 = scale / 2``.
  Keras' ``regularizers.l2(l)`` is ``l * sum(w**2)``: ``l2 = l``.
* torch's ``weight_decay=wd`` in SGD adds ``wd * w`` to the gradient, the gradient of ``wd / 2 * sum(w**2)``:
  ``l2 = wd / 2`` (only for plain SGD; in Adam the two are not equivalent, see AdamW).

The penalty's gradient is ``l1 * sign(w) + 2 * l2 * w`` (zero at ``w == 0`` for the L1 term).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_dnn._checks import check_number
from lightning_dnn._selection import Patterns, available_names, compile_patterns, select_parameters

__all__ = ["WEIGHT_MODULES", "WeightPenalty", "l1_penalty", "l2_penalty", "regularized_parameters"]

#: Module types whose ``weight`` parameter is regularized.
WEIGHT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.Embedding,
    nn.EmbeddingBag,
)


def regularized_parameters(
    module: nn.Module, pattern: Patterns | None = None
) -> list[tuple[str, nn.Parameter]]:
    """Return the ``(name, weight)`` pairs of ``module`` that penalties apply to.

    The weights are the ``weight`` parameters of the modules in :data:`WEIGHT_MODULES`; biases and the parameters
    of normalization layers are never included. ``pattern`` narrows the selection with the library's selection
    rule: a weight is kept when the pattern ``re.fullmatch``-es its name or the dotted name of a module holding it,
    whole or with exactly the first component dropped (on a LightningModule holding ``self.net``, ``hidden[12]``
    selects ``net.hidden1`` and ``net.hidden2``, never ``net.hidden12`` nor ``net.block.hidden1``). A weight
    shared by several modules appears once.

    Args:
        module: the model (any ``nn.Module``).
        pattern: a regex or a list of them; ``None`` selects every weight.

    Returns:
        the selected weights with their names in ``module.named_parameters()``, in that order.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module`` or ``pattern`` is not a regex (list).
        ValueError: if ``pattern`` is not a valid regex, selects no module, or the selection holds no weight;
            the message lists the available modules.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
        >>> [name for name, _ in regularized_parameters(net)]
        ['0.weight', '3.weight']
        >>> [name for name, _ in regularized_parameters(net, pattern="3")]
        ['3.weight']
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}")
    weights: dict[int, nn.Parameter] = {}
    for mod in module.modules():
        if isinstance(mod, WEIGHT_MODULES):
            weight = mod._parameters.get("weight")
            if isinstance(weight, nn.Parameter):
                weights[id(weight)] = weight
    if pattern is None:
        selected = [(name, p) for name, p in module.named_parameters() if id(p) in weights]
    else:
        selected = [(name, p) for name, p in select_parameters(module, pattern) if id(p) in weights]
    if not selected:
        where = ""
        if pattern is not None:
            where = f" selected by `pattern`={[p.pattern for p in compile_patterns('pattern', pattern)]}"
        raise ValueError(
            f"No weight to regularize{where}: penalties apply to the `weight` of "
            f"{', '.join(t.__name__ for t in WEIGHT_MODULES)} modules. Available {available_names(module)}"
        )
    return selected


def _penalty_terms(params: Sequence[Tensor], ord: float) -> Tensor:
    if ord == 1:
        return torch.stack(torch._foreach_norm(list(params), 1)).sum()
    norms = torch.stack(torch._foreach_norm(list(params), 2))
    return (norms * norms).sum()


def l1_penalty(module: nn.Module, pattern: Patterns | None = None) -> Tensor:
    """Return ``sum |w|`` over the weights :func:`regularized_parameters` selects (a differentiable scalar).

    Args:
        module: the model.
        pattern: narrows the selection (see :func:`regularized_parameters`).

    Returns:
        a 0-dim tensor on the weights' device.

    Raises:
        TypeError, ValueError: as :func:`regularized_parameters`.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        >>> l1_penalty(lin).item()
        3.5
    """
    return _penalty_terms([p for _, p in regularized_parameters(module, pattern)], 1)


def l2_penalty(module: nn.Module, pattern: Patterns | None = None) -> Tensor:
    """Return ``sum w**2`` over the weights :func:`regularized_parameters` selects (no ``1/2`` factor).

    Args:
        module: the model.
        pattern: narrows the selection (see :func:`regularized_parameters`).

    Returns:
        a 0-dim tensor on the weights' device.

    Raises:
        TypeError, ValueError: as :func:`regularized_parameters`.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        >>> l2_penalty(lin).item()
        5.25
    """
    return _penalty_terms([p for _, p in regularized_parameters(module, pattern)], 2)


class WeightPenalty:
    """The penalty ``l1 * sum|w| + l2 * sum w**2`` over a model's weights, computed cheaply at every step.

    Call it on a model to get a differentiable scalar to add to the loss. The selected weights
    (:func:`regularized_parameters`) are looked up on the first call for each model and cached (by the model's
    identity, held weakly); call :meth:`clear_cache` after replacing layers of a model already seen. The sums
    use one fused ``foreach`` norm per term.

    TF1's ``l2_regularizer(scale)`` is ``scale * sum(w**2) / 2``, so it is ``WeightPenalty(l2=scale / 2)``;
    ``l1_regularizer(scale)`` is ``WeightPenalty(l1=scale)`` (see the module docstring).

    Args:
        l1: L1 coefficient, ``>= 0``.
        l2: L2 coefficient (multiplies ``sum w**2``), ``>= 0``.
        pattern: a regex (or list) narrowing the weights, with the library's selection rule (see :mod:`lightning_dnn._selection`)
            (``"hidden[12]"``); ``None`` regularizes every weight.

    Raises:
        TypeError: if ``l1``/``l2`` are not numbers or ``pattern`` is not a regex (list).
        ValueError: if ``l1``/``l2`` are negative or not finite, or ``pattern`` is not a valid regex.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> penalty = WeightPenalty(l1=0.001, l2=0.01)
        >>> by_hand = sum(0.001 * m.weight.abs().sum() + 0.01 * m.weight.pow(2).sum() for m in (net[0], net[2]))
        >>> torch.allclose(penalty(net), by_hand)
        True
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0, pattern: Patterns | None = None) -> None:
        self.l1 = check_number("l1", l1, low=0.0)
        self.l2 = check_number("l2", l2, low=0.0)
        if pattern is not None:
            compile_patterns("pattern", pattern)
        self.pattern = pattern
        self._cache: weakref.WeakKeyDictionary[nn.Module, list[nn.Parameter]] = weakref.WeakKeyDictionary()

    @property
    def active(self) -> bool:
        """Whether the penalty is nonzero for some weights (``l1 > 0`` or ``l2 > 0``).

        Example:
            >>> WeightPenalty().active, WeightPenalty(l2=1e-4).active
            (False, True)
        """
        return self.l1 > 0.0 or self.l2 > 0.0

    def parameters(self, module: nn.Module) -> list[nn.Parameter]:
        """The weights penalized in ``module`` (cached after the first call).

        Example:
            >>> len(WeightPenalty(l1=1.0).parameters(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))))
            1
        """
        params = self._cache.get(module)
        if params is None:
            params = [p for _, p in regularized_parameters(module, self.pattern)]
            self._cache[module] = params
        return params

    def clear_cache(self) -> None:
        """Forget the cached weight lists, so the next call selects the weights again.

        Example:
            >>> WeightPenalty(l1=1.0).clear_cache()
        """
        self._cache = weakref.WeakKeyDictionary()

    def __call__(self, module: nn.Module) -> Tensor:
        """Return ``l1 * sum|w| + l2 * sum w**2`` over the weights of ``module`` as a differentiable scalar.

        Raises:
            TypeError, ValueError: as :func:`regularized_parameters`.
        """
        params = self.parameters(module)
        if self.l1 > 0.0 and self.l2 > 0.0:
            return self.l1 * _penalty_terms(params, 1) + self.l2 * _penalty_terms(params, 2)
        if self.l1 > 0.0:
            return self.l1 * _penalty_terms(params, 1)
        if self.l2 > 0.0:
            return self.l2 * _penalty_terms(params, 2)
        return params[0].new_zeros(())

    def __getstate__(self) -> dict[str, object]:
        # weak references do not pickle (DDP spawn, deepcopy of a LightningModule); the cache is rebuilt lazily
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._cache = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2}, pattern={self.pattern!r})"
