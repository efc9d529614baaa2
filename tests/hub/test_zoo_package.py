"""The zoo index ships inside the package: it equals zoo/index.json, and `zoo:` names resolve from a wheel install.

The wheel test builds the wheel offline (``pip wheel --no-build-isolation --no-index``), checks what it holds,
unpacks it into a folder that a fresh interpreter puts first on ``sys.path`` (run from elsewhere, so the source
tree is not importable), and loads ``zoo:`` names there through huggingface_hub from the local Hub server
(``HF_ENDPOINT``), then again from the cache alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lightning_dnn._version import __version__
from lightning_dnn.cli import _zoo_repo
from lightning_dnn.cli._zoo_repo import file_hashes, update_index
from lightning_dnn.hub import zoo
from lightning_dnn.hub.zoo import PACKAGED_INDEX_PATH, ZOO_INDEX_ENV, default_index_path, load_zoo_index
from tests.hub.conftest import HubServer
from tests.hub.test_zoo_entries import ENTRIES, INDEX, ROOT, serve_zoo

DIGITS = "digits-mlp-classes0-4"

# Run by a fresh interpreter with only the unpacked wheel (and the environment's dependencies) importable.
WHEEL_SCRIPT = """
import json, sys
from pathlib import Path
import lightning_dnn
from lightning_dnn.hub import load_pretrained, resolve_source, resolve_zoo
from lightning_dnn.hub.zoo import default_index_path

site = Path(sys.argv[1]).resolve()
name = sys.argv[2]
assert Path(lightning_dnn.__file__).resolve().is_relative_to(site), lightning_dnn.__file__
repo_id, revision, files, local = resolve_zoo(name)
net, report = load_pretrained(f"zoo:{name}")
folder, described = resolve_source(f"zoo:{name}")
offline, _ = load_pretrained(f"zoo:{name}", local_files_only=True)
print(json.dumps({
    "index": str(default_index_path()), "local": local, "repo_id": repo_id, "revision": revision,
    "folder": str(folder), "described": described, "loaded": len(report.loaded), "ok": report.ok,
    "same_offline": all(bool((a == b).all()) for a, b in zip(net.state_dict().values(), offline.state_dict().values())),
}))
"""


def test_packaged_index_equals_the_maintainers_index() -> None:
    assert PACKAGED_INDEX_PATH.read_bytes() == INDEX.read_bytes()
    assert PACKAGED_INDEX_PATH.parent == Path(zoo.__file__).resolve().parent


def test_loader_reads_the_packaged_index_unless_the_environment_names_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ZOO_INDEX_ENV, raising=False)
    assert default_index_path() == PACKAGED_INDEX_PATH
    packaged = load_zoo_index()
    assert packaged == ENTRIES  # in a clone, its `path`s name the clone's zoo folders, as zoo/index.json's do
    assert packaged[DIGITS].local_path == ROOT / "zoo" / DIGITS
    other = tmp_path / "zoo" / "index.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"models": {}}))
    monkeypatch.setenv(ZOO_INDEX_ENV, str(other))
    assert default_index_path() == other and load_zoo_index() == {}


def test_writing_the_maintainers_index_writes_the_packaged_copy_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    maintainers, packaged = tmp_path / "zoo" / "index.json", tmp_path / "pkg" / "zoo_index.json"
    monkeypatch.setattr(_zoo_repo, "MAINTAINERS_INDEX_PATH", maintainers)
    monkeypatch.setattr(_zoo_repo, "PACKAGED_INDEX_PATH", packaged)
    monkeypatch.delenv(ZOO_INDEX_ENV, raising=False)
    assert _zoo_repo.maintainers_index_path() == maintainers
    update_index(maintainers, "m", {"license": "mit"})
    assert packaged.read_bytes() == maintainers.read_bytes()
    elsewhere = tmp_path / "other" / "index.json"
    update_index(elsewhere, "n", {"license": "mit"})  # any other index: the package is left alone
    assert packaged.read_bytes() == maintainers.read_bytes() != elsewhere.read_bytes()


def _build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the sources (so the checkout gets no build/ or egg-info), offline."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "lightning_dnn", source / "lightning_dnn", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    out = tmp_path / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--disable-pip-version-check", "-q", "-w", str(out), str(source)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = out.glob("lightning_dnn-*.whl")
    return wheel


def test_wheel_ships_the_index_and_resolves_zoo_names_from_it(olah: HubServer, tmp_path: Path) -> None:
    entry = ENTRIES[DIGITS]
    serve_zoo(olah)  # the entries' canonical repositories, at the pinned commits
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert archive.read("lightning_dnn/hub/zoo_index.json") == INDEX.read_bytes()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        assert f"\nVersion: {__version__}\n" in metadata  # pyproject's version is _version.py's
        assert "lightning-dnn = lightning_dnn.cli:main" in entry_points
        assert {"lightning_dnn/py.typed", "lightning_dnn/cli/__main__.py"} <= names
        assert not any(n.startswith("zoo/") for n in names)  # weights come from the Hub, not the wheel
        site = tmp_path / "site"
        archive.extractall(site)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LIGHTNING_DNN_"))}
    env.update(
        PYTHONPATH=str(site), HF_ENDPOINT=olah.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", WHEEL_SCRIPT, str(site), DIGITS],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["index"]) == site / "lightning_dnn" / "hub" / "zoo_index.json"
    assert result["local"] is None  # no zoo folder next to an installed package: the Hub serves it
    assert (result["repo_id"], result["revision"]) == (entry.repo_id, entry.revision)
    assert result["described"] == f"zoo:{DIGITS} (hf://{entry.repo_id}@{entry.revision})"
    folder = Path(result["folder"])
    assert folder.is_relative_to(tmp_path / "hf") and folder.name == entry.revision
    assert file_hashes(folder) == dict(entry.files)
    assert result["ok"] and result["loaded"] > 0 and result["same_offline"]
