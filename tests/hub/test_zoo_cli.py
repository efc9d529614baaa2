"""``lightning-dnn zoo list|info|pull|build|publish``: output, exit codes, and what each command changes.

Downloads go to the olah server of ``conftest.py`` serving the zoo's canonical repositories; builds train the
digits entry for an epoch or a few; ``publish`` runs against recorders of HfApi's upload methods (no server here
accepts uploads; the one place a test double is right).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi

from lightning_dnn.cli._zoo_repo import canonical_commit, file_hashes
from lightning_dnn.cli.zoo import zoo_main
from lightning_dnn.data import DigitsDataModule
from lightning_dnn.hub import load_pretrained, load_zoo_index
from lightning_dnn.hub.zoo import ZOO_INDEX_ENV
from tests.hub.conftest import HubServer, write_zoo_index
from tests.hub.test_zoo_entries import ENTRIES, INDEX, ROOT, remote_index, serve_zoo

DIGITS = "digits-mlp-classes0-4"
QUIET = ["--", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The repository's index unless a test says otherwise, and one intra-op thread (shared 2-core machine)."""
    monkeypatch.delenv(ZOO_INDEX_ENV, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone-like copy of the zoo with the digits entry only: ``<clone>/zoo/index.json``."""
    root = tmp_path / "clone"
    shutil.copytree(ROOT / "zoo" / DIGITS, root / "zoo" / DIGITS)
    raw = json.loads(INDEX.read_text())["models"]
    write_zoo_index(root / "zoo" / "index.json", {DIGITS: raw[DIGITS]})
    return root


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = zoo_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def digits_test_accuracy(folder: Path, classes: list[int]) -> float:
    """Accuracy of the folder's network on the digits test split, by a plain forward pass."""
    net, _ = load_pretrained(folder)
    data = DigitsDataModule(classes=classes)
    data.setup("test")
    x, y = data.tensors("test")
    with torch.inference_mode():
        return float((net(x).argmax(dim=1) == y).double().mean())


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ list, info
def test_list_shows_every_entry_with_repo_accuracy_license_and_offline_mark(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "REPO", "ACCURACY", "LICENSE", "OFFLINE"]
    for name, entry in ENTRIES.items():
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.split() == [
            name,
            entry.repo_id,
            f"{entry.metrics['test_accuracy']:.4f}" if "test_accuracy" in entry.metrics else "-",
            "apache-2.0",
            "local",
        ]
    code, out, _ = run(capsys, "list", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and set(rows) == set(ENTRIES)
    for name, entry in ENTRIES.items():
        assert rows[name]["revision"] == entry.revision and rows[name]["metrics"] == dict(entry.metrics)


def test_list_marks_remote_entries_cached_after_a_pull(
    capsys: pytest.CaptureFixture[str], olah: HubServer, tmp_path: Path
) -> None:
    serve_zoo(olah)
    index = str(remote_index(tmp_path / "zoo" / "index.json"))
    rows = {r["name"]: r for r in json.loads(run(capsys, "--index", index, "list", "--json")[1])}
    assert rows[DIGITS]["offline"] in (None, "cached")  # other tests may have pulled into the shared cache
    assert run(capsys, "--index", index, "pull", DIGITS, "--endpoint", olah.url)[0] == 0  # the default cache
    rows = {r["name"]: r for r in json.loads(run(capsys, "--index", index, "list", "--json")[1])}
    assert rows[DIGITS]["offline"] == "cached"


def test_info_shows_the_entry_card_and_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    entry = ENTRIES[DIGITS]
    assert entry.local_path is not None
    code, out, _ = run(capsys, "info", DIGITS)
    assert code == 0
    assert f"hf://{entry.repo_id}@{entry.revision}" in out
    assert "canonical local commit" in out
    assert f"recipe:    {entry.local_path / 'recipe.yaml'}" in out
    assert f"lightning-dnn zoo build {DIGITS}" in out
    for name, sha in entry.files.items():
        assert f"{name:<20}sha256 {sha}" in out
    net, _ = load_pretrained(entry.local_path)
    assert f"parameters:   {sum(p.numel() for p in net.parameters())}" in out
    code, out, _ = run(capsys, "info", DIGITS, "--json")
    details = json.loads(out)
    assert details["card"]["description"].startswith("An MLP for scikit-learn's embedded 8x8 digits")
    assert details["card"]["classes"] == ["0", "1", "2", "3", "4"]
    assert details["local_state"] == "verified" and details["metrics"] == dict(entry.metrics)


@pytest.mark.parametrize("command", ["info", "pull", "build", "publish"])
def test_unknown_names_exit_2_with_close_matches(capsys: pytest.CaptureFixture[str], command: str) -> None:
    extra = ["--repo-id", "me/x"] if command == "publish" else []
    code, out, err = run(capsys, command, "digits-mlp-classes0-3", *extra)
    assert code == 2 and out == ""
    assert "Did you mean 'digits-mlp-classes0-4'" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "publish", DIGITS)[0] == 2  # --repo-id is required
    code, _, err = run(capsys, "info", DIGITS, "--", "--trainer.max_epochs=1")
    assert code == 2 and "only for `build`" in err
    code, _, err = run(capsys, "publish", DIGITS, "--repo-id", "not a repo")
    assert code == 2 and "--repo-id must look like 'org/name'" in err


# ------------------------------------------------------------------------------------------------ pull
def test_pull_downloads_the_pinned_commit_verified(
    capsys: pytest.CaptureFixture[str], olah: HubServer, tmp_path: Path
) -> None:
    serve_zoo(olah)
    entry = ENTRIES[DIGITS]
    index = str(remote_index(tmp_path / "zoo" / "index.json"))
    cache = tmp_path / "cache"
    code, out, err = run(
        capsys, "--index", index, "pull", DIGITS, "--endpoint", olah.url, "--cache-dir", str(cache)
    )
    assert code == 0, err
    snapshot = cache / "models--lightning-dnn--digits-mlp-classes0-4" / "snapshots" / entry.revision
    assert out == f"{snapshot}\n"
    assert file_hashes(snapshot) == dict(entry.files)
    assert "sha256 verified" in err
    local = tmp_path / "copy"
    code, out, _ = run(
        capsys,
        "--index",
        index,
        "pull",
        DIGITS,
        "--offline",
        "--cache-dir",
        str(cache),
        "--local-dir",
        str(local),
    )
    assert code == 0 and out == f"{local}\n" and file_hashes(local) == dict(entry.files)


def test_pull_of_a_file_with_another_hash_fails_and_leaves_no_copy(
    capsys: pytest.CaptureFixture[str], olah: HubServer, tmp_path: Path
) -> None:
    serve_zoo(olah)
    raw = json.loads(INDEX.read_text())["models"][DIGITS]
    raw = {k: v for k, v in raw.items() if k != "path"}
    raw["files"] = {**raw["files"], "README.md": hashlib.sha256(b"another card").hexdigest()}
    index = str(write_zoo_index(tmp_path / "zoo" / "index.json", {DIGITS: raw}))
    cache = tmp_path / "cache"
    code, out, err = run(
        capsys, "--index", index, "pull", DIGITS, "--endpoint", olah.url, "--cache-dir", str(cache)
    )
    assert code == 1 and out == ""
    assert "sha256 mismatch for 'README.md'" in err
    snapshot = cache / "models--lightning-dnn--digits-mlp-classes0-4" / "snapshots" / raw["revision"]
    assert not (snapshot / "README.md").exists()


# ------------------------------------------------------------------------------------------------ build
def test_build_into_output_trains_the_recipe_and_leaves_the_zoo_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = tree_bytes(ROOT / "zoo" / DIGITS), INDEX.read_bytes()
    output = tmp_path / "out"
    args = ["build", DIGITS, "--max-epochs", "3", "--output", str(output), "--tolerance", "1", *QUIET]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert sorted(p.name for p in output.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "recipe.yaml",
    ]
    assert (output / "recipe.yaml").read_bytes() == (ROOT / "zoo" / DIGITS / "recipe.yaml").read_bytes()
    metadata = json.loads((output / "config.json").read_text())["metadata"]
    assert metadata["training"]["epochs"] == 3 and metadata["labels"] == [0, 1, 2, 3, 4]
    metrics = metadata["metrics"]
    assert set(metrics) == {"test_accuracy", "test_loss", "val_accuracy", "val_loss"}
    assert metrics["test_accuracy"] == pytest.approx(digits_test_accuracy(output, [0, 1, 2, 3, 4]), abs=1e-6)
    reference = ENTRIES[DIGITS].metrics["test_accuracy"]
    row = next(line for line in out.splitlines() if line.startswith("test_accuracy"))
    diff = metrics["test_accuracy"] - reference
    assert row.split()[:4] == [
        "test_accuracy",
        f"{reference:.4f}",
        f"{metrics['test_accuracy']:.4f}",
        f"{diff:+.4f}",
    ]
    assert f"canonical commit: {canonical_commit(output, DIGITS)}" in out
    assert (tree_bytes(ROOT / "zoo" / DIGITS), INDEX.read_bytes()) == before


def test_build_outside_tolerance_exits_1_and_only_force_writes_the_zoo(
    capsys: pytest.CaptureFixture[str], clone: Path, tmp_path: Path
) -> None:
    index = clone / "zoo" / "index.json"
    folder = clone / "zoo" / DIGITS
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe["trainer"]["max_epochs"] = 1
    recipe["trainer"]["callbacks"] = []
    short = tmp_path / "one_epoch.yaml"
    short.write_text(yaml.safe_dump(recipe))
    raw = json.loads(index.read_text())
    raw["models"][DIGITS]["metrics"]["test_accuracy"] = 0.25  # a reference one epoch cannot come close to
    index.write_text(json.dumps(raw))
    before = tree_bytes(folder), index.read_bytes()

    code, out, err = run(capsys, "--index", str(index), "build", DIGITS, "--recipe", str(short), *QUIET)
    assert code == 1
    assert "test_accuracy outside --tolerance 0.01" in err and "left unchanged" in err
    assert "FAIL" in next(line for line in out.splitlines() if line.startswith("test_accuracy"))
    assert (tree_bytes(folder), index.read_bytes()) == before

    code, out, err = run(
        capsys, "--index", str(index), "build", DIGITS, "--recipe", str(short), "--force", *QUIET
    )
    assert code == 1  # still reported as outside the tolerance, but written
    assert (folder / "recipe.yaml").read_text() == short.read_text()  # the recipe that trained it
    entry = load_zoo_index(index)[DIGITS]
    assert dict(entry.files) == file_hashes(folder)
    assert entry.revision == canonical_commit(folder, DIGITS)
    written = json.loads((folder / "config.json").read_text())["metadata"]["metrics"]
    assert dict(entry.metrics) == written
    assert written["test_accuracy"] == pytest.approx(digits_test_accuracy(folder, [0, 1, 2, 3, 4]), abs=1e-6)
    assert entry.repo_id == ENTRIES[DIGITS].repo_id and entry.license == "apache-2.0"


def test_max_epochs_needs_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", DIGITS, "--max-epochs", "1")
    assert code == 2 and "give `output` too" in err


# ------------------------------------------------------------------------------------------------ publish
@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self: HfApi, repo_id: str, **kwargs: Any) -> str:
        calls.append(
            ("create_repo", {"repo_id": repo_id, "endpoint": self.endpoint, "token": self.token, **kwargs})
        )
        return f"{self.endpoint}/{repo_id}"

    def create_branch(self: HfApi, repo_id: str, **kwargs: Any) -> None:
        calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def create_commit(
        self: HfApi, repo_id: str, operations: list[CommitOperationAdd], **kwargs: Any
    ) -> CommitInfo:
        ops = {op.path_in_repo: Path(str(op.path_or_fileobj)).read_bytes() for op in operations}
        calls.append(("create_commit", {"repo_id": repo_id, "operations": ops, **kwargs}))
        oid = "c0ffee" + "0" * 34
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid=oid,
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


def test_publish_uploads_the_folder_and_pins_the_returned_commit(
    capsys: pytest.CaptureFixture[str], clone: Path, hub_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    index = clone / "zoo" / "index.json"
    folder = clone / "zoo" / DIGITS
    before = json.loads(index.read_text())["models"][DIGITS]
    code, out, err = run(
        capsys,
        "--index",
        str(index),
        "publish",
        DIGITS,
        "--repo-id",
        "me/digits",
        "--private",
        "--token",
        "hf_secret",
        "--endpoint",
        "https://hub.example",
    )
    assert code == 0, err
    assert [name for name, _ in hub_calls] == ["create_repo", "create_commit"]
    assert hub_calls[0][1] == {
        "repo_id": "me/digits",
        "endpoint": "https://hub.example",
        "token": "hf_secret",
        "private": True,
        "exist_ok": True,
    }
    commit = hub_calls[1][1]
    assert commit["repo_id"] == "me/digits" and commit["commit_message"] == f"{DIGITS}: publish"
    assert commit["operations"] == {name: (folder / name).read_bytes() for name in before["files"]}
    after = json.loads(index.read_text())["models"][DIGITS]
    oid = "c0ffee" + "0" * 34
    assert after == {**before, "repo_id": "me/digits", "revision": oid}
    assert f"hf://me/digits@{oid}" in out
    # still a valid, verified entry: the files did not change, only where they are published
    assert load_zoo_index(index)[DIGITS].files == before["files"]


def test_publish_refuses_a_folder_that_differs_from_the_index(
    capsys: pytest.CaptureFixture[str], clone: Path, hub_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    index = clone / "zoo" / "index.json"
    card = clone / "zoo" / DIGITS / "README.md"
    card.write_text(card.read_text() + "\nedited\n")
    before = index.read_bytes()
    code, _, err = run(capsys, "--index", str(index), "publish", DIGITS, "--repo-id", "me/digits")
    assert code == 1 and "differs from the index: README.md" in err
    assert hub_calls == [] and index.read_bytes() == before
