"""``python -m lightning_dnn.cli ARGS``: the same as the ``lightning-dnn ARGS`` console script."""

from lightning_dnn.cli import main

if __name__ == "__main__":
    main()
