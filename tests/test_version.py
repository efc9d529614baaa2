"""One version: ``lightning_dnn/_version.py`` is what the package, pyproject and saved folders report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lightning_dnn
from lightning_dnn._version import __version__
from lightning_dnn.hub import save_pretrained
from lightning_dnn.nn import MLP

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_the_package_reports_the_version_of_version_py() -> None:
    assert lightning_dnn.__version__ == __version__
    assert all(part.isdigit() for part in __version__.split("."))


def test_pyproject_takes_its_version_from_version_py() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads(PYPROJECT.read_text())
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lightning_dnn._version.__version__"}


def test_saved_folders_record_the_version(tmp_path: Path) -> None:
    folder = save_pretrained(MLP(4, (3,), 2), tmp_path)
    assert json.loads((folder / "config.json").read_text())["library_version"] == __version__
