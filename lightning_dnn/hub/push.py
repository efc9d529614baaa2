"""Publish a network or a saved folder to a Hugging Face Hub model repo, in one commit."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from torch import nn

from lightning_dnn._version import __version__
from lightning_dnn.hub._card import check_card, render_model_card
from lightning_dnn.hub._io import CARD_NAME, CONFIG_NAME, HUB_FILES, WEIGHTS_NAME, read_config
from lightning_dnn.hub._names import REPO_ID
from lightning_dnn.hub.save import save_pretrained

__all__ = ["push_to_hub"]


def push_to_hub(
    directory_or_net: str | os.PathLike[str] | nn.Module,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
    card: str | Mapping[str, Any] | None = None,
) -> CommitInfo:
    """Upload ``config.json``, ``model.safetensors`` and ``README.md`` to ``repo_id`` in one commit.

    Steps, all through ``huggingface_hub.HfApi(endpoint=endpoint, token=token)``: ``create_repo(repo_id,
    private=private, exist_ok=True)``; ``create_branch(repo_id, branch=revision, exist_ok=True)`` when
    ``revision`` names a branch other than ``main``; then ``create_commit`` with one ``CommitOperationAdd``
    per file (only those three files, never anything else in the folder).

    Args:
        directory_or_net: a folder written by :func:`~lightning_dnn.hub.save_pretrained`, or a network, which
            is saved to a temporary folder first (with ``card``; the card's loading snippet names ``repo_id``).
        repo_id: ``"org/name"``.
        revision: the branch to commit to (created from ``main`` if needed); ``None`` for ``main``.
        private: visibility of a newly created repo (``None``: the Hub's default); an existing repo is unchanged.
        token: a token with write access (default: huggingface_hub's, from ``HF_TOKEN`` or ``hf auth login``).
        commit_message: the commit title (default: ``"Upload <architecture> (lightning-dnn <version>)"``).
        create_pr: open a pull request instead of committing to the branch directly.
        endpoint: the Hub endpoint (default ``HF_ENDPOINT``).
        card: the model card, as for :func:`~lightning_dnn.hub.save_pretrained`. With a folder, a given
            ``card`` replaces the folder's README.md in the upload (the folder itself is not modified); without
            one, the folder's README.md is uploaded (generated if the folder has none).

    Returns:
        huggingface_hub's ``CommitInfo`` (commit URL, oid, PR URL when ``create_pr``).

    Raises:
        TypeError, ValueError: for invalid arguments or a folder that is not a lightning-dnn folder.
        FileNotFoundError: if the folder lacks config.json or model.safetensors.
        huggingface_hub errors (``HfHubHTTPError`` and subclasses) from the Hub itself, e.g. without write access.

    Example:
        Against the real Hub (needs a token with write access)::

            from lightning_dnn.hub import push_to_hub
            push_to_hub(net, "my-org/fashion-mlp", private=True, card={"description": "300-100 BN+ELU"})

        The arguments are checked before anything is sent:

        >>> push_to_hub("some/folder", "not a repo id")
        Traceback (most recent call last):
            ...
        ValueError: `repo_id` must look like 'org/name', got 'not a repo id'
    """
    _check_push_arguments(repo_id, revision, private, create_pr, commit_message, endpoint)
    card = check_card(card)
    upload = partial(
        _upload,
        repo_id=repo_id,
        revision=revision,
        private=private,
        token=token,
        commit_message=commit_message,
        create_pr=create_pr,
        endpoint=endpoint,
    )
    if isinstance(directory_or_net, nn.Module):
        with tempfile.TemporaryDirectory(prefix="lightning-dnn-push-") as tmp:
            folder = save_pretrained(directory_or_net, Path(tmp) / "model", card=_naming(card, repo_id))
            return upload(folder, None)
    if not isinstance(directory_or_net, str | os.PathLike):
        raise TypeError(
            f"`directory_or_net` must be a folder path or an nn.Module, got {type(directory_or_net).__name__}"
        )
    folder = Path(directory_or_net)
    if not folder.is_dir():
        raise FileNotFoundError(f"`directory_or_net` {str(folder)!r} is not an existing folder")
    document = read_config(folder / CONFIG_NAME)
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"Folder {str(folder)!r} has no {WEIGHTS_NAME}; write it with save_pretrained"
        )
    readme: bytes | None = None
    if card is not None or not (folder / CARD_NAME).is_file():
        readme = render_model_card(document, _naming(card, repo_id)).encode("utf-8")
    return upload(folder, readme)


def _check_push_arguments(
    repo_id: object,
    revision: object,
    private: object,
    create_pr: object,
    commit_message: object,
    endpoint: object,
) -> None:
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"`repo_id` must look like 'org/name', got {repo_id!r}")
    if revision is not None and (not isinstance(revision, str) or not revision.strip() or " " in revision):
        raise ValueError(f"`revision` must be a branch name or None, got {revision!r}")
    if private is not None and not isinstance(private, bool):
        raise TypeError(f"`private` must be a bool or None, got {type(private).__name__} {private!r}")
    if not isinstance(create_pr, bool):
        raise TypeError(f"`create_pr` must be a bool, got {type(create_pr).__name__} {create_pr!r}")
    if commit_message is not None and (not isinstance(commit_message, str) or not commit_message.strip()):
        raise ValueError(f"`commit_message` must be a non-empty string or None, got {commit_message!r}")
    if endpoint is not None and not isinstance(endpoint, str):
        raise TypeError(
            f"`endpoint` must be a URL string or None, got {type(endpoint).__name__} {endpoint!r}"
        )


def _naming(card: str | dict[str, Any] | None, repo_id: str) -> str | dict[str, Any]:
    """The card options with ``repo_id`` (for the loading snippet) unless the card sets it or is a full text."""
    if isinstance(card, str):
        return card
    return {"repo_id": repo_id, **(card or {})}


def _upload(
    folder: Path,
    readme: bytes | None,
    *,
    repo_id: str,
    revision: str | None,
    private: bool | None,
    token: str | bool | None,
    commit_message: str | None,
    create_pr: bool,
    endpoint: str | None,
) -> CommitInfo:
    document = read_config(folder / CONFIG_NAME)
    message = commit_message or f"Upload {document['architecture']} (lightning-dnn {__version__})"
    operations = []
    for name in HUB_FILES:
        if name == CARD_NAME and readme is not None:
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=readme))
        else:
            operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)))
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.create_commit(
        repo_id, operations, commit_message=message, revision=revision, create_pr=create_pr
    )
