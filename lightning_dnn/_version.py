"""The package version, in one place: ``lightning_dnn.__version__``, config.json's ``library_version``, pyproject.

Example:
    >>> from lightning_dnn._version import __version__
    >>> __version__.count(".")
    2
"""

__version__ = "0.1.0"
