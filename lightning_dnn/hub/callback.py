"""A callback that loads pretrained layers into the LightningModule when a fit starts (from a config, too)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lightning_dnn._lightning import is_strategy, rank_zero_info
from lightning_dnn._selection import Patterns
from lightning_dnn._state_key import StateKeyOnce
from lightning_dnn.hub._plan import LoadReport, check_options
from lightning_dnn.hub.load import (
    HF_PREFIX,
    ZOO_PREFIX,
    _parse_hf,
    _zoo_entry,
    load_pretrained,
    resolve_source,
)

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["PretrainedLayers"]

_SUPPORTED_STRATEGIES = ("SingleDeviceStrategy", "DDPStrategy")
_UNSUPPORTED_STRATEGIES = ("DeepSpeedStrategy",)  # a DDPStrategy subclass that shards


class PretrainedLayers(StateKeyOnce):
    r"""Load the selected tensors of a pretrained network into the LightningModule at the start of a fresh fit.

    The chapter's layer reuse as a callback, so that a LightningCLI config can say it: the tensors that
    :func:`~lightning_dnn.hub.load_pretrained` selects from ``source`` (``include``/``exclude``/``rename``, the
    library's selection rule, names relative to the network the module holds as ``self.net``) are copied, in
    place, into the module's parameters and buffers. Any LightningModule works, not only
    :class:`~lightning_dnn.DNNClassifier`.

    When: at ``on_fit_start``, after ``configure_model`` (layers built there exist) and before the sanity check
    and the first training step, so :class:`~lightning_dnn.callbacks.FeatureCache` caches the pretrained
    features and the layers :class:`~lightning_dnn.callbacks.LayerFreezer` froze hold the pretrained values,
    whatever the order of the callbacks (freezing only sets ``requires_grad``; the copy is in place, so the
    optimizer's parameters stay the same objects). A fit resumed from a checkpoint (``ckpt_path``) loads
    nothing: the checkpoint's weights win, and the source is not needed to resume.

    Under DDP every process loads the same files (a Hub download happens on rank 0 first, the others read its
    cache); the report is logged once. Strategies that shard or wrap parameters (FSDP, DeepSpeed) are refused:
    load with ``load_pretrained(source, into=model)`` before ``trainer.fit`` there.

    In a LightningCLI config::

        trainer:
          callbacks:
            - class_path: lightning_dnn.hub.PretrainedLayers
              init_args:
                source: zoo:fashion-5x100-elu-classes0-4
                include: hidden[1-5]

    Args:
        source: a local folder or ``.safetensors`` file, ``"hf://org/name[@revision]"`` or ``"zoo:name"``.
        include: regex or list of regexes selecting what to load (``None``: everything).
        exclude: regex or list of regexes removing names from the selection.
        rename: old prefix -> new prefix of the source's names.
        revision: the Hub revision of an ``hf://`` source.
        strict: raise if a selected name is missing, unexpected or of another shape (copying nothing);
            otherwise warn and copy what fits.

    Attributes:
        report: the :class:`~lightning_dnn.hub.LoadReport` of the last fit that loaded, ``None`` when the fit
            resumed from a checkpoint (or before any fit).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for an invalid regex or ``rename``, an unknown zoo name (with close matches), a malformed
            ``hf://`` source, a ``revision`` for a local source; at fit start, for a pattern that selects
            nothing (naming the module's layers) or an unsupported strategy.
        FileNotFoundError: for a local source that does not exist or holds no safetensors weights.
        StrictLoadError: at fit start, with ``strict=True``, for missing, unexpected or mismatched names.

    Example:
        >>> import tempfile, torch
        >>> import pytorch_lightning as pl
        >>> from lightning_dnn import DNNClassifier
        >>> from lightning_dnn.hub import save_pretrained
        >>> from lightning_dnn.nn import MLP
        >>> source, model = MLP(4, (6, 6), 3), DNNClassifier(MLP(4, (6, 6), 2))
        >>> data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = save_pretrained(source, tmp)
        ...     reuse = PretrainedLayers(tmp, include="hidden[12]")
        ...     trainer = pl.Trainer(max_epochs=1, limit_train_batches=0, callbacks=[reuse], logger=False,
        ...                          enable_checkpointing=False, enable_progress_bar=False,
        ...                          enable_model_summary=False, default_root_dir=tmp)
        ...     trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
        >>> reuse.report.loaded[:2], reuse.report.skipped
        (['hidden1.linear.weight', 'hidden1.linear.bias'], ['output.linear.weight', 'output.linear.bias'])
        >>> torch.equal(model.net.hidden2.linear.weight, source.hidden2.linear.weight)
        True
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        *,
        include: Patterns | None = None,
        exclude: Patterns | None = None,
        rename: Mapping[str, str] | None = None,
        revision: str | None = None,
        strict: bool = True,
    ) -> None:
        check_options(include, exclude, rename, strict)
        _check_source(source, revision)
        self.source = source
        self.include = include
        self.exclude = exclude
        self.rename = dict(rename) if rename is not None else None
        self.revision = revision
        self.strict = strict
        self.report: LoadReport | None = None
        self._loaded: list[str] = []  # the names loaded by the fit this one continues (from checkpoints)

    @override
    def state_key_fields(self) -> dict[str, Any]:
        """Distinguishes instances loading different selections from different sources in one checkpoint."""
        return {"source": str(self.source), "include": self.include, "exclude": self.exclude}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse strategies that shard or wrap parameters, before anything is built."""
        if stage != "fit":
            return
        self.report, self._loaded = None, []  # a resume restores `_loaded` from the checkpoint after `setup`
        strategy = trainer.strategy
        supported = is_strategy(strategy, *_SUPPORTED_STRATEGIES)
        if not supported or is_strategy(strategy, *_UNSUPPORTED_STRATEGIES):
            raise ValueError(
                f"`PretrainedLayers` supports single-device and DDP strategies, got {type(strategy).__name__}, "
                "which shards or wraps the parameters before the fit starts. Load the layers before "
                f"`trainer.fit` instead: load_pretrained({str(self.source)!r}, include=..., into=model)"
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Load the selection into ``pl_module`` unless the fit resumes from a checkpoint (restored already)."""
        if trainer.ckpt_path:
            rank_zero_info(
                f"PretrainedLayers: the fit resumes from {trainer.ckpt_path}; its weights are kept and "
                f"{self.source} is not loaded"
            )
            return
        _, report = load_pretrained(
            self.source,
            include=self.include,
            exclude=self.exclude,
            rename=self.rename,
            revision=self.revision,
            strict=self.strict,
            into=pl_module,
        )
        self.report, self._loaded = report, list(report.loaded)
        rank_zero_info(f"PretrainedLayers: loaded {self.source} into {type(pl_module).__name__}\n{report}")

    @override
    def state_dict(self) -> dict[str, Any]:
        """What the fit's start loaded, kept through resumes (for the record; a resume never loads again)."""
        return {"source": str(self.source), "loaded": list(self._loaded)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the record of what was loaded when the fit began."""
        self._loaded = [str(name) for name in state_dict.get("loaded", [])]


def _check_source(source: object, revision: str | None) -> None:
    """Reject a source that cannot load, before the fit: unknown zoo names, malformed hf:// ids, absent folders."""
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise TypeError(f"`revision` must be a non-empty string or None, got {revision!r}")
    if isinstance(source, str) and source.startswith(ZOO_PREFIX):
        _zoo_entry(source, revision)  # the name is in the index, `revision` is its pinned one
    elif isinstance(source, str) and source.startswith(HF_PREFIX):
        _parse_hf(source, revision)  # a well-formed id, a revision in the source and in `revision` agree
    elif isinstance(source, str | os.PathLike):
        resolve_source(source, revision=revision)  # a local folder or file: existence and weights, no network
    else:
        raise TypeError(
            "`source` must be a folder path, 'hf://org/name[@revision]' or 'zoo:name', "
            f"got {type(source).__name__}"
        )
