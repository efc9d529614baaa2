"""The encoder's hidden blocks and the decoder that mirrors them (optionally with tied weights)."""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MirrorDecoder", "TiedLinear", "encoder_blocks", "frozen"]

_HIDDEN = re.compile(r"hidden([1-9][0-9]*)")


def encoder_blocks(encoder: nn.Module) -> list[nn.Sequential]:
    """The ``hidden1..N`` blocks of ``encoder``, each an ``nn.Sequential`` starting with an ``nn.Linear``.

    Raises:
        TypeError: if ``encoder`` is not an ``nn.Module``, has no ``hidden1..N`` children, the numbering has a gap,
            or a block does not start with a linear layer (e.g. a ConvNet, whose blocks are ``conv1..N``).
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"`encoder` must be an nn.Module, got {type(encoder).__name__}")
    found = {
        int(m.group(1)): child for name, child in encoder.named_children() if (m := _HIDDEN.fullmatch(name))
    }
    if not found:
        children = [name for name, _ in encoder.named_children()]
        raise TypeError(
            f"`encoder` must have hidden blocks named hidden1..hiddenN (as lightning_dnn.nn.MLP has), got "
            f"{type(encoder).__name__} with children {children}; convolutional encoders are not supported: "
            "mirror them yourself or use an MLP"
        )
    if sorted(found) != list(range(1, len(found) + 1)):
        raise TypeError(
            f"`encoder` hidden blocks must be numbered hidden1..hiddenN without gaps, got {sorted(found)}"
        )
    blocks = [found[i] for i in range(1, len(found) + 1)]
    for i, block in enumerate(blocks, start=1):
        first = next(iter(block.children()), None) if isinstance(block, nn.Sequential) else None
        if not isinstance(first, nn.Linear):
            raise TypeError(
                f"`encoder`.hidden{i} must be an nn.Sequential starting with an nn.Linear (linear -> [bn] -> act "
                f"-> [dropout], as in lightning_dnn.nn.MLP), got {type(block).__name__} starting with "
                f"{type(first).__name__}"
            )
    for i in range(1, len(blocks)):
        if _linear(blocks[i]).in_features != _linear(blocks[i - 1]).out_features:
            raise TypeError(
                f"`encoder`.hidden{i + 1} takes {_linear(blocks[i]).in_features} features but hidden{i} gives "
                f"{_linear(blocks[i - 1]).out_features}"
            )
    return blocks  # type: ignore[return-value]


def _linear(block: nn.Module) -> nn.Linear:
    first = next(iter(block.children()))
    assert isinstance(first, nn.Linear)  # checked by encoder_blocks
    return first


def _activation(block: nn.Module) -> nn.Module:
    """A fresh copy of the block's activation (``act`` child, else its first non-linear/norm/dropout child)."""
    act = getattr(block, "act", None)
    if isinstance(act, nn.Module):
        return copy.deepcopy(act)
    skip = (nn.Linear, nn.Dropout, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
    for child in block.children():
        if not isinstance(child, skip):
            return copy.deepcopy(child)
    return nn.Identity()


class TiedLinear(nn.Module):
    """``y = x @ W + b`` with ``W`` the weight of another ``nn.Linear`` (its transpose as a layer): tied weights.

    The weight is read from ``source`` at every call and is not a parameter of this module, so it is trained,
    counted and saved once, as the encoder's; only the bias belongs here.

    Example:
        >>> enc = nn.Linear(4, 3)
        >>> dec = TiedLinear(enc)
        >>> [name for name, _ in dec.named_parameters()], dec(torch.zeros(2, 3)).shape
        (['bias'], torch.Size([2, 4]))
    """

    def __init__(self, source: nn.Linear) -> None:
        super().__init__()
        self._source = (source,)  # a tuple: not registered as a child, so its weight is not a parameter here
        self.in_features, self.out_features = source.out_features, source.in_features
        self.bias = nn.Parameter(torch.zeros(source.in_features))

    @property
    def weight(self) -> Tensor:
        """The tied weight, ``source.weight.T`` (shape ``[out_features, in_features]`` of this layer)."""
        return self._source[0].weight.t()

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x @ source.weight + bias``."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        """The sizes, and that the weight is tied."""
        return f"in_features={self.in_features}, out_features={self.out_features}, tied=True"


class MirrorDecoder(nn.Module):
    """The mirror image of an encoder's hidden blocks: ``mirrorN`` first, ``mirror1`` last (to the input size).

    ``mirrorK`` maps the output of ``hiddenK`` back to its input: a linear layer (or a :class:`TiedLinear` on
    ``hiddenK``'s weight), followed by the activation of ``hidden(K-1)`` so that it reproduces that layer's
    codings; ``mirror1`` has no activation (its outputs are the reconstruction, or its logits for BCE).

    Example:
        >>> from lightning_dnn.nn import MLP
        >>> dec = MirrorDecoder(MLP(6, (4, 2), 3).hidden_blocks, tied=True)
        >>> [name for name, _ in dec.named_children()], dec(torch.zeros(5, 2)).shape
        (['mirror2', 'mirror1'], torch.Size([5, 6]))
    """

    def __init__(self, blocks: list[nn.Sequential], *, tied: bool = False) -> None:
        super().__init__()
        self.depth = len(blocks)
        for k in range(self.depth, 0, -1):
            source = _linear(blocks[k - 1])
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            layers["linear"] = (
                TiedLinear(source) if tied else nn.Linear(source.out_features, source.in_features)
            )
            if k > 1:
                layers["act"] = _activation(blocks[k - 2])
            self.add_module(f"mirror{k}", nn.Sequential(layers))
        if not tied:
            for k in range(1, self.depth + 1):
                linear = self.mirror(k)[0]
                assert isinstance(linear, nn.Linear)
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)

    def mirror(self, k: int) -> nn.Sequential:
        """The block ``mirrorK`` (``1 <= k <= depth``)."""
        block: nn.Sequential = getattr(self, f"mirror{k}")
        return block

    def forward(self, codes: Tensor) -> Tensor:
        """Decode the top codings (output of ``hiddenN``) to the input space."""
        for k in range(self.depth, 0, -1):
            codes = self.mirror(k)(codes)
        return codes


@contextmanager
def frozen(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run ``modules`` in eval mode without gradients, restoring each one's training flags afterwards."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode
