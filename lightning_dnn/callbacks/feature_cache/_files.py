"""A disk entry's files: :class:`EntryWriter`, :func:`verify` and :func:`sweep`.

An entry is built in a temporary directory that names its owner, committed with a manifest holding a content
hash per chunk of every file, and verified before use; :func:`sweep` removes what dead builds left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT_VERSION",
    "CorruptEntry",
    "EntryWriter",
    "chunk_hashes",
    "fsync",
    "read_manifest",
    "sweep",
    "verify",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: content hashes per chunk in the manifest
HASH = "sha256"  # with SHA extensions, the fastest of hashlib's (about 2x blake2b)
CHUNK_BYTES = 4 << 20
TMP_PREFIX = ".tmp-"
OWNER = "owner.json"
#: A temporary directory whose owner runs on another machine is a dead build's once its owner file (the
#: heartbeat) has not been touched for this long (seconds).
STALE_AFTER = 1800.0
BEAT_EVERY = 30.0  # seconds between two heartbeats of a live build
_UNOWNED_STALE_AFTER = 300.0  # a build writes its owner file microseconds after creating its directory
_PLAN_STALE_AFTER = 600.0  # a plan's temporary file lives for milliseconds


class CorruptEntry(ValueError):
    """A committed entry whose files do not match the content hashes in its manifest."""


def chunk_hashes(path: Path, chunk_bytes: int, beat: Callable[[], None] | None = None) -> list[str]:
    """The hex digests of the consecutive ``chunk_bytes``-byte chunks of a file (the last one may be shorter)."""
    digests = []
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := _fill(f, view):
            digests.append(hashlib.new(HASH, view[:n]).hexdigest())
            if beat is not None:
                beat()
    return digests


def _fill(f: Any, view: memoryview) -> int:
    """Read into ``view`` until it is full or the file ends; the number of bytes read.

    One read may return less than asked (e.g. on a network file system).
    """
    n = 0
    while n < len(view) and (got := f.readinto(view[n:])):
        n += got
    return n


def verify(directory: Path, manifest: dict[str, Any]) -> None:
    """Check every file listed in ``manifest`` against its size and chunk hashes.

    Raises:
        CorruptEntry: a file is missing, has another size, or a chunk differs (the message names the file and
            the first chunk that differs).
    """
    chunk = manifest.get("chunk_bytes")
    if manifest.get("hash") != HASH or not isinstance(chunk, int) or chunk <= 0:
        raise CorruptEntry(f"{directory}: the manifest names no {HASH} chunk hashes")
    for spec in manifest.get("arrays", []):
        path = directory / str(spec.get("file"))
        expected = spec.get("chunks")
        try:
            size = path.stat().st_size
        except OSError as err:
            raise CorruptEntry(f"{path}: cannot be read ({err})") from None
        if size != spec.get("bytes") or not isinstance(expected, list):
            raise CorruptEntry(f"{path}: {size} bytes, the manifest says {spec.get('bytes')}")
        found = chunk_hashes(path, chunk)
        for i, (a, b) in enumerate(zip(found, expected, strict=False)):
            if a != b:
                end = min(size, (i + 1) * chunk)
                raise CorruptEntry(
                    f"{path}: chunk {i} of {len(expected)} (bytes {i * chunk}-{end}) does not match its hash "
                    "in the manifest"
                )
        if len(found) != len(expected):
            raise CorruptEntry(f"{path}: {len(found)} chunks, the manifest lists {len(expected)}")


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """An entry's manifest, or ``None`` when it is missing, unreadable or of another format version."""
    try:
        with open(directory / "manifest.json", encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        return None
    return manifest


def _trusted(directory: Path, fingerprint: str) -> bool:
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("fingerprint") != fingerprint or not manifest.get("complete"):
        return False
    try:
        verify(directory, manifest)
    except CorruptEntry:
        return False
    return True


class EntryWriter:
    """A temporary directory beside ``final`` that becomes ``final`` on commit, or disappears on abort.

    It is named ``.tmp-<final name>-<random>`` and holds ``owner.json`` (host, boot and pid namespace, pid and
    the process's start time), touched every :data:`BEAT_EVERY` seconds by :meth:`beat`, so :func:`sweep` can
    tell a live build from a dead one.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:12]}"
        self.tmp.mkdir()
        self._last_beat = time.monotonic()
        try:
            write_json(self.tmp / OWNER, _identity(), sync=False)
        except BaseException:
            self.abort()
            raise

    def path(self, name: str) -> Path:
        """Where the file ``name`` of the entry is written."""
        return self.tmp / name

    def beat(self) -> None:
        """Show that the build is alive (at most one ``utime`` every :data:`BEAT_EVERY` seconds)."""
        now = time.monotonic()
        if now - self._last_beat >= BEAT_EVERY:
            self._last_beat = now
            with contextlib.suppress(OSError):
                os.utime(self.tmp / OWNER)

    def commit(self, manifest: dict[str, Any], files: list[str]) -> None:
        """Hash and flush ``files``, write the manifest (with the hashes), rename the directory into place.

        When ``final`` already exists and is a valid entry with the same fingerprint (another process finished
        it first), it is kept and this build is dropped; anything else there is replaced.
        """
        specs = []
        for name in files:
            path = self.tmp / name
            fsync(path)
            specs.append({"bytes": path.stat().st_size, "chunks": chunk_hashes(path, CHUNK_BYTES, self.beat)})
        arrays = [{**spec, **extra} for spec, extra in zip(specs, manifest.get("arrays", []), strict=True)]
        write_json(
            self.tmp / "manifest.json",
            {**manifest, "arrays": arrays, "hash": HASH, "chunk_bytes": CHUNK_BYTES, "complete": True},
            sync=True,
        )
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            # `final` exists: another process finished the same entry first, or an untrusted leftover is there.
            if _trusted(self.final, str(manifest.get("fingerprint"))):
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                shutil.rmtree(self.final, ignore_errors=True)
                os.rename(self.tmp, self.final)
        # only now: until the rename, the temporary directory names its owner
        (self.final / OWNER).unlink(missing_ok=True)
        fsync(self.final.parent)
        log.info("FeatureCache: wrote %s", self.final)

    def abort(self) -> None:
        """Remove the temporary directory."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_json(path: Path, obj: Any, *, sync: bool) -> None:
    """Write ``obj`` as JSON (flushed to the disk when ``sync``)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def fsync(path: Path) -> None:
    """Flush a file or a directory to the disk (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------------ sweeping --
def sweep(root: Path) -> list[Path]:
    """Remove the temporary directories (and plan files) under ``root`` that dead builds left; return them.

    A directory whose owner runs on this machine (same host name, boot and pid namespace) is removed when that
    process is gone (or is a zombie, or its pid now belongs to a process started later); one whose owner runs on
    another machine when its heartbeat is :data:`STALE_AFTER` seconds old; one without a readable owner file
    (a process killed between creating it and writing the owner file) after 5 minutes. A live build's directory
    is never removed. Safe to run from several processes at once.
    """
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for path in root.iterdir():
            if path.name.startswith(TMP_PREFIX) and path.is_dir() and _dead(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    with contextlib.suppress(OSError):
        for path in (root / "plans").glob(f"{TMP_PREFIX}*"):
            if _age(path) > _PLAN_STALE_AFTER:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _dead(directory: Path) -> bool:
    owner_file = directory / OWNER
    try:
        with open(owner_file, encoding="utf-8") as f:
            owner = json.load(f)
    except (OSError, ValueError):
        owner = None
    alive = _owner_alive(owner) if isinstance(owner, dict) else None
    if alive is not None:
        if not alive:
            log.info("FeatureCache: removing %s, left by process %s that is gone", directory, owner["pid"])
        return not alive
    age = _age(owner_file if owner is not None else directory)
    if age > (STALE_AFTER if owner is not None else _UNOWNED_STALE_AFTER):
        log.info("FeatureCache: removing %s, unchanged for %.0f s", directory, age)
        return True
    return False


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _machine() -> list[str | None]:
    """Who can check a pid: the host, its boot and this process's pid namespace."""
    namespace = None
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    return [socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), namespace]


def _process(pid: int) -> tuple[str, int] | None:
    """``(state, start time)`` of a process from ``/proc`` (``None`` when there is no ``/proc`` entry)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _identity() -> dict[str, Any]:
    pid = os.getpid()
    found = _process(pid)
    return {"machine": _machine(), "pid": pid, "start": None if found is None else found[1]}


def _owner_alive(owner: dict[str, Any]) -> bool | None:
    """Whether the owner of a build is alive; ``None`` when this process cannot tell."""
    pid = owner.get("pid")
    if owner.get("machine") != _machine() or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return None
    found = _process(pid)
    if found is None:
        return True
    state, start = found
    return state != "Z" and owner.get("start") in (None, start)
