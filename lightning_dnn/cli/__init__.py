"""The ``lightning-dnn`` command: LightningCLI for training, and the ``zoo`` commands with the zoo's build pipeline.

* :func:`main`: the console script (``lightning-dnn fit --config FILE``, ``lightning-dnn zoo list``);
* :class:`DNNCLI`: LightningCLI over :class:`~lightning_dnn.DNNClassifier` with our defaults (loggers, progress
  bar, learning curves), in :mod:`lightning_dnn.cli.training`;
* :mod:`lightning_dnn.cli.zoo`: ``lightning-dnn zoo list|info|pull|build|publish``.

``python -m lightning_dnn.cli`` runs :func:`main` too.
"""

from lightning_dnn.cli._main import main
from lightning_dnn.cli.training import DNNCLI, ThrottledRichProgressBar, default_loggers

__all__ = ["DNNCLI", "ThrottledRichProgressBar", "default_loggers", "main"]
