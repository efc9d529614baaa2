"""Rank 0 fetches first under torch.distributed; the other ranks then read the cache; every rank fails together.

Protocol (only when a process group is initialized with world_size > 1):

1. rank 0 runs ``fetch(local_only=False)`` (downloads into the shared Hugging Face cache);
2. ``broadcast_object_list`` sends rank 0's outcome (its error message, or ``None``) to every rank; this is also
   the barrier the other ranks wait at, so they never download concurrently with rank 0;
3. if rank 0 failed, every rank raises (no rank is left waiting in a later collective);
4. otherwise the other ranks run ``fetch(local_only=True)`` (cache only); a rank whose cache is not shared with
   rank 0 (another node) falls back to ``fetch(local_only=False)``;
5. ``all_gather_object`` collects every rank's outcome; if any rank failed, every rank raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import torch.distributed as dist

from lightning_dnn.hub.errors import HubDownloadError

T = TypeVar("T")


def distributed_world() -> tuple[int, int] | None:
    """``(rank, world_size)`` when a process group with more than one process is initialized, else ``None``."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return (dist.get_rank(), world) if world > 1 else None


def rank_zero_first(fetch: Callable[[bool], T], what: str) -> T:
    """Run ``fetch(local_only)`` with the protocol above; without a process group just ``fetch(False)``."""
    world = distributed_world()
    if world is None:
        return fetch(False)
    rank, size = world
    result: T | None = None
    error: BaseException | None = None
    if rank == 0:
        try:
            result = fetch(False)
        except Exception as err:  # reported to every rank below, then re-raised here
            error = err
    outcome: list[str | None] = [_describe(error) if error is not None else None]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        if error is not None:
            raise error
        raise HubDownloadError(f"Rank 0 failed to fetch {what}, so rank {rank} stops too: {outcome[0]}")
    if rank != 0:
        try:
            try:
                result = fetch(True)
            except HubDownloadError:
                result = fetch(False)  # this rank's cache is not rank 0's (another node): download here
        except Exception as err:
            error = err
    outcomes: list[str | None] = [None] * size
    dist.all_gather_object(outcomes, _describe(error) if error is not None else None)
    failed = [(r, message) for r, message in enumerate(outcomes) if message is not None]
    if failed:
        if error is not None:
            raise error
        shown = "; ".join(f"rank {r}: {message}" for r, message in failed)
        raise HubDownloadError(f"Fetching {what} failed on other ranks, so rank {rank} stops too: {shown}")
    return cast(T, result)  # every rank succeeded, so this rank's fetch returned


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
