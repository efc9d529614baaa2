"""The zoo's build pipeline: train an entry from its recipe, save it as a Hub folder, compare, then publish locally.

:func:`build_entry` runs the recipe (a LightningCLI config, ``zoo/<name>/recipe.yaml``) through
:class:`~lightning_dnn.cli.DNNCLI` (``trainer.fit``, ``trainer.validate`` when there is a validation split,
``trainer.test``), writes the trained network with :func:`~lightning_dnn.hub.save_pretrained` into a staging folder
(metrics from those runs, dataset, classes, the zoo name and the recipe, all of which the hub's one card renderer
shows), and compares the metrics with the index entry. Only then does it move the files into place: into
``--output`` (any folder), or into the zoo folder together with a new index entry (file hashes, metrics, and the
canonical publication commit of :mod:`lightning_dnn.cli._zoo_repo` as the pinned revision) when the checked
metrics are within the tolerance.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from lightning_dnn._checks import check_int, check_number
from lightning_dnn.cli._zoo_repo import canonical_commit, file_hashes, maintainers_index_path, update_index
from lightning_dnn.cli.training import DNNCLI
from lightning_dnn.hub._io import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, write_folder_atomically
from lightning_dnn.hub.save import save_pretrained
from lightning_dnn.hub.zoo import ZooEntry, load_zoo_index

__all__ = [
    "DEFAULT_LICENSE",
    "DEFAULT_ORG",
    "RECIPE_NAME",
    "BuildResult",
    "build_entry",
    "card_options",
    "recipe_description",
]

log = logging.getLogger(__name__)

RECIPE_NAME = "recipe.yaml"
DEFAULT_ORG = "lightning-dnn"
DEFAULT_LICENSE = "apache-2.0"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
# Hub dataset ids of the data modules' sources (the card's front matter); others keep the data module's name.
_DATASET_IDS = {"Fashion-MNIST": "fashion_mnist", "MNIST": "mnist", "digits": "digits"}
_METRIC_NAMES = {"acc": "accuracy", "accuracy": "accuracy", "loss": "loss", "mse": "mse"}


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_entry` produced.

    Attributes:
        name: the zoo name.
        metrics: the new metrics (``test_accuracy``, ``test_loss`` and, with a validation split,
            ``val_accuracy``, ``val_loss``).
        reference: the index entry's metrics (empty for a new entry).
        checked: the metric names compared against ``tolerance``.
        tolerance: the largest accepted absolute difference of a checked metric.
        revision: the canonical publication commit of the built files.
        folder: where the files were written, or ``None`` when nothing was written.

    Example:
        >>> result = BuildResult("m", {"test_accuracy": 0.95}, {"test_accuracy": 0.97}, ("test_accuracy",),
        ...                      0.01, "a" * 40, None)
        >>> result.failures, result.ok
        (['test_accuracy'], False)
    """

    name: str
    metrics: Mapping[str, float]
    reference: Mapping[str, float]
    checked: tuple[str, ...]
    tolerance: float
    revision: str
    folder: Path | None
    differences: Mapping[str, float] = field(init=False)

    def __post_init__(self) -> None:
        diffs = {k: self.metrics[k] - self.reference[k] for k in self.metrics if k in self.reference}
        object.__setattr__(self, "differences", diffs)

    @property
    def failures(self) -> list[str]:
        """The checked metrics that differ from the reference by more than ``tolerance`` (or are not finite)."""
        return [
            k
            for k in self.checked
            if k in self.differences and not abs(self.differences[k]) <= self.tolerance + 1e-12
        ]

    @property
    def ok(self) -> bool:
        """Whether every checked metric with a reference is within ``tolerance``."""
        return not self.failures

    def report(self) -> str:
        """A table of the metrics: reference, new value, difference and verdict."""
        lines = [f"{'metric':<16}{'index':>10}{'built':>10}{'diff':>10}  check"]
        for key in sorted(set(self.metrics) | set(self.reference)):
            ref, new = self.reference.get(key), self.metrics.get(key)
            diff = self.differences.get(key)
            if key not in self.checked:
                verdict = "-"
            elif ref is None:
                verdict = "no reference"
            elif key in self.failures:
                verdict = f"FAIL (|diff| > {self.tolerance:g})"
            else:
                verdict = f"ok (|diff| <= {self.tolerance:g})"
            lines.append(f"{key:<16}{_fmt(ref):>10}{_fmt(new):>10}{_fmt(diff, signed=True):>10}  {verdict}")
        return "\n".join(lines)


def build_entry(
    name: str,
    *,
    index: str | os.PathLike[str] | None = None,
    recipe: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    max_epochs: int | None = None,
    tolerance: float = 0.01,
    check: Sequence[str] | None = None,
    force: bool = False,
    repo_id: str | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    lightning_args: Sequence[str] = (),
) -> BuildResult:
    """Train zoo entry ``name`` from its recipe, compare its metrics with the index, and write it.

    Args:
        name: the zoo name; its recipe is ``<zoo>/<name>/recipe.yaml`` (``<zoo>`` is the index's folder).
        index: the index file (default :func:`~lightning_dnn.cli._zoo_repo.maintainers_index_path`, the
            checkout's ``zoo/index.json``, which is copied into the package whenever it is written).
        recipe: another recipe file to train with.
        output: write the folder (and a copy of the recipe) here, whatever the comparison says, and leave the zoo
            and the index alone. ``None``: write into the zoo folder and update the index entry, only when the
            checked metrics are within ``tolerance`` (or ``force``).
        max_epochs: override the recipe's ``trainer.max_epochs`` (only with ``output``: the zoo's weights come
            from the recipe as written).
        tolerance: the largest accepted absolute difference of a checked metric, ``>= 0``.
        check: the metrics compared against ``tolerance``; the others are reported only. ``None``:
            ``test_accuracy``, or ``test_loss`` for a model that logs no accuracy (an autoencoder).
        force: write into the zoo even when a checked metric is outside ``tolerance``.
        repo_id: the Hub repo of a new entry (default ``"lightning-dnn/<name>"``); an existing entry keeps its own.
        work_dir: where Lightning writes logs and checkpoints (default: a temporary folder, deleted).
        lightning_args: more LightningCLI arguments (e.g. ``["--trainer.enable_progress_bar=false"]``).

    Returns:
        the :class:`BuildResult`; ``result.folder`` is ``None`` when nothing was written.

    Raises:
        ValueError: for an unknown name (with close matches) or invalid arguments.
        FileNotFoundError: if the recipe does not exist.

    Example:
        >>> build_entry("digits-mlp-classes0-5")
        Traceback (most recent call last):
            ...
        ValueError: Unknown zoo entry 'digits-mlp-classes0-5'. Did you mean 'digits-mlp-classes0-4'?...
    """
    index_path = Path(index) if index is not None else maintainers_index_path()
    tolerance = check_number("tolerance", tolerance, low=0.0)
    if max_epochs is not None:
        max_epochs = check_int("max_epochs", max_epochs, low=1)
        if output is None:
            raise ValueError(
                "`max_epochs` changes the recipe, so the result cannot replace the zoo entry; give `output` too"
            )
    if check is not None and (isinstance(check, str) or not all(isinstance(c, str) for c in check)):
        raise TypeError(f"`check` must be a list of metric names, got {check!r}")
    entries = _read_index(index_path)
    entry = entries.get(name)
    folder = (
        entry.local_path if entry is not None and entry.local_path is not None else index_path.parent / name
    )
    recipe_path = Path(recipe) if recipe is not None else folder / RECIPE_NAME
    if entry is None and recipe is None and not recipe_path.is_file():
        raise _unknown_entry(name, entries, index_path.parent)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"zoo `name` must match {_NAME.pattern!r} (a folder name), got {name!r}")
    if not recipe_path.is_file():
        raise FileNotFoundError(f"Recipe {str(recipe_path)!r} of zoo entry {name!r} does not exist")

    with tempfile.TemporaryDirectory(prefix=f"lightning-dnn-build-{name}-") as tmp:
        runs = Path(work_dir) if work_dir is not None else Path(tmp) / "runs"
        net, metrics, metadata = train_recipe(recipe_path, runs, max_epochs, lightning_args)
        metadata["metrics"] = metrics
        metadata["license"] = (entry.license if entry is not None else None) or DEFAULT_LICENSE
        metadata["zoo_name"] = name
        card = card_options(name, recipe_path)
        staging = save_pretrained(net, Path(tmp) / name, card=card, metadata=metadata)
        if check is None:
            check = ("test_accuracy",) if "test_accuracy" in metrics else ("test_loss",)
        result = BuildResult(
            name=name,
            metrics=metrics,
            reference=dict(entry.metrics) if entry is not None else {},
            checked=tuple(check),
            tolerance=tolerance,
            revision=canonical_commit(staging, name),
            folder=None,
        )
        missing = [k for k in check if k not in metrics]
        if missing:
            raise ValueError(
                f"`check` names metrics the build did not produce: {missing}; it has {sorted(metrics)}"
            )
        if output is not None:
            target = _move_in(staging, Path(output), recipe_path)
        elif result.ok or force:
            target = _move_in(staging, folder, recipe_path)
            _publish_locally(index_path, name, entry, target, result, repo_id, metadata["license"])
        else:
            return result
    return BuildResult(
        result.name,
        result.metrics,
        result.reference,
        result.checked,
        result.tolerance,
        result.revision,
        target,
    )


def train_recipe(
    recipe: Path, work_dir: Path, max_epochs: int | None = None, lightning_args: Sequence[str] = ()
) -> tuple[nn.Module, dict[str, float], dict[str, Any]]:
    """Fit, validate and test the recipe's model; return ``(net, metrics, metadata)``.

    The metadata holds the dataset, the class names, the source labels, the split sizes and the epochs trained.
    """
    args = ["--config", str(recipe), "--trainer.default_root_dir", str(work_dir)]
    if max_epochs is not None:
        args += ["--trainer.max_epochs", str(max_epochs)]
    with (
        warnings.catch_warnings()
    ):  # `lightning-dnn zoo build ...` is in sys.argv: LightningCLI warns about that
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)
        cli = DNNCLI(args=[*args, *lightning_args], run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=data)
    metrics: dict[str, float] = {}
    if _has_validation_split(data):
        metrics.update(_renamed(trainer.validate(model, datamodule=data, verbose=False)))
    metrics.update(_renamed(trainer.test(model, datamodule=data, verbose=False)))
    net = _trained_network(model)
    metadata: dict[str, Any] = {}
    info = getattr(data, "info", None)
    if info is not None:
        metadata["dataset"] = _DATASET_IDS.get(info.name, info.name)
    if hasattr(data, "class_names") and net is getattr(model, "net", None):  # a classifier's classes
        metadata["classes"] = list(data.class_names)
        metadata["labels"] = (
            list(data.classes) if data.classes is not None else list(range(len(data.class_names)))
        )
    training: dict[str, Any] = {"recipe": RECIPE_NAME, "epochs": int(trainer.current_epoch)}
    # EarlyStopping(restore_best_weights=True) ends the fit with the weights of its best epoch
    restorer = next(
        (
            c
            for c in getattr(trainer, "callbacks", [])
            if getattr(c, "restore_best_weights", False) and c.best_epoch is not None
        ),
        None,
    )
    if restorer is not None:
        training["best_epoch"] = int(restorer.best_epoch)
        training["monitor"] = str(getattr(restorer, "monitor", "?"))
    splits = _split_sizes(data)
    if splits:
        training["samples"] = splits
    metadata["training"] = training
    return net, metrics, metadata


def recipe_description(recipe: str | os.PathLike[str]) -> str:
    r"""The recipe's leading comment block as prose (command lines, indented in the comment, are left out).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "recipe.yaml"
        ...     _ = path.write_text("# A small net,\n# trained briefly.\n#   lightning-dnn zoo build x\nseed: 1\n")
        ...     print(recipe_description(path))
        A small net, trained briefly.
    """
    words: list[str] = []
    for line in Path(recipe).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   ") or line.strip() == "#":
            continue
        words.append(line[1:].strip())
    return " ".join(words)


def card_options(name: str, recipe: str | os.PathLike[str]) -> dict[str, str]:
    r"""The ``card`` options of a zoo entry's model card: its zoo name as title, the recipe's comment as description.

    The rest of the card comes from config.json's metadata (the zoo name, the recipe, the training facts), through
    the hub's one renderer (:func:`~lightning_dnn.hub.save_pretrained`).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "recipe.yaml"
        ...     _ = path.write_text("# A small net.\nseed: 1\n")
        ...     card_options("m", path)
        {'title': 'm', 'description': 'A small net.'}
    """
    return {"title": name, "description": recipe_description(recipe)}


# ----------------------------------------------------------------------------------------------- internals
def _read_index(path: Path) -> dict[str, ZooEntry]:
    try:
        return load_zoo_index(path)
    except FileNotFoundError:
        return {}


def _unknown_entry(name: str, entries: Mapping[str, ZooEntry], zoo_dir: Path) -> ValueError:
    known = set(entries)
    if zoo_dir.is_dir():
        known |= {p.parent.name for p in zoo_dir.glob(f"*/{RECIPE_NAME}")}
    close = difflib.get_close_matches(str(name), sorted(known), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"Unknown zoo entry {name!r}.{hint} Known: {', '.join(sorted(known)) or '(none)'}. A new entry needs "
        f"{str(zoo_dir / str(name) / RECIPE_NAME)!r}."
    )


def _trained_network(model: Any) -> nn.Module:
    """The network a zoo entry publishes: a classifier's ``net``, a pretraining module's ``encoder``."""
    for attribute in ("net", "encoder"):
        net = getattr(model, attribute, None)
        if isinstance(net, nn.Module):
            return net
    return model  # type: ignore[no-any-return]


def _renamed(results: Sequence[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for result in results:
        for key, value in result.items():
            stage, _, metric = key.partition("_")
            if stage in ("val", "test") and metric in _METRIC_NAMES:
                out[f"{stage}_{_METRIC_NAMES[metric]}"] = round(float(value), 6)
    return out


def _has_validation_split(data: Any) -> bool:
    if getattr(data, "val_split", None) == "test":
        return False  # "validation" is the test split: nothing held out
    loader = data.val_dataloader()
    return not (isinstance(loader, list | tuple) and len(loader) == 0)


def _split_sizes(data: Any) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for split in ("train", "val", "test"):
        try:
            sizes[split] = len(data.tensors(split)[1])
        except (AttributeError, ValueError, RuntimeError):
            continue
    return sizes


def _move_in(staging: Path, target: Path, recipe: Path) -> Path:
    """Move the three built files into ``target`` (config.json last) and put the recipe next to them."""
    writers = {n: partial(_copy_from, staging / n) for n in (WEIGHTS_NAME, CARD_NAME, CONFIG_NAME)}
    folder = write_folder_atomically(target, writers)
    if recipe.resolve() != (folder / RECIPE_NAME).resolve():
        shutil.copyfile(recipe, folder / RECIPE_NAME)
    return folder


def _copy_from(source: Path, destination: Path) -> None:
    shutil.copyfile(source, destination)


def _publish_locally(
    index_path: Path,
    name: str,
    entry: ZooEntry | None,
    folder: Path,
    result: BuildResult,
    repo_id: str | None,
    license_: str,
) -> None:
    """Write the index entry for the zoo folder just built: pinned to its canonical commit (unpublished)."""
    root = index_path.resolve().parent.parent
    try:
        path = folder.resolve().relative_to(root).as_posix()
    except ValueError:
        path = str(folder.resolve())
    if entry is not None and entry.revision != result.revision:
        log.warning(
            "zoo entry %r changed: the index now pins its canonical local commit %s; run `lightning-dnn zoo "
            "publish %s --repo-id ...` to publish it",
            name,
            result.revision,
            name,
        )
    fields = {
        "repo_id": entry.repo_id if entry is not None else (repo_id or f"{DEFAULT_ORG}/{name}"),
        "revision": result.revision,
        "files": file_hashes(folder),
        "metrics": dict(result.metrics),
        "license": license_,
        "path": path,
    }
    update_index(index_path, name, fields)


def _fmt(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:+.4f}" if signed else f"{value:.4f}"
