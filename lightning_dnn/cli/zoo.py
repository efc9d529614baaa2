"""``lightning-dnn zoo list | info NAME | pull NAME | build NAME | publish NAME --repo-id ORG/NAME``.

The zoo (``zoo/`` in the repository) holds one Hub-format folder per entry (``config.json``,
``model.safetensors``, ``README.md``) with the recipe that trains it (``recipe.yaml``, a LightningCLI config), and
``zoo/index.json``, which pins each entry to a Hub repo, a commit and the sha256 of each file
(:mod:`lightning_dnn.hub.zoo`); the package ships a copy of that index. The commands:

* ``list``: the entries with their repo, accuracy, license, and whether they are available offline (``local``: a
  verified folder in this clone; ``cached``: a verified copy in the Hugging Face cache);
* ``info NAME``: the entry, a summary of its model card, and its recipe;
* ``pull NAME``: download the pinned files from the Hub into the Hugging Face cache, verify their sha256 and that
  they load; prints the folder (``--local-dir`` copies the files there too);
* ``build NAME``: retrain from the recipe and compare the metrics with the index (see
  :func:`~lightning_dnn.cli._zoo_build.build_entry`); exit code 1 when a checked metric is outside
  ``--tolerance``;
* ``publish NAME --repo-id ORG/NAME``: upload the entry's folder with
  :func:`~lightning_dnn.hub.push_to_hub`, then pin the index entry to that repo and the commit the Hub returned.

``list``, ``info`` and ``pull`` read ``--index``, else ``$LIGHTNING_DNN_ZOO_INDEX``, else the packaged index;
``build`` and ``publish`` write ``--index``, else ``$LIGHTNING_DNN_ZOO_INDEX``, else the checkout's
``zoo/index.json``, and then copy it into the package (:func:`~lightning_dnn.cli._zoo_repo.update_index`).

Revisions: an entry that was never published is pinned to its *canonical publication commit*, the sha of a
one-commit repository built from its files with a fixed author, date and message (see
:mod:`lightning_dnn.cli._zoo_repo`), so the pin is stable and a mirror built from the folder serves exactly it;
``publish`` replaces it with the Hub's commit. Exit codes: 0 success, 1 the operation failed (download, checksum,
metrics out of tolerance), 2 invalid arguments or unknown names.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning_dnn._checks import unknown_name_error
from lightning_dnn.cli._zoo_build import RECIPE_NAME, BuildResult, build_entry
from lightning_dnn.cli._zoo_inspect import (
    availability,
    cached_folder,
    card_summary,
    local_state,
    revision_kind,
)
from lightning_dnn.cli._zoo_repo import maintainers_index_path, update_index
from lightning_dnn.hub._download import fetch_repo_folder
from lightning_dnn.hub._names import COMMIT, REPO_ID
from lightning_dnn.hub.errors import HubDownloadError
from lightning_dnn.hub.load import load_pretrained
from lightning_dnn.hub.push import push_to_hub
from lightning_dnn.hub.zoo import ZOO_INDEX_ENV, ZooEntry, default_index_path, load_zoo_index

__all__ = ["BuildResult", "build_entry", "zoo_main"]

log = logging.getLogger(__name__)


class _CommandError(Exception):
    """An expected failure: its message goes to stderr and ``code`` becomes the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def zoo_main(argv: Sequence[str]) -> int:
    """Run ``lightning-dnn zoo ARGS`` and return the exit code (0 ok, 1 failed, 2 bad arguments/unknown name).

    Args:
        argv: the arguments after ``zoo``, e.g. ``["list"]`` or ``["pull", "digits-mlp-classes0-4"]``.

    Returns:
        the exit code.

    Raises:
        TypeError: if ``argv`` is not a list of strings.

    Example:
        >>> zoo_main(["info", "digits-mlp-clases0-4"])  # stderr: Unknown zoo model ... Did you mean ...?
        2
        >>> zoo_main(["--help"])
        usage: lightning-dnn zoo [-h] [--index INDEX] COMMAND ...
        ...
        0
    """
    if isinstance(argv, str) or not all(isinstance(a, str) for a in argv):
        raise TypeError(f"`argv` must be a list of strings, got {argv!r}")
    args_list = list(argv)
    lightning_args: list[str] = []
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, lightning_args = args_list[:cut], args_list[cut + 1 :]
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed by argparse)
        return exit_.code if isinstance(exit_.code, int) else 2
    if lightning_args and args.command != "build":
        sys.stderr.write(
            f"lightning-dnn zoo: error: arguments after '--' are only for `build`, got {lightning_args}\n"
        )
        return 2
    args.lightning_args = lightning_args
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except _CommandError as err:
        sys.stderr.write(f"lightning-dnn zoo {args.command}: error: {err}\n")
        return err.code


# ------------------------------------------------------------------------------------------------ parser
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-dnn zoo",
        description="List, inspect, download, rebuild and publish the lightning-dnn model zoo.",
        epilog=f"list/info/pull read --index, else ${ZOO_INDEX_ENV}, else the index packaged with lightning-dnn; "
        f"build/publish write --index, else ${ZOO_INDEX_ENV}, else zoo/index.json of this checkout (and copy it "
        "into the package).",
    )
    parser.add_argument("--index", type=Path, help="the zoo index file (see below for the default)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list the entries")
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")
    listing.set_defaults(handler=_list)

    info = commands.add_parser("info", help="show an entry, its model card and recipe")
    info.add_argument("name")
    info.add_argument("--json", action="store_true", help="print the details as JSON")
    info.set_defaults(handler=_info)

    pull = commands.add_parser("pull", help="download an entry at its pinned commit and verify it")
    pull.add_argument("name")
    pull.add_argument("--endpoint", help="the Hub endpoint (default: HF_ENDPOINT or https://huggingface.co)")
    pull.add_argument("--local-dir", type=Path, help="also copy the verified files into this folder")
    pull.add_argument("--cache-dir", type=Path, help="the Hugging Face cache (default: HF_HUB_CACHE)")
    pull.add_argument("--token", help="a Hub token (default: HF_TOKEN or `hf auth login`)")
    pull.add_argument("--offline", action="store_true", help="use the cache only (like HF_HUB_OFFLINE=1)")
    pull.set_defaults(handler=_pull)

    build = commands.add_parser(
        "build",
        help="retrain an entry from its recipe and compare the metrics with the index",
        description="Retrain NAME from zoo/NAME/recipe.yaml, compare its metrics with the index, and write it: "
        "into --output, or (when the checked metrics are within --tolerance) into the zoo folder and the "
        "index. Arguments after `--` go to LightningCLI (e.g. -- --trainer.enable_progress_bar=false).",
    )
    build.add_argument("name")
    build.add_argument("--max-epochs", type=int, help="override the recipe's max_epochs (needs --output)")
    build.add_argument("--output", type=Path, help="write the built folder here instead of into the zoo")
    build.add_argument(
        "--tolerance", type=float, default=0.01, help="largest |difference| (default %(default)s)"
    )
    build.add_argument(
        "--check",
        action="append",
        metavar="METRIC",
        help="a metric compared with --tolerance (repeatable; default test_accuracy, or test_loss for a model "
        "without accuracy)",
    )
    build.add_argument("--recipe", type=Path, help="train with this recipe instead of zoo/NAME/recipe.yaml")
    build.add_argument("--work-dir", type=Path, help="keep Lightning's logs and checkpoints here")
    build.add_argument("--force", action="store_true", help="write into the zoo even outside --tolerance")
    build.add_argument("--repo-id", help="the Hub repo of a new entry (default lightning-dnn/NAME)")
    build.set_defaults(handler=_build)

    publish = commands.add_parser(
        "publish", help="upload an entry to the Hub and pin the index to that commit"
    )
    publish.add_argument("name")
    publish.add_argument("--repo-id", required=True, help="the Hub repo, ORG/NAME")
    publish.add_argument("--token", help="a token with write access (default: HF_TOKEN or `hf auth login`)")
    publish.add_argument("--private", action="store_true", help="create the repo as private")
    publish.add_argument(
        "--endpoint", help="the Hub endpoint (default: HF_ENDPOINT or https://huggingface.co)"
    )
    publish.set_defaults(handler=_publish)
    return parser


# ------------------------------------------------------------------------------------------------ commands
def _list(args: argparse.Namespace) -> int:
    index = _index(args)
    rows: list[dict[str, Any]] = [
        {
            "name": e.name,
            "repo_id": e.repo_id,
            "revision": e.revision,
            "metrics": dict(e.metrics),
            "license": e.license,
            "offline": availability(e),
        }
        for e in index.values()
    ]
    if args.json:
        _write(json.dumps(rows, indent=2))
        return 0
    table = [["NAME", "REPO", "ACCURACY", "LICENSE", "OFFLINE"]]
    for row in rows:
        accuracy = row["metrics"].get("test_accuracy")
        table.append(
            [
                row["name"],
                row["repo_id"],
                "-" if accuracy is None else f"{accuracy:.4f}",
                row["license"] or "-",
                row["offline"] or "-",
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        _write("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip())
    _write(
        f"\n{len(rows)} {'entry' if len(rows) == 1 else 'entries'} (ACCURACY: test accuracy; OFFLINE: local = verified folder in this clone, "
        "cached = verified copy in the Hugging Face cache)"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    entry = _lookup(args)
    state, local = local_state(entry)
    folder = local if local is not None else cached_folder(entry)
    recipe = (entry.local_path / RECIPE_NAME) if entry.local_path is not None else None
    details: dict[str, Any] = {
        "name": entry.name,
        "repo_id": entry.repo_id,
        "revision": entry.revision,
        "revision_kind": revision_kind(entry, local),
        "license": entry.license,
        "metrics": dict(entry.metrics),
        "files": dict(entry.files),
        "local_folder": str(entry.local_path) if entry.local_path is not None else None,
        "local_state": state,
        "recipe": str(recipe) if recipe is not None and recipe.is_file() else None,
        "card": card_summary(folder) if folder is not None else None,
    }
    if args.json:
        _write(json.dumps(details, indent=2))
        return 0
    _write(f"{entry.name}")
    _write(f"  repo:      hf://{entry.repo_id}@{entry.revision}")
    _write(f"  revision:  {details['revision_kind']}")
    _write(f"  license:   {entry.license or '-'}")
    shown = ", ".join(f"{key} {_number(value)}" for key, value in sorted(entry.metrics.items()))
    _write(f"  metrics:   {shown or '-'}")
    _write(f"  folder:    {details['local_folder'] or '-'} ({state})")
    _write(f"  recipe:    {details['recipe'] or '-'}")
    if details["recipe"]:
        _write(f"             rebuild with: lightning-dnn zoo build {entry.name}")
    _write("  files:")
    for name, sha in sorted(entry.files.items()):
        _write(f"    {name:<20}sha256 {sha}")
    card = details["card"]
    if card is None:
        _write(f"  card:      not available offline (lightning-dnn zoo pull {entry.name})")
        return 0
    _write("  card:")
    _write(f"    title:        {card['title']}")
    for key in ("architecture", "dataset", "classes", "parameters", "datasets", "tags"):
        if card.get(key) is not None:
            value = card[key]
            shown = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
            _write(f"    {key + ':':<14}{shown}")
    if card.get("description"):
        _write(f"    description:  {card['description']}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    entry = _lookup(args)
    try:
        folder = fetch_repo_folder(
            entry.repo_id,
            entry.revision,
            endpoint=args.endpoint,
            token=args.token,
            cache_dir=args.cache_dir,
            local_files_only=args.offline,
            sha256=entry.files,
        )
    except HubDownloadError as err:  # ChecksumMismatchError included
        raise _CommandError(str(err), 1) from None
    net, report = load_pretrained(folder)  # builds the network and loads every tensor (strict)
    sys.stderr.write(
        f"zoo:{entry.name}: hf://{entry.repo_id}@{entry.revision}, sha256 verified for "
        f"{', '.join(sorted(entry.files))}; {type(net).__name__} with {len(report.loaded)} tensors\n"
    )
    if args.local_dir is not None:
        target: Path = args.local_dir
        target.mkdir(parents=True, exist_ok=True)
        for name in sorted(entry.files):
            shutil.copyfile(folder / name, target / name)
        _write(str(target))
        return 0
    _write(str(folder))
    return 0


def _build(args: argparse.Namespace) -> int:
    try:
        result = build_entry(
            args.name,
            index=args.index,
            recipe=args.recipe,
            output=args.output,
            max_epochs=args.max_epochs,
            tolerance=args.tolerance,
            check=tuple(args.check) if args.check else None,
            force=args.force,
            repo_id=args.repo_id,
            work_dir=args.work_dir,
            lightning_args=args.lightning_args,
        )
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise _CommandError(str(err), 2) from None
    _write(result.report())
    _write(f"canonical commit: {result.revision}")
    if result.folder is not None:
        _write(f"written: {result.folder}")
    if not result.ok:
        where = "" if result.folder is not None else " (the zoo was left unchanged; --force writes it anyway)"
        sys.stderr.write(
            f"lightning-dnn zoo build: {', '.join(result.failures)} outside --tolerance {result.tolerance:g} of "
            f"the index{where}\n"
        )
        return 1
    return 0


def _publish(args: argparse.Namespace) -> int:
    if not REPO_ID.fullmatch(args.repo_id):
        raise _CommandError(f"--repo-id must look like 'org/name', got {args.repo_id!r}", 2)
    entry = _lookup(args, _written_index_path(args))
    state, folder = local_state(entry)
    if folder is None:
        raise _CommandError(
            f"zoo entry {entry.name!r} has no verified local folder to publish ({state}); run "
            f"`lightning-dnn zoo build {entry.name}` to rebuild it",
            1,
        )
    info = push_to_hub(
        folder,
        args.repo_id,
        private=True if args.private else None,
        token=args.token,
        endpoint=args.endpoint,
        commit_message=f"{entry.name}: publish",
    )
    oid = str(getattr(info, "oid", "") or "")
    if not COMMIT.fullmatch(oid):
        raise _CommandError(
            f"the Hub answered commit id {oid!r}, not a 40-hex sha; the index was not changed", 1
        )
    update_index(_written_index_path(args), entry.name, {"repo_id": args.repo_id, "revision": oid})
    _write(f"published zoo:{entry.name} to hf://{args.repo_id}@{oid}")
    _write(f"index updated: {_written_index_path(args)}")
    return 0


# ------------------------------------------------------------------------------------------------ helpers
def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


def _index_path(args: argparse.Namespace) -> Path:
    """The index that list/info/pull read."""
    return Path(args.index) if args.index is not None else default_index_path()


def _written_index_path(args: argparse.Namespace) -> Path:
    """The index that build/publish write (the maintainers' one, mirrored into the package)."""
    return Path(args.index) if args.index is not None else maintainers_index_path()


def _index(args: argparse.Namespace, path: Path | None = None) -> dict[str, ZooEntry]:
    try:
        return load_zoo_index(path if path is not None else _index_path(args))
    except (FileNotFoundError, ValueError) as err:
        raise _CommandError(str(err), 2) from None


def _lookup(args: argparse.Namespace, path: Path | None = None) -> ZooEntry:
    index = _index(args, path)
    if args.name not in index:
        raise _CommandError(str(unknown_name_error("zoo model", args.name, index)), 2)
    return index[args.name]
