"""lightning-dnn: the craft of training deep networks as PyTorch Lightning parts, plus a Hub-hosted model zoo."""

from lightning_dnn.nn import MLP, get_activation, variance_scaling_

__version__ = "0.1.0"

__all__ = ["MLP", "__version__", "get_activation", "variance_scaling_"]
