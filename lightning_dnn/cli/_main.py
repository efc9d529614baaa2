"""The ``lightning-dnn`` console script: ``zoo ...`` goes to the zoo commands, everything else to LightningCLI."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning_dnn.cli.training import DNNCLI
from lightning_dnn.cli.zoo import zoo_main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-dnn`` console script.

    ``lightning-dnn fit --config examples/configs/tf1_notebook.yaml`` trains; ``fit|validate|test|predict`` follow
    LightningCLI; ``lightning-dnn zoo list|info|pull|build|publish`` manages the model zoo.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv``.

    Raises:
        SystemExit: with the zoo command's exit code, or from LightningCLI (``--help``, a bad argument).

    Example:
        >>> main(["zoo", "info", "no-such-model"])  # stderr: Unknown zoo model 'no-such-model' ...
        Traceback (most recent call last):
            ...
        SystemExit: 2
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["zoo"]:
        raise SystemExit(zoo_main(args[1:]))
    DNNCLI(args=None if argv is None else args)
