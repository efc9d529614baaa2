"""A real Hub-compatible server on loopback for tests and benchmarks: git repos served by olah.

olah (PyPI ``olah``, a self-hosted Hugging Face mirror) serves local git repositories with no upstream when its
TOML config sets ``offline = true`` and ``mirrors-path``; huggingface_hub then talks to it as to the Hub
(``endpoint="http://127.0.0.1:<port>"``): downloads by branch, tag and commit, the normal cache layout, etags.
See ../shared/HUB_TESTING.md for what was checked.

Usage::

    with OlahServer(tmp_path / "olah") as server:
        repo = server.add_repo("org/mlp", [folder_v1, folder_v2], tags={"v1": 0}, branches={"dev": 0})
        server.start()
        hf_hub_download("org/mlp", "config.json", revision="v1", endpoint=server.url)

Files are committed the way the Hub stores them: weights (``LFS_SUFFIXES``) as git-lfs pointer files with the
object under ``.git/lfs/objects/<aa>/<bb>/<sha256>``, so olah serves them like the Hub serves LFS files (etag =
sha256). That also avoids an olah 0.5.4 bug: a plain binary blob of 121-149 bytes makes it answer HTTP 500.
Repos may be added or changed while the server runs; a new commit is seen by the next download.

Stand-ins for a Hub that misbehaves, for fault tests and the fault benchmark: :func:`closed_port_url` (nothing
listens), :class:`StallServer` (accepts and never answers) and :class:`StatusServer` (answers every request with
one HTTP status).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from typing_extensions import Self

__all__ = [
    "LFS_SUFFIXES",
    "BuiltRepo",
    "LoopbackHTTPServer",
    "OlahServer",
    "StallServer",
    "StatusServer",
    "build_repo",
    "closed_port_url",
    "find_olah_cli",
    "lfs_pointer",
]

LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".pkl",
    ".ckpt",
    ".h5",
    ".npz",
    ".npy",
    ".msgpack",
    ".onnx",
)
_GIT_CONFIG = (
    "-c",
    "user.name=t",
    "-c",
    "user.email=t@t",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "tag.gpgsign=false",
    "-c",
    "core.hooksPath=/dev/null",
)

Content = bytes | str | Path | None
Commit = Mapping[str, Content] | Path


@dataclass
class BuiltRepo:
    """A git repo built for the server: its id, folder and the commit sha of each commit, tag and branch."""

    repo_id: str
    path: Path
    commits: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    @property
    def head(self) -> str:
        """The last commit on ``main``."""
        return self.commits[-1]


def lfs_pointer(data: bytes) -> tuple[str, str]:
    """``(pointer_text, sha256)`` of a git-lfs pointer for ``data``."""
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n", sha


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    out = subprocess.run(
        ["git", *_GIT_CONFIG, *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def _write(repo: Path, name: str, content: Content, lfs_suffixes: Sequence[str]) -> None:
    target = repo / name
    if content is None:
        target.unlink(missing_ok=True)
        return
    data = content.read_bytes() if isinstance(content, Path) else content
    if isinstance(data, str):
        data = data.encode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    if name.lower().endswith(tuple(lfs_suffixes)):
        pointer, sha = lfs_pointer(data)
        obj = repo / ".git" / "lfs" / "objects" / sha[:2] / sha[2:4] / sha
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        target.write_text(pointer)
    else:
        target.write_bytes(data)


def build_repo(
    mirrors: Path,
    repo_id: str,
    commits: Sequence[Commit],
    *,
    tags: Mapping[str, int] | None = None,
    branches: Mapping[str, int] | None = None,
    messages: Sequence[str] | None = None,
    lfs_suffixes: Sequence[str] = LFS_SUFFIXES,
) -> BuiltRepo:
    """Build (or extend) the git repo ``<mirrors>/models/<org>/<name>`` with one commit per item of ``commits``.

    Args:
        mirrors: olah's ``mirrors-path`` folder.
        repo_id: ``"org/name"``.
        commits: each a folder (its files replace the whole tree: a Hub-format folder) or a mapping path ->
            content (bytes, text, a file to copy, or ``None`` to delete) applied on top of the previous commit.
        tags: tag name -> index into ``commits``.
        branches: branch name -> index into ``commits`` (``main`` is the last commit).
        messages: commit messages (default ``"commit <i>"``).
        lfs_suffixes: file name endings committed as git-lfs pointers.

    Returns:
        the :class:`BuiltRepo` with every sha.
    """
    org, name = repo_id.split("/")
    repo = mirrors / "models" / org / name
    fresh = not (repo / ".git").exists()
    repo.mkdir(parents=True, exist_ok=True)
    if fresh:
        _git(repo, "init", "-q", "-b", "main")
        (repo / ".gitattributes").write_text(
            "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in lfs_suffixes)
        )
    built = BuiltRepo(repo_id, repo)
    for i, commit in enumerate(commits):
        if isinstance(commit, Path):
            for old in _git(repo, "ls-files").splitlines():
                if old != ".gitattributes":
                    (repo / old).unlink(missing_ok=True)
            changes: Mapping[str, Content] = {
                str(p.relative_to(commit)): p for p in sorted(commit.rglob("*")) if p.is_file()
            }
        else:
            changes = commit
        for path, content in changes.items():
            _write(repo, path, content, lfs_suffixes)
        _git(repo, "add", "-A")
        message = messages[i] if messages is not None else f"commit {i}"
        _git(repo, "commit", "-q", "--allow-empty", "-m", message)
        built.commits.append(_git(repo, "rev-parse", "HEAD"))
    for tag, index in (tags or {}).items():
        _git(repo, "tag", "-f", tag, built.commits[index])
        built.tags[tag] = built.commits[index]
    for branch, index in (branches or {}).items():
        _git(repo, "branch", "-f", branch, built.commits[index])
        built.branches[branch] = built.commits[index]
    return built


def find_olah_cli() -> str | None:
    """The ``olah-cli`` executable: on PATH or next to this Python, else ``None``."""
    found = shutil.which("olah-cli")
    if found:
        return found
    candidate = Path(sys.executable).parent / "olah-cli"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OlahServer:
    """olah serving the git repos under ``<root>/mirrors`` on ``127.0.0.1`` at a free port.

    Args:
        root: a scratch folder (mirrors, olah's own repos cache, config and logs go there).
        olah_cli: the executable (default :func:`find_olah_cli`).
    """

    def __init__(self, root: Path, *, olah_cli: str | None = None) -> None:
        self.root = Path(root)
        self.mirrors = self.root / "mirrors"
        self.mirrors.mkdir(parents=True, exist_ok=True)
        cli = olah_cli or find_olah_cli()
        if cli is None:
            raise FileNotFoundError("olah-cli not found: pip install olah (it is in the dev extra)")
        self.olah_cli = cli
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def url(self) -> str:
        """The endpoint to hand to huggingface_hub (``endpoint=`` or ``HF_ENDPOINT``)."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def add_repo(self, repo_id: str, commits: Sequence[Commit], **kwargs: object) -> BuiltRepo:
        """:func:`build_repo` under this server's mirrors folder (works before or after :meth:`start`)."""
        return build_repo(self.mirrors, repo_id, commits, **kwargs)  # type: ignore[arg-type]

    def start(self, timeout: float = 30.0) -> str:
        """Start olah and wait until it answers HTTP; return :attr:`url`."""
        if self.running:
            return self.url
        for _ in range(3):  # a free port can be taken between probing and binding
            self.port = _free_port()
            self._launch()
            if self._wait_ready(timeout):
                return self.url
            self.stop()
        raise RuntimeError(f"olah did not start; see {self.root / 'olah.out'}:\n{self.output()[-3000:]}")

    def _launch(self) -> None:
        assert self.port is not None
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f"repos-path = {str(self.root / 'olah-repos')!r}\n"
            f'mirror-netloc = "127.0.0.1:{self.port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{self.port}"\n'
            f"mirrors-path = [{str(self.mirrors)!r}]\n"
            "metadata-cache-ttl = 0\n"
            "\n[accessibility]\n"
            "offline = true\n"
        )
        log = open(self.root / "olah.out", "ab")
        self._log_file = log
        self._proc = subprocess.Popen(
            [self.olah_cli, "-c", str(config), "--log-path", str(self.root / "logs")],
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        deadline = timeout / 0.05
        for _ in range(int(deadline)):
            if self._proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(f"{self.url}/", timeout=1).close()
                return True
            except urllib.error.HTTPError:
                return True  # any HTTP answer (olah's index page answers 500) means it is serving
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                try:
                    self._proc.wait(timeout=0.05)  # pause without sleeping; returns early if olah died
                except subprocess.TimeoutExpired:
                    pass
        return False

    def stop(self) -> None:
        """Stop olah (terminate, then kill after 10 s)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def output(self) -> str:
        """olah's stdout/stderr so far (uvicorn's access lines included)."""
        path = self.root / "olah.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def requests(self, needle: str) -> list[str]:
        """The access-log lines (``"GET /org/m/resolve/... HTTP/1.1" 200``) that contain ``needle``."""
        return [
            line
            for line in self.output().splitlines()
            if '"' in line and needle in line and "HTTP/1.1" in line
        ]

    def __enter__(self) -> OlahServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def closed_port_url() -> str:
    """The URL of a loopback port that nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return f"http://127.0.0.1:{port}"


class StallServer:
    """Accepts TCP connections and never answers (a hung server); counts the connections."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections.append(conn)

    def __enter__(self) -> StallServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self.connections:
            conn.close()
        self.sock.close()


class LoopbackHTTPServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving ``handler``; a context manager.

    Subclasses build their request handler class and pass it to ``__init__``; ``url`` is the server's address.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class StatusServer(LoopbackHTTPServer):
    """Answers every request with ``status`` and an empty body; records ``(method, path)`` of each request."""

    def __init__(self, status: int) -> None:
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                server.requests.append((self.command, self.path))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer

        super().__init__(Handler)
