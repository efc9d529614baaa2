"""A small convolutional classifier whose lower blocks are worth caching (FeatureCache, the zoo's conv entry).

``ConvNet(in_channels=1, channels=(32, 64, 128), num_classes=10)`` has children ``conv1`` ... ``convN`` and
``output``. Each conv block is ``conv`` (3x3, padding 1, no bias under batch norm) -> ``bn`` -> ``act`` ->
``pool`` (2x2 max-pool); ``output`` is ``flatten`` -> ``linear`` over the last block's channels after global
average pooling (``pool`` in ``output``), so the head is a single linear layer whatever the input size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch  # noqa: F401  (used by the doctests)
from torch import Tensor, nn

from lightning_dnn._checks import check_int, check_number
from lightning_dnn.nn.activations import get_activation
from lightning_dnn.nn.init import _resolve_init, init_weights_

__all__ = ["ConvNet"]


class ConvNet(nn.Module):
    """Conv blocks ``conv1..N`` (conv 3x3 -> batch norm -> activation -> 2x2 max-pool) and a linear ``output``.

    Args:
        in_channels: input channels (1 for MNIST-like images).
        channels: output channels of each conv block, a non-empty sequence of positive ints.
        num_classes: number of outputs.
        activation: a name accepted by :func:`~lightning_dnn.nn.get_activation` (JSON-able).
        init: weight init scheme name (``"he_normal"``, ...).
        bn_momentum: torch's batch-norm momentum in ``(0, 1]``.

    Raises:
        TypeError, ValueError: for arguments of the wrong type or out of range, naming the argument.

    Example:
        >>> net = ConvNet(1, (8, 16), 10)
        >>> [n for n, _ in net.named_children()]
        ['conv1', 'conv2', 'output']
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> net.forward_features(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 16, 7, 7])
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128),
        num_classes: int = 10,
        *,
        activation: str = "relu",
        init: str = "he_normal",
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, low=1)
        if isinstance(channels, str | bytes) or not isinstance(channels, Sequence) or len(channels) == 0:
            raise ValueError(f"`channels` must be a non-empty sequence of positive ints, got {channels!r}")
        self.channels = tuple(check_int(f"channels[{i}]", c, low=1) for i, c in enumerate(channels))
        self.num_classes = check_int("num_classes", num_classes, low=1)
        if not isinstance(activation, str):
            raise TypeError(f"`activation` must be an activation name, got {type(activation).__name__}")
        get_activation(activation)
        if not isinstance(init, str):
            raise TypeError(f"`init` must be an init scheme name, got {type(init).__name__}")
        _resolve_init("init", init)
        self.activation = activation
        self.init = init
        self.bn_momentum = check_number("bn_momentum", bn_momentum, low=0.0, high=1.0, low_inclusive=False)
        width = self.in_channels
        for i, c in enumerate(self.channels, start=1):
            block: OrderedDict[str, nn.Module] = OrderedDict()
            block["conv"] = nn.Conv2d(width, c, kernel_size=3, padding=1, bias=False)
            block["bn"] = nn.BatchNorm2d(c, momentum=self.bn_momentum)
            block["act"] = get_activation(activation)
            block["pool"] = nn.MaxPool2d(2)
            self.add_module(f"conv{i}", nn.Sequential(block))
            width = c
        self.output = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), linear=nn.Linear(width, self.num_classes)
            )
        )
        init_weights_(self, init)

    @property
    def out_features(self) -> int:
        """Number of classes (what DNNClassifier reads)."""
        return self.num_classes

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments; ``ConvNet.from_config(net.config)`` rebuilds the architecture.

        Example:
            >>> ConvNet(1, (8,), 3).config["channels"]
            [8]
        """
        return {
            "in_channels": self.in_channels,
            "channels": list(self.channels),
            "num_classes": self.num_classes,
            "activation": self.activation,
            "init": self.init,
            "bn_momentum": self.bn_momentum,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ConvNet:
        """Build a ConvNet from :attr:`config`.

        Example:
            >>> net = ConvNet(1, (4, 8), 5)
            >>> ConvNet.from_config(net.config).config == net.config
            True
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"`config` must be a mapping, got {type(config).__name__}")
        allowed = {"in_channels", "channels", "num_classes", "activation", "init", "bn_momentum"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"`config` has unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")
        return cls(**dict(config))

    def forward_features(self, x: Tensor) -> Tensor:
        """Apply the conv blocks to images ``[N, C, H, W]`` (a flat ``[N, H*W]`` batch is reshaped if square).

        Example:
            >>> ConvNet(1, (4,), 2).forward_features(torch.zeros(3, 784)).shape
            torch.Size([3, 4, 14, 14])
        """
        if x.dim() == 2:
            side = round((x.shape[1] / self.in_channels) ** 0.5)
            if side * side * self.in_channels != x.shape[1]:
                raise ValueError(
                    f"`x` must be images [N, {self.in_channels}, H, W] or flat square images, got {tuple(x.shape)}"
                )
            x = x.view(x.shape[0], self.in_channels, side, side)
        if x.dim() != 4:
            raise ValueError(f"`x` must be images [N, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        for i in range(1, len(self.channels) + 1):
            x = getattr(self, f"conv{i}")(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        """Global average pooling and the linear ``output`` layer: logits."""
        out: Tensor = self.output(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``forward_head(forward_features(x))``."""
        return self.forward_head(self.forward_features(x))
