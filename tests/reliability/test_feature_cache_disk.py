"""FeatureCache's disk entries under faults: corrupted files, builds killed at any step, their leftovers.

Every run trains the same small model (``_fc_fit.fit``); the reference is a run on an empty root. A run on a
faulty root must train on a cache equal to the reference's (final state equal bit for bit) and leave no
temporary directory of a dead build behind.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lightning_dnn.callbacks.feature_cache import _files
from tests.ddp_utils import run_ddp_script
from tests.reliability._fc_fit import BuildSteps, N, fit

REPO = Path(__file__).resolve().parents[2]
posix_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Tensor], int]:
    """The clean run's final state, and the number of disk steps its build takes."""
    with BuildSteps().installed() as steps:
        state, seen = fit(tmp_path_factory.mktemp("clean") / "fc")
    assert seen == N and steps.count > 10
    return state, steps.count


def assert_same_state(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key in actual:
        assert torch.equal(actual[key], expected[key]), key


def entries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if (p / "manifest.json").exists()]


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-")) if root.exists() else []


# ---------------------------------------------------------------------------------------------- corruption --
def flip_bytes(entry: Path, seed: int) -> str:
    """XOR a few bytes of one chunk of one array file (the size stays); return ``"file:chunk"``."""
    rng = random.Random(seed)
    path = rng.choice(sorted(entry.glob("array*.npy")))
    raw = bytearray(path.read_bytes())
    chunk = rng.randrange(-(-len(raw) // _files.CHUNK_BYTES))
    start, stop = chunk * _files.CHUNK_BYTES, min(len(raw), (chunk + 1) * _files.CHUNK_BYTES)
    for offset in rng.sample(range(start, stop), k=min(3, stop - start)):
        raw[offset] ^= rng.randrange(1, 256)
    path.write_bytes(raw)
    return f"{path.name}: chunk {chunk} "


def run_corrupted(tmp_path: Path, corrupt: object, reference: dict[str, Tensor]) -> None:
    root = tmp_path / "fc"
    fit(root)
    (entry,) = entries(root)
    where = corrupt(entry)  # type: ignore[operator]
    with pytest.warns(UserWarning, match="the disk cache is corrupted") as caught:
        state, seen = fit(root)
    message = next(str(w.message) for w in caught if "corrupted" in str(w.message))
    assert where in message and "Discarding it and rebuilding" in message
    assert seen == N  # rebuilt, not read
    assert_same_state(state, reference)
    assert fit(root)[1] == 0  # the rebuilt entry passes the check and is reused


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """512-byte hash chunks, so the test's 4 KiB feature file has 9 of them."""
    monkeypatch.setattr(_files, "CHUNK_BYTES", 512)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("seed", range(4))
def test_flipped_bytes_are_detected_and_the_entry_rebuilt(
    tmp_path: Path, reference: tuple, seed: int
) -> None:
    run_corrupted(tmp_path, lambda entry: flip_bytes(entry, seed), reference[0])


@pytest.mark.slow
@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("seed", range(4, 20))
def test_flipped_bytes_matrix(tmp_path: Path, reference: tuple, seed: int) -> None:
    run_corrupted(tmp_path, lambda entry: flip_bytes(entry, seed), reference[0])


def test_a_file_swapped_with_another_entry_of_the_same_shape_is_detected(
    tmp_path: Path, reference: tuple
) -> None:
    other = tmp_path / "other"
    fit(other, shift=1.0)
    (donor,) = entries(other)

    def swap(entry: Path) -> str:
        (entry / "array0.npy").write_bytes((donor / "array0.npy").read_bytes())
        return "array0.npy: chunk 0 "

    run_corrupted(tmp_path, swap, reference[0])


def test_a_truncated_file_is_detected(tmp_path: Path, reference: tuple) -> None:
    def truncate(entry: Path) -> str:
        path = entry / "array1.npy"
        path.write_bytes(path.read_bytes()[:-8])
        return "array1.npy: "

    run_corrupted(tmp_path, truncate, reference[0])


# ----------------------------------------------------------------------------------------------- leftovers --
def forked(target: Callable[[], None]) -> int:
    """Run ``target`` in a forked child; its exit code."""
    process = multiprocessing.get_context("fork").Process(target=target)
    process.start()
    process.join(120)
    return process.exitcode if process.exitcode is not None else 0


def variant(source: Path, name: str, age: float = 0.0, **owner: object) -> Path:
    """A copy of the temporary directory ``source`` named ``name``, its owner fields replaced, ``age`` s old."""
    target = source.parent / name
    target.mkdir()
    marker = target
    if owner.pop("owned", True):
        marker = target / _files.OWNER
        marker.write_text(json.dumps({**json.loads((source / _files.OWNER).read_text()), **owner}))
    then = time.time() - age
    os.utime(marker, (then, then))
    return target


@posix_only
def test_leftovers_of_dead_builds_are_removed_and_live_builds_kept(tmp_path: Path, reference: tuple) -> None:
    root = tmp_path / "fc"
    live = _files.EntryWriter(root / "train-live")  # owned by this (live) process
    assert forked(lambda: _files.EntryWriter(root / "train-dead") and None) == 0  # owner exited
    (dead,) = root.glob(".tmp-train-dead-*")
    start = json.loads((live.tmp / _files.OWNER).read_text())["start"]
    remote = ["another-host", None, None]
    removed = [
        dead,
        variant(live.tmp, ".tmp-train-pid-reused", start=start + 1),
        variant(live.tmp, ".tmp-train-remote-stale", age=_files.STALE_AFTER + 60, machine=remote),
        variant(live.tmp, ".tmp-train-no-owner-old", age=600, owned=False),
    ]
    kept = [
        live.tmp,
        variant(live.tmp, ".tmp-train-remote-beating", age=60, machine=remote),
        variant(live.tmp, ".tmp-train-no-owner-new", owned=False),
    ]
    state, _ = fit(root)
    assert_same_state(state, reference[0])
    assert leftovers(root) == sorted(p.name for p in kept)
    assert not any(p.exists() for p in removed)
    live.abort()


# --------------------------------------------------------------------------------------------------- kills --
def killed_build(root: Path, step: int) -> int:
    """Fit in a forked child that SIGKILLs itself at build step ``step``; its exit code."""

    def child() -> None:
        torch.set_num_threads(1)
        with BuildSteps(kill_at=step).installed():
            fit(root)

    return forked(child)


def check_kill(tmp_path: Path, step: int, reference: dict[str, Tensor]) -> int:
    """Kill a build at ``step``, then run again on its root; the second run's trunk sample count."""
    root = tmp_path / f"fc-{step}"
    assert killed_build(root, step) == -signal.SIGKILL
    state, seen = fit(root)
    assert_same_state(state, reference)
    assert leftovers(root) == []
    assert len(entries(root)) == 1
    return seen


@posix_only
def test_a_build_killed_at_random_steps_is_never_used_half_done(tmp_path: Path, reference: tuple) -> None:
    _, total = reference
    for step in random.Random(12).sample(range(1, total + 1), k=2):
        assert check_kill(tmp_path, step, reference[0]) == N  # the half-built cache was rebuilt


@posix_only
@pytest.mark.slow
def test_kills_at_every_build_step(tmp_path: Path, reference: tuple) -> None:
    _, total = reference
    seen = [check_kill(tmp_path, step, reference[0]) for step in range(1, total + 1)]
    # before the entry is renamed into place the next run rebuilds it; once its plan is written, it reads it
    assert seen[0] == N and seen[-1] == 0
    assert set(seen) == {0, N}


@posix_only
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_a_fresh_interpreter_killed_at_a_random_moment(tmp_path: Path, reference: tuple, seed: int) -> None:
    root = tmp_path / "fc"
    started = root.with_suffix(".started")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pace = 0.05
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability._fc_fit", str(root), "--pace", str(pace)], cwd=REPO, env=env
    )
    try:
        deadline = time.monotonic() + 300
        while not started.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists(), "the child never started its build"
        time.sleep(random.Random(seed).uniform(0, pace * reference[1]))
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    state, _ = fit(root)
    assert_same_state(state, reference[0])
    assert leftovers(root) == []


@pytest.mark.ddp
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_ranks_agree_to_rebuild_a_corrupted_entry(tmp_path: Path) -> None:
    """Only local rank 0 reads the files to check them; every rank must follow its verdict (no hang, no mix)."""
    script = REPO / "tests" / "callbacks" / "_feature_cache_ddp_script.py"
    results = [tmp_path / f"cached-devices2-rank{rank}.pt" for rank in (0, 1)]
    run_ddp_script(script, tmp_path)
    first = [torch.load(path, weights_only=False) for path in results]
    (entry,) = entries(tmp_path / "fc")
    flip_bytes(entry, seed=1)
    run_ddp_script(script, tmp_path)
    second = [torch.load(path, weights_only=False) for path in results]
    for before, after in zip(first, second, strict=True):
        # built again, by every rank
        assert sum(after["counts"].values()) == sum(before["counts"].values()) > 0
        assert_same_state(after["state"], before["state"])
    assert len(entries(tmp_path / "fc")) == 1
