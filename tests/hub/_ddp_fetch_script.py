"""One rank of the 2-process download test (run by test_ddp_download.py; not collected by pytest).

Usage: python _ddp_fetch_script.py RANK WORLD_SIZE ENDPOINT WORKDIR

Three loads, each followed by a barrier that proves every rank is still in step:

1. ``shared``: ``hf://org/mlp@v1`` into one cache for all ranks (rank 0 downloads, the others read the cache);
2. ``missing``: an unknown repo (every rank must raise HubDownloadError, none may hang);
3. ``own-cache``: every rank has its own cache (as on separate nodes): the other ranks find nothing in theirs
   and download themselves.

Each rank writes ``<WORKDIR>/rank<R>-<case>.safetensors`` (the loaded state) or ``.error`` (the error text).
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file


def main() -> None:
    rank, world, endpoint, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    from lightning_dnn.hub import HubDownloadError, load_pretrained

    cases = {
        "shared": ("hf://org/mlp@v1", workdir / "cache-shared"),
        "missing": ("hf://org/does-not-exist", workdir / "cache-shared"),
        "own-cache": ("hf://org/mlp@v1", workdir / f"cache-rank{rank}"),
    }
    for case, (source, cache) in cases.items():
        try:
            net, _ = load_pretrained(source, endpoint=endpoint, cache_dir=cache)
            state = {k: v.contiguous() for k, v in net.state_dict().items()}
            save_file(state, str(workdir / f"rank{rank}-{case}.safetensors"))
        except HubDownloadError as err:
            (workdir / f"rank{rank}-{case}.error").write_text(f"{type(err).__name__}: {err}")
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
