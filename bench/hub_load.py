"""Issue 5's hub benchmark: `load_pretrained` vs. plain safetensors + `load_state_dict`, and downloads via olah.

Every zoo entry (zoo/index.json) is measured in this one process, the variants interleaved (their order rotates
every repeat), medians reported with their ratio to the plain baseline.

Warm (files already on disk; goal: ratio <= 1.2):
  build     `load_pretrained(folder)` (reads config.json, builds the network, loads)
            vs. `net = MLP(...)/ConvNet(...)` by hand + `net.load_state_dict(load_file(path))`
  into      `load_pretrained(folder, into=net)` vs. `net.load_state_dict(load_file(path))`
  hf-cache  `load_pretrained("hf://lightning-dnn/<name>", cache_dir=warm, local_files_only=True)` (resolves the
            files in the Hugging Face cache) vs. the hand-built baseline on the cached file's known path, and vs.
            the same baseline that first finds the path with `hf_hub_download(..., local_files_only=True)`

Cold (a fresh cache dir every repeat, downloads from a local olah server on 127.0.0.1; expected ratio ~1):
  `load_pretrained("hf://lightning-dnn/<name>", endpoint=url, cache_dir=fresh)` vs. `hf_hub_download` of
  config.json + model.safetensors (same endpoint, fresh cache), and vs. that download + hand-built network +
  `load_state_dict` (the whole job done by hand).

Faults (``--faults``; real waits, nothing shortened): seconds from ``load_pretrained("hf://org/mlp", ...)`` to its
error with the endpoint down (a closed port on 127.0.0.1), answering HTTP 500, and (``--stall``, minutes) accepting
connections and never answering.

    python -m bench.hub_load [--threads 1] [--repeats 50] [--cold-repeats 20]
    python -m bench.hub_load --faults [--stall]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from bench.olah_server import OlahServer, StallServer, StatusServer, closed_port_url
from lightning_dnn.hub import get_architecture, load_pretrained, resolve_source

ROOT = Path(__file__).resolve().parent.parent
ORG = "lightning-dnn"
FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class Entry:
    """A zoo entry: its name, local folder, architecture class and constructor arguments."""

    name: str
    folder: Path
    cls: type[nn.Module]
    config: dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.folder / "model.safetensors"

    def build(self) -> nn.Module:
        """The network built by hand, as a user who knows the architecture writes it (no config.json read)."""
        return self.cls(**self.config)

    def size_kib(self) -> float:
        return self.weights.stat().st_size / 1024


def zoo_entries() -> list[Entry]:
    index = json.loads((ROOT / "zoo" / "index.json").read_text())
    entries = []
    for name, item in sorted(index["models"].items()):
        folder = ROOT / item["path"]
        document = json.loads((folder / "config.json").read_text())
        spec = get_architecture(document["architecture"])
        entries.append(Entry(name, folder, spec.cls, dict(document["config"])))
    return entries


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    before: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Run each variant once untimed, then ``repeats`` rounds with the order rotated every round.

    ``before`` runs ahead of every call, outside the clock.
    """
    names = list(variants)
    for name in names:
        if before is not None:
            before()
        variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if before is not None:
                before()
            times[name].append(timed(variants[name]))
    if before is not None:
        before()
    return times


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def warm_case(entry: Entry, repeats: int, hf_cache: Path) -> dict[str, dict[str, list[float]]]:
    """The three warm comparisons for one entry (each checked to load the same tensors first)."""
    weights = str(entry.weights)
    source = f"hf://{ORG}/{entry.name}"
    cached_folder, _ = resolve_source(source, cache_dir=hf_cache, local_files_only=True)
    cached_weights = str(cached_folder / "model.safetensors")

    def plain_build() -> nn.Module:
        net = entry.build()
        net.load_state_dict(load_file(weights))
        return net.eval()

    def plain_build_cached() -> nn.Module:
        net = entry.build()
        net.load_state_dict(load_file(cached_weights))
        return net.eval()

    target = entry.build()

    def ours_into() -> object:
        return load_pretrained(entry.folder, into=target)

    def plain_into() -> object:
        return target.load_state_dict(load_file(weights))

    def ours_cached() -> object:
        return load_pretrained(source, cache_dir=hf_cache, local_files_only=True)

    def plain_lookup_cached() -> nn.Module:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(
            f"{ORG}/{entry.name}", "model.safetensors", cache_dir=hf_cache, local_files_only=True
        )
        net = entry.build()
        net.load_state_dict(load_file(path))
        return net.eval()

    reference = plain_build()
    checks = {
        "build": load_pretrained(entry.folder)[0],
        "into": load_pretrained(entry.folder, into=entry.build())[0],
        "hf-cache": load_pretrained(source, cache_dir=hf_cache, local_files_only=True)[0],
        "hf-cache baseline": plain_lookup_cached(),
    }
    for what, net in checks.items():
        if not same_state(net, reference):
            raise RuntimeError(f"{entry.name}: {what} loaded different tensors than the baseline")
    return {
        "build": interleave({"ours": lambda: load_pretrained(entry.folder), "plain": plain_build}, repeats),
        "into": interleave({"ours": ours_into, "plain": plain_into}, repeats),
        "hf-cache": interleave(
            {"ours": ours_cached, "plain": plain_build_cached, "plain+lookup": plain_lookup_cached}, repeats
        ),
    }


def cold_case(entry: Entry, url: str, repeats: int, scratch: Path) -> dict[str, list[float]]:
    """Fresh-cache downloads of one entry: load_pretrained vs. hf_hub_download (+ build + load by hand)."""
    from huggingface_hub import hf_hub_download

    repo_id = f"{ORG}/{entry.name}"
    counter = iter(range(10**9))
    pending: list[Path] = []

    def fresh() -> Path:
        path = scratch / f"cache-{next(counter)}"
        pending.append(path)
        return path

    def download(cache: Path) -> dict[str, str]:
        return {f: hf_hub_download(repo_id, f, endpoint=url, cache_dir=cache, token=False) for f in FILES}

    def ours() -> object:
        return load_pretrained(f"hf://{repo_id}", endpoint=url, cache_dir=fresh(), token=False)

    def plain_download() -> object:
        return download(fresh())

    def plain_full() -> nn.Module:
        paths = download(fresh())
        net = entry.build()
        net.load_state_dict(load_file(paths["model.safetensors"]))
        return net.eval()

    variants: dict[str, Callable[[], object]] = {
        "ours": ours,
        "download": plain_download,
        "download+load": plain_full,
    }

    return interleave(variants, repeats, before=lambda: drop(pending))


def drop(paths: list[Path]) -> None:
    """Delete the cache folders of earlier calls."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    paths.clear()


def machine() -> str:
    import huggingface_hub
    import safetensors

    try:
        from importlib.metadata import version

        olah = version("olah")
    except Exception:
        olah = "?"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
        f"safetensors {safetensors.__version__}, huggingface_hub {huggingface_hub.__version__}, olah {olah}, "
        f"load average {load:.1f}"
    )


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:.2f} ms"


def ratio(ours: list[float], base: list[float]) -> str:
    return f"{statistics.median(ours) / statistics.median(base):.2f}x"


WARM_BASELINES = {
    ("build", "plain"): "build by hand + load_state_dict(load_file(path))",
    ("into", "plain"): "load_state_dict(load_file(path))",
    ("hf-cache", "plain"): "build by hand + load_state_dict(load_file(cached path))",
    ("hf-cache", "plain+lookup"): "hf_hub_download(local_files_only=True) + build by hand + load_state_dict",
}


def warm_rows(results: dict[str, dict[str, dict[str, list[float]]]], entries: list[Entry]) -> list[str]:
    rows = [
        "| entry (weights) | case | load_pretrained | plain baseline | time | ratio (goal <= 1.2) |",
        "|---|---|---|---|---|---|",
    ]
    for entry in entries:
        for case, t in results[entry.name].items():
            for variant in t:
                if variant == "ours":
                    continue
                rows.append(
                    f"| {entry.name} ({entry.size_kib():.0f} KiB) | {case} | {ms(t['ours'])} | "
                    f"{WARM_BASELINES[case, variant]} | {ms(t[variant])} | **{ratio(t['ours'], t[variant])}** |"
                )
    return rows


def cold_rows(results: dict[str, dict[str, list[float]]], entries: list[Entry]) -> list[str]:
    rows = [
        "| entry (weights) | load_pretrained (hf://) | hf_hub_download x2 | ratio (~1) | "
        "download + build + load by hand | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for entry in entries:
        t = results[entry.name]
        rows.append(
            f"| {entry.name} ({entry.size_kib():.0f} KiB) | {ms(t['ours'])} | {ms(t['download'])} | "
            f"**{ratio(t['ours'], t['download'])}** | {ms(t['download+load'])} | "
            f"**{ratio(t['ours'], t['download+load'])}** |"
        )
    return rows


def time_to_error(endpoint: str, cache: Path) -> tuple[float, str]:
    """Seconds until ``load_pretrained`` of a repo at ``endpoint`` raises, and the error's first line."""
    started = time.perf_counter()
    try:
        load_pretrained("hf://org/mlp", endpoint=endpoint, cache_dir=cache, token=False)
    except Exception as err:
        return time.perf_counter() - started, f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return time.perf_counter() - started, "(no error)"


def fault_rows(stall: bool) -> list[str]:
    """Time to the error for each fault, with real waits (huggingface_hub's retries included)."""
    from huggingface_hub import constants

    rows = ["| fault | seconds to the error | requests seen by the server | error |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="bench_hub_faults_") as tmp:
        seconds, error = time_to_error(closed_port_url(), Path(tmp) / "down")
        rows.append(f"| down (port closed) | {seconds:.1f} | - | {error[:160]} |")
        with StatusServer(500) as server:
            seconds, error = time_to_error(server.url, Path(tmp) / "500")
            rows.append(f"| HTTP 500 | {seconds:.1f} | {len(server.requests)} | {error[:160]} |")
        if stall:
            with StallServer() as stalled:
                seconds, error = time_to_error(stalled.url, Path(tmp) / "stall")
                rows.append(
                    f"| stalled (HF_HUB_ETAG_TIMEOUT={constants.HF_HUB_ETAG_TIMEOUT}) | {seconds:.1f} | "
                    f"{len(stalled.connections)} connections | {error[:160]} |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pinned)")
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per warm comparison")
    parser.add_argument(
        "--cold-repeats", type=int, default=20, help="timed fresh-cache downloads per variant"
    )
    parser.add_argument("--faults", action="store_true", help="time to the error for a Hub that is down or fails")
    parser.add_argument("--stall", action="store_true", help="with --faults: also a server that never answers")
    args = parser.parse_args()
    if args.faults:
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        print("\n".join(fault_rows(args.stall)))
        return
    if args.threads < 1 or args.repeats < 1 or args.cold_repeats < 1:
        parser.error("--threads, --repeats and --cold-repeats must be >= 1")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning_dnn").setLevel(logging.ERROR)
    os.environ.pop("HF_HUB_OFFLINE", None)

    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    constants.HF_HUB_OFFLINE = False
    constants.HF_HUB_DISABLE_TELEMETRY = True

    entries = zoo_entries()
    with tempfile.TemporaryDirectory(prefix="bench_hub_load_") as tmp:
        scratch = Path(tmp)
        server = OlahServer(scratch / "olah")
        try:
            for entry in entries:
                server.add_repo(f"{ORG}/{entry.name}", [entry.folder])
            url = server.start()
            warm_cache = scratch / "warm-cache"
            for entry in entries:  # fill the warm Hugging Face cache once
                load_pretrained(f"hf://{ORG}/{entry.name}", endpoint=url, cache_dir=warm_cache, token=False)
            started = time.perf_counter()
            warm = {e.name: warm_case(e, args.repeats, warm_cache) for e in entries}
            warm_s = time.perf_counter() - started
            started = time.perf_counter()
            cold = {e.name: cold_case(e, url, args.cold_repeats, scratch) for e in entries}
            cold_s = time.perf_counter() - started
        finally:
            server.stop()
    lines = [
        f"Hub load benchmark on {machine()}",
        "",
        f"Warm: files already on disk; median of {args.repeats} interleaved repeats ({warm_s:.0f} s in all).",
        "",
        *warm_rows(warm, entries),
        "",
        f"Cold: a fresh cache dir per call, downloads from olah on 127.0.0.1; median of {args.cold_repeats} "
        f"interleaved repeats ({cold_s:.0f} s in all).",
        "",
        *cold_rows(cold, entries),
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
