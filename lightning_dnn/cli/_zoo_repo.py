"""The zoo's publication side: the canonical commit that pins an entry, file hashes, and index updates.

The maintainers' index is the repository's ``zoo/index.json``; :func:`update_index` copies it into the package
(:data:`~lightning_dnn.hub.zoo.PACKAGED_INDEX_PATH`) whenever it writes it, so the two never drift.

The index pins every entry to a commit (``revision``). For an entry that is not published yet, that commit is the
entry's **canonical publication commit**: the one commit of a git repository whose tree is the entry's three files
(``config.json``, ``README.md`` and ``model.safetensors`` committed as a git-lfs pointer, as the Hub stores it)
plus a fixed ``.gitattributes``, with a fixed author and committer (:data:`CANONICAL_AUTHOR`), date
(:data:`CANONICAL_DATE`, 2026-01-01T00:00:00Z) and message ``"<name>: publish"``. It depends on nothing but the
files and the name, so it is stable: :func:`canonical_commit` computes it in pure Python, and
:func:`write_canonical_repo` builds that very repository with git (a mirror served by a Hub-compatible server
such as olah then has exactly the pinned sha). ``lightning-dnn zoo publish`` replaces it with the commit the Hub
returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_dnn.hub._io import CARD_NAME, CONFIG_NAME, HUB_FILES, WEIGHTS_NAME, sha256_file
from lightning_dnn.hub.zoo import PACKAGED_INDEX_PATH, ZOO_INDEX_ENV

__all__ = [
    "CANONICAL_AUTHOR",
    "CANONICAL_DATE",
    "GITATTRIBUTES",
    "MAINTAINERS_INDEX_PATH",
    "canonical_commit",
    "canonical_files",
    "file_hashes",
    "lfs_pointer",
    "maintainers_index_path",
    "update_index",
    "write_canonical_repo",
]

#: ``(name, email)`` of the canonical commit's author and committer.
CANONICAL_AUTHOR = ("lightning-dnn zoo", "zoo@lightning-dnn.invalid")
#: The canonical commit's author and committer date: 2026-01-01T00:00:00Z as git's ``"<epoch> <tz>"``.
CANONICAL_DATE = "1767225600 +0000"
#: The ``.gitattributes`` of a canonical repository: weights are git-lfs objects, as on the Hub.
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
#: The maintainers' index: ``zoo/index.json`` of the checkout that holds this package.
MAINTAINERS_INDEX_PATH = PACKAGED_INDEX_PATH.parents[2] / "zoo" / "index.json"
_ISO_DATE = "2026-01-01T00:00:00+00:00"
_FILE_MODE = b"100644"


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file that stands for ``data`` in a repository (what the Hub commits for weights).

    Example:
        >>> print(lfs_pointer(b"abc").decode(), end="")
        version https://git-lfs.github.com/spec/v1
        oid sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        size 3
    """
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


def file_hashes(folder: str | os.PathLike[str]) -> dict[str, str]:
    """``{file name: sha256}`` of the three Hub files of a zoo folder (what the index pins).

    Raises:
        FileNotFoundError: if one of the files is missing (the message names it).

    Example:
        >>> import tempfile
        >>> from lightning_dnn.hub import save_pretrained
        >>> from lightning_dnn.nn import MLP
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     print(sorted(file_hashes(save_pretrained(MLP(4, 3, 2), tmp))))
        ['README.md', 'config.json', 'model.safetensors']
    """
    root = Path(folder)
    missing = [name for name in HUB_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Folder {str(root)!r} lacks {missing}: a zoo folder holds {list(HUB_FILES)} "
            "(written by save_pretrained / `lightning-dnn zoo build`)"
        )
    return {name: sha256_file(root / name) for name in HUB_FILES}


def canonical_files(folder: str | os.PathLike[str]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The canonical repository's content: ``(tree, lfs_objects)``.

    ``tree`` maps each committed path to its bytes (``model.safetensors`` as an LFS pointer); ``lfs_objects`` maps
    the sha256 of each LFS object to its bytes.

    Example:
        >>> import tempfile
        >>> from lightning_dnn.hub import save_pretrained
        >>> from lightning_dnn.nn import MLP
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     tree, objects = canonical_files(save_pretrained(MLP(4, 3, 2), tmp))
        >>> sorted(tree), tree["model.safetensors"].startswith(b"version https://git-lfs"), len(objects)
        (['.gitattributes', 'README.md', 'config.json', 'model.safetensors'], True, 1)
    """
    root = Path(folder)
    file_hashes(root)  # every file is there
    weights = (root / WEIGHTS_NAME).read_bytes()
    tree = {
        ".gitattributes": GITATTRIBUTES,
        CARD_NAME: (root / CARD_NAME).read_bytes(),
        CONFIG_NAME: (root / CONFIG_NAME).read_bytes(),
        WEIGHTS_NAME: lfs_pointer(weights),
    }
    return tree, {hashlib.sha256(weights).hexdigest(): weights}


def canonical_commit(folder: str | os.PathLike[str], name: str) -> str:
    """The sha of the canonical publication commit of zoo entry ``name`` whose files are in ``folder``.

    Computed from git's object format (blob, tree, commit) without running git; :func:`write_canonical_repo`
    builds the same commit with git.

    Args:
        folder: the entry's folder (config.json, model.safetensors, README.md).
        name: the zoo name (part of the commit message ``"<name>: publish"``).

    Returns:
        40 lowercase hex digits.

    Example:
        >>> import tempfile
        >>> from lightning_dnn.hub import save_pretrained
        >>> from lightning_dnn.nn import MLP
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = save_pretrained(MLP(4, 3, 2), tmp)
        ...     first, again = canonical_commit(folder, "m"), canonical_commit(folder, "m")
        ...     other = canonical_commit(folder, "n")
        >>> len(first), first == again, first == other
        (40, True, False)
    """
    _check_name(name)
    tree, _ = canonical_files(folder)
    entries = b"".join(
        _FILE_MODE + b" " + path.encode() + b"\0" + bytes.fromhex(_git_object_sha(b"blob", data))
        for path, data in sorted(tree.items(), key=lambda item: item[0].encode())
    )
    tree_sha = _git_object_sha(b"tree", entries)
    who = f"{CANONICAL_AUTHOR[0]} <{CANONICAL_AUTHOR[1]}> {CANONICAL_DATE}"
    commit = f"tree {tree_sha}\nauthor {who}\ncommitter {who}\n\n{_message(name)}\n"
    return _git_object_sha(b"commit", commit.encode())


def write_canonical_repo(folder: str | os.PathLike[str], repo_dir: str | os.PathLike[str], name: str) -> str:
    """Build the canonical repository of entry ``name`` with git in ``repo_dir`` and return its commit sha.

    The repository has a work tree and branch ``main``; the weights are an LFS pointer whose object lies under
    ``.git/lfs/objects/<aa>/<bb>/<sha256>`` (no git-lfs binary needed). This is the layout a Hub-compatible server
    that serves local git repositories (olah with ``mirrors-path``) expects under ``models/<org>/<name>``.

    Args:
        folder: the entry's folder.
        repo_dir: where to create the repository; must not exist or be empty.
        name: the zoo name.

    Returns:
        git's sha of the commit; equal to :func:`canonical_commit` for the same folder and name.

    Raises:
        FileExistsError: if ``repo_dir`` is a non-empty folder.
        FileNotFoundError: if git is not installed or a file is missing.

    Example:
        >>> import tempfile
        >>> from lightning_dnn.hub import save_pretrained
        >>> from lightning_dnn.nn import MLP
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = save_pretrained(MLP(4, 3, 2), f"{tmp}/model")
        ...     write_canonical_repo(folder, f"{tmp}/repo", "m") == canonical_commit(folder, "m")
        True
    """
    _check_name(name)
    repo = Path(repo_dir)
    if repo.exists() and any(repo.iterdir()):
        raise FileExistsError(f"`repo_dir` {str(repo)!r} exists and is not empty")
    if shutil.which("git") is None:
        raise FileNotFoundError(
            "git is not installed; it is needed to build a repository (canonical_commit is not)"
        )
    tree, objects = canonical_files(folder)
    repo.mkdir(parents=True, exist_ok=True)
    _git(repo, "init", "-q", "-b", "main")
    for path, data in tree.items():
        (repo / path).write_bytes(data)
    for sha, data in objects.items():
        target = repo / ".git" / "lfs" / "objects" / sha[:2] / sha[2:4] / sha
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    _git(repo, "add", "--", *sorted(tree))
    _git(repo, "commit", "-q", "--no-verify", "-m", _message(name))
    return _git(repo, "rev-parse", "HEAD")


def maintainers_index_path() -> Path:
    """The index that ``zoo build`` and ``zoo publish`` write: ``$LIGHTNING_DNN_ZOO_INDEX`` or the checkout's.

    Example:
        >>> maintainers_index_path().name
        'index.json'
    """
    env = os.environ.get(ZOO_INDEX_ENV)
    return Path(env) if env else MAINTAINERS_INDEX_PATH


def update_index(index_path: str | os.PathLike[str], name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``fields`` of entry ``name`` in the index file (creating the entry, or the file), atomically.

    Other entries and other fields of the entry are kept; entries are written sorted by name, two-space indented,
    so a change shows as a small diff. When ``index_path`` is the maintainers' index
    (:data:`MAINTAINERS_INDEX_PATH`), the same bytes are written to the packaged index too.

    Args:
        index_path: the index file.
        name: the zoo name.
        fields: the entry's fields to set (``repo_id``, ``revision``, ``files``, ``metrics``, ``license``, ``path``).

    Returns:
        the entry as written.

    Raises:
        ValueError: for an invalid ``name`` or an existing file that is not a zoo index.

    Example:
        >>> import json, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = update_index(f"{tmp}/index.json", "b", {"license": "mit"})
        ...     entry = update_index(f"{tmp}/index.json", "a", {"license": "apache-2.0"})
        ...     print(list(json.load(open(f"{tmp}/index.json"))["models"]))
        ['a', 'b']
    """
    _check_name(name)
    path = Path(index_path)
    document: dict[str, Any] = {"models": {}}
    if path.is_file():
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
            raise ValueError(f"Zoo index {str(path)!r} must be a JSON object with a 'models' object")
    models: dict[str, Any] = document["models"]
    entry = dict(models.get(name) or {})
    entry.update(fields)
    models[name] = entry
    document["models"] = {key: models[key] for key in sorted(models)}
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    _write_atomically(path, text)
    if path.resolve() == MAINTAINERS_INDEX_PATH.resolve():
        _write_atomically(PACKAGED_INDEX_PATH, text)
    return entry


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        staging.write_text(text, encoding="utf-8")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def _message(name: str) -> str:
    return f"{name}: publish"


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"zoo `name` must be a non-empty string without whitespace, got {name!r}")


def _git_object_sha(kind: bytes, data: bytes) -> str:
    return hashlib.sha1(kind + b" " + str(len(data)).encode() + b"\0" + data).hexdigest()


def _git(repo: Path, *args: str) -> str:
    name, email = CANONICAL_AUTHOR
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_AUTHOR_DATE": _ISO_DATE,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
        "GIT_COMMITTER_DATE": _ISO_DATE,
    }
    options = ("-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", "-c", "core.autocrlf=false")
    out = subprocess.run(
        ["git", *options, *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()
