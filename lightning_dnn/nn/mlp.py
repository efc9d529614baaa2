"""The multilayer perceptron of Géron's chapter 11, with the TF1 scope names kept as module names.

``MLP(784, (300, 100), 10)`` has the children ``hidden1``, ``hidden2`` and ``output`` (plus ``input_dropout``
when ``input_dropout > 0``), so a pattern like ``hidden[12]`` selects layers exactly as the TF1 scopes did.
Each hidden block is an ``nn.Sequential`` with children ``linear`` -> ``bn`` (``norm="batch"`` only) -> ``act``
-> ``dropout`` (``dropout > 0`` only); ``output`` holds ``linear`` and, with ``output_norm=True``, ``bn``. So
parameter names read ``hidden1.linear.weight``, ``hidden1.bn.running_mean``, ``output.linear.bias``.

Batch norm and TensorFlow: TF's moving averages use ``moving = decay * moving + (1 - decay) * batch`` while
torch's use ``running = (1 - momentum) * running + momentum * batch``, so ``momentum = 1 - decay``
(:func:`tf_decay_to_torch_momentum`): TF's common ``decay=0.99`` is ``bn_momentum=0.01``, and the
``momentum=0.9`` of Géron's TF1 notebook is torch's default ``0.1``. (TF's ``epsilon`` default is ``1e-3``,
torch's ``1e-5``; we keep torch's.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_dnn._checks import check_bool, check_choice, check_int, check_number, check_probability
from lightning_dnn.nn.activations import ActivationLike, get_activation
from lightning_dnn.nn.init import InitScheme, _resolve_init, init_weights_

__all__ = ["MLP", "tf_decay_to_torch_momentum"]

_NORMS = ("batch",)


def tf_decay_to_torch_momentum(decay: float) -> float:
    """Convert a TensorFlow batch-norm ``decay`` (``momentum`` in ``tf.layers``) to torch's ``momentum``.

    TF updates ``moving = decay * moving + (1 - decay) * batch``; torch updates
    ``running = (1 - momentum) * running + momentum * batch``; hence ``momentum = 1 - decay``.

    Args:
        decay: TF's decay, in ``[0, 1)``.

    Returns:
        torch's momentum, in ``(0, 1]``.

    Raises:
        TypeError: if ``decay`` is not a number.
        ValueError: if ``decay`` is outside ``[0, 1)``.

    Example:
        >>> round(tf_decay_to_torch_momentum(0.99), 6)
        0.01
    """
    return 1.0 - check_number("decay", decay, low=0.0, high=1.0, high_inclusive=False)


class MLP(nn.Module):
    """A fully connected classifier: ``hidden1`` ... ``hiddenN`` then ``output`` (logits).

    Linear layers followed by batch norm have no bias (batch norm's ``beta`` does its job); all other biases
    start at zero. Weights follow ``init`` (see :mod:`lightning_dnn.nn.init`); batch-norm layers keep
    ``gamma = 1, beta = 0``.

    Args:
        in_features: input size; inputs with more than 2 dims are flattened (``[N, 1, 28, 28]`` -> ``[N, 784]``).
        hidden: size of each hidden layer, an int (one layer) or a non-empty sequence of positive ints.
        out_features: number of outputs (classes).
        activation: the hidden activation: a name (``"elu"``), a ``{"name": ..., **kwargs}`` mapping, a module
            (deep-copied into each block) or a module class. Only names and mappings are JSON-able (``config``).
        norm: ``None`` or ``"batch"`` (``BatchNorm1d`` between each hidden linear layer and its activation).
        dropout: dropout rate after each hidden activation, in ``[0, 1)``.
        input_dropout: dropout rate on the inputs, in ``[0, 1)``.
        init: weight init scheme name (``"he_normal"``, ...) or a callable ``fn(weight)``.
        bn_momentum: torch's batch-norm momentum in ``(0, 1]``; TF's ``decay`` ``d`` is ``1 - d``
            (:func:`tf_decay_to_torch_momentum`).
        output_norm: also batch-normalize the logits, as the TF1 notebook does.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if an argument is out of range or unknown.

    Example:
        >>> net = MLP(784, (300, 100), 10, norm="batch")
        >>> [name for name, _ in net.named_children()]
        ['hidden1', 'hidden2', 'output']
        >>> [name for name, _ in net.hidden1.named_children()]
        ['linear', 'bn', 'act']
        >>> net(torch.randn(4, 1, 28, 28)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        in_features: int,
        hidden: int | Sequence[int] = (300, 100),
        out_features: int = 10,
        *,
        activation: ActivationLike = "elu",
        norm: Literal["batch"] | None = None,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        init: InitScheme = "he_normal",
        bn_momentum: float = 0.1,
        output_norm: bool = False,
    ) -> None:
        super().__init__()
        in_features = check_int("in_features", in_features, low=1)
        out_features = check_int("out_features", out_features, low=1)
        sizes = _check_hidden(hidden)
        if norm is not None:
            try:
                check_choice("norm", norm, _NORMS)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{err} (or None for no normalization)") from None
        dropout = check_probability("dropout", dropout)
        input_dropout = check_probability("input_dropout", input_dropout)
        _resolve_init("init", init)
        bn_momentum = check_number("bn_momentum", bn_momentum, low=0.0, high=1.0, low_inclusive=False)
        check_bool("output_norm", output_norm)
        try:
            get_activation(activation)
        except (TypeError, ValueError) as err:
            raise type(err)(f"`activation`: {err}") from None
        # Keep only the JSON-able form: storing a module instance as an attribute would register it as a child.
        self._activation_config: str | dict[str, Any] | None = (
            activation
            if isinstance(activation, str)
            else dict(activation)
            if isinstance(activation, Mapping)
            else None
        )
        self._activation_repr = repr(activation)

        self.in_features = in_features
        self.hidden_sizes = sizes
        self.out_features = out_features
        self._init_config: str | None = init if isinstance(init, str) else None
        self._init_repr = repr(init)
        self._options: dict[str, Any] = {
            "norm": norm,
            "dropout": dropout,
            "input_dropout": input_dropout,
            "bn_momentum": bn_momentum,
            "output_norm": output_norm,
        }

        if input_dropout > 0:
            self.input_dropout = nn.Dropout(input_dropout)
        width = in_features
        for i, size in enumerate(sizes, start=1):
            block: OrderedDict[str, nn.Module] = OrderedDict()
            block["linear"] = nn.Linear(width, size, bias=norm is None)
            if norm == "batch":
                block["bn"] = nn.BatchNorm1d(size, momentum=bn_momentum)
            block["act"] = get_activation(activation)
            if dropout > 0:
                block["dropout"] = nn.Dropout(dropout)
            self.add_module(f"hidden{i}", nn.Sequential(block))
            width = size
        head: OrderedDict[str, nn.Module] = OrderedDict()
        head["linear"] = nn.Linear(width, out_features, bias=not output_norm)
        if output_norm:
            head["bn"] = nn.BatchNorm1d(out_features, momentum=bn_momentum)
        self.output = nn.Sequential(head)
        init_weights_(self, init)

    @property
    def hidden_blocks(self) -> list[nn.Sequential]:
        """The hidden blocks ``hidden1`` ... ``hiddenN``, in order.

        Example:
            >>> [block.linear.out_features for block in MLP(784, (300, 100), 10).hidden_blocks]
            [300, 100]
        """
        return [getattr(self, f"hidden{i}") for i in range(1, len(self.hidden_sizes) + 1)]

    @property
    def config(self) -> dict[str, Any]:
        """The JSON-able constructor arguments; ``MLP.from_config(net.config)`` rebuilds the architecture.

        Raises:
            TypeError: if ``activation`` was given as a module (instance or class) or ``init`` as a callable,
                which cannot be written to JSON; pass names instead.

        Example:
            >>> MLP(784, 100, 10, activation="relu").config["hidden"]
            [100]
        """
        if self._activation_config is None:
            raise TypeError(
                f"MLP.config needs `activation` as a name or a {{'name': ..., **kwargs}} mapping to be JSON-able, "
                f"but this MLP was built with {self._activation_repr}; rebuild it with e.g. activation='elu'"
            )
        if self._init_config is None:
            raise TypeError(
                f"MLP.config needs `init` as a scheme name to be JSON-able, but this MLP was built with "
                f"{self._init_repr}; rebuild it with e.g. init='he_normal'"
            )
        activation = self._activation_config
        if isinstance(activation, dict):
            activation = dict(activation)
        return {
            "in_features": self.in_features,
            "hidden": list(self.hidden_sizes),
            "out_features": self.out_features,
            "activation": activation,
            "init": self._init_config,
            **self._options,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MLP:
        """Build an MLP from :attr:`config` (e.g. read from ``config.json``).

        Args:
            config: constructor keyword arguments; ``in_features`` is required.

        Returns:
            a new, freshly initialized MLP.

        Raises:
            TypeError: if ``config`` is not a mapping.
            ValueError: if it has unknown keys or lacks ``in_features``; constructor errors otherwise.

        Example:
            >>> net = MLP(20, (8, 4), 3, norm="batch")
            >>> MLP.from_config(net.config).config == net.config
            True
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"`config` must be a mapping, got {type(config).__name__}")
        allowed = {
            "in_features",
            "hidden",
            "out_features",
            "activation",
            "norm",
            "dropout",
            "input_dropout",
            "init",
            "bn_momentum",
            "output_norm",
        }
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"`config` has unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")
        if "in_features" not in config:
            raise ValueError("`config` must contain 'in_features'")
        kwargs = dict(config)
        in_features = kwargs.pop("in_features")
        return cls(in_features, **kwargs)

    def forward_features(self, x: Tensor) -> Tensor:
        """Flatten ``x`` to ``[N, in_features]``, apply input dropout and every hidden block.

        Example:
            >>> MLP(784, (300, 100), 10).forward_features(torch.zeros(2, 784)).shape
            torch.Size([2, 100])
        """
        if x.dim() < 2:
            raise ValueError(
                f"`x` must be a batch [N, {self.in_features}] (or [N, ...]), got shape {tuple(x.shape)}"
            )
        if x.dim() > 2:
            x = torch.flatten(x, 1)
        if hasattr(self, "input_dropout"):
            x = self.input_dropout(x)
        for block in self.hidden_blocks:
            x = block(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        """Apply the ``output`` block to hidden features, giving logits.

        Example:
            >>> net = MLP(784, (300, 100), 10)
            >>> net.forward_head(torch.zeros(2, 100)).shape
            torch.Size([2, 10])
        """
        out: Tensor = self.output(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``forward_head(forward_features(x))``."""
        return self.forward_head(self.forward_features(x))


def _check_hidden(hidden: Any) -> tuple[int, ...]:
    if isinstance(hidden, bool):
        raise TypeError(f"`hidden` must be an int or a sequence of ints, got bool {hidden!r}")
    if isinstance(hidden, int):
        return (check_int("hidden", hidden, low=1),)
    if isinstance(hidden, str) or not isinstance(hidden, Sequence):
        raise TypeError(
            f"`hidden` must be an int or a sequence of ints, got {type(hidden).__name__} {hidden!r}"
        )
    if len(hidden) == 0:
        raise ValueError("`hidden` must contain at least one layer size, got an empty sequence")
    return tuple(check_int(f"hidden[{i}]", size, low=1) for i, size in enumerate(hidden))
