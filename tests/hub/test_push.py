"""push_to_hub hands huggingface_hub's HfApi exactly the expected repo, branch and commit operations.

No server here accepts uploads, so HfApi's three methods are replaced by recorders (the one place a test double
is right); everything else (folders, cards, CommitOperationAdd) is real.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi

from lightning_dnn.hub import push_to_hub, save_pretrained
from tests.hub.conftest import METADATA, make_mlp


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
        ops = [
            (op.path_in_repo, op.upload_info.sha256.hex(), op.upload_info.size, _content(op.path_or_fileobj))
            for op in operations
        ]
        calls.append(("create_commit", {"repo_id": repo_id, "operations": ops, **kwargs}))
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'a' * 40}",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="a" * 40,
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


def _content(source: object) -> bytes:
    if isinstance(source, bytes):
        return source
    assert isinstance(source, str | Path)
    return Path(source).read_bytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_push_folder_to_a_new_branch(tmp_path: Path, hub_calls: list[tuple[str, dict[str, Any]]]) -> None:
    folder = save_pretrained(make_mlp(0), tmp_path / "m", metadata=METADATA)
    (folder / "notes.txt").write_text("not uploaded")
    files = {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors", "README.md")}

    info = push_to_hub(
        folder,
        "org/mlp",
        revision="experiment",
        private=True,
        token="hf_secret",
        commit_message="Add weights",
        endpoint="http://hub.local",
    )

    assert [name for name, _ in hub_calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub_calls[0][1] == {
        "repo_id": "org/mlp",
        "endpoint": "http://hub.local",
        "token": "hf_secret",
        "private": True,
        "exist_ok": True,
    }
    assert hub_calls[1][1] == {"repo_id": "org/mlp", "branch": "experiment", "exist_ok": True}
    commit = hub_calls[2][1]
    assert commit["commit_message"] == "Add weights"
    assert commit["revision"] == "experiment" and commit["create_pr"] is False
    assert commit["operations"] == [(name, _sha(data), len(data), data) for name, data in files.items()]
    assert info.oid == "a" * 40


def test_push_net_saves_with_a_card_naming_the_repo(hub_calls: list[tuple[str, dict[str, Any]]]) -> None:
    net = make_mlp(1)
    push_to_hub(net, "org/fresh", card={"description": "tiny test net"}, create_pr=True)

    names = [name for name, _ in hub_calls]
    assert names == ["create_repo", "create_commit"]  # main: no branch to create
    assert hub_calls[0][1]["private"] is None and hub_calls[0][1]["exist_ok"] is True
    commit = hub_calls[1][1]
    assert commit["revision"] is None and commit["create_pr"] is True
    assert commit["commit_message"].startswith("Upload MLP (lightning-dnn ")
    ops = {path: data for path, _, _, data in commit["operations"]}
    assert sorted(ops) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads(ops["config.json"])["config"] == net.config
    readme = ops["README.md"].decode()
    assert yaml.safe_load(readme.split("---\n")[1])["library_name"] == "lightning-dnn"
    assert 'load_pretrained("hf://org/fresh")' in readme and "tiny test net" in readme


def test_card_given_with_a_folder_replaces_only_the_uploaded_readme(
    tmp_path: Path, hub_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    folder = save_pretrained(make_mlp(0), tmp_path / "m")
    local_readme = (folder / "README.md").read_text()
    push_to_hub(folder, "org/mlp", card={"title": "Digits MLP"})
    ops = {path: data for path, _, _, data in hub_calls[-1][1]["operations"]}
    assert ops["README.md"].decode().count("# Digits MLP") == 1
    assert (folder / "README.md").read_text() == local_readme


def test_invalid_pushes_fail_before_any_call(
    tmp_path: Path, hub_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    folder = save_pretrained(make_mlp(0), tmp_path / "m")
    with pytest.raises(ValueError, match="repo_id"):
        push_to_hub(folder, "no-slash")
    with pytest.raises(TypeError, match="private"):
        push_to_hub(folder, "org/m", private="yes")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="not an existing folder"):
        push_to_hub(tmp_path / "missing", "org/m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        push_to_hub(folder, "org/m")
    assert hub_calls == []
