"""Plain-torch building blocks: variance-scaling init, activations by name and the MLP (no Lightning here)."""

from lightning_dnn.nn.activations import ActivationLike, available_activations, get_activation
from lightning_dnn.nn.convnet import ConvNet
from lightning_dnn.nn.init import (
    TRUNCATED_NORMAL_STD_FACTOR,
    Distribution,
    FanMode,
    InitScheme,
    InitSpec,
    available_inits,
    compute_fans,
    get_init,
    init_weights_,
    register_init,
    variance_scaling_,
)
from lightning_dnn.nn.mlp import MLP, tf_decay_to_torch_momentum

__all__ = [
    "MLP",
    "TRUNCATED_NORMAL_STD_FACTOR",
    "ActivationLike",
    "ConvNet",
    "Distribution",
    "FanMode",
    "InitScheme",
    "InitSpec",
    "available_activations",
    "available_inits",
    "compute_fans",
    "get_activation",
    "get_init",
    "init_weights_",
    "register_init",
    "tf_decay_to_torch_momentum",
    "variance_scaling_",
]
