"""Train the upper layers on cached outputs of the frozen lower layers: :class:`FeatureCache`."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lightning_dnn._checks import check_bool, check_choice, check_int
from lightning_dnn._selection import compile_patterns
from lightning_dnn._state_key import StateKeyOnce
from lightning_dnn.callbacks.feature_cache._lightning import (
    SourceSwap,
    TrainerRuntime,
    check_trainer,
    check_verify,
    swap_fit_sources,
    training_step_on,
)
from lightning_dnn.callbacks.feature_cache._plan import METHOD
from lightning_dnn.callbacks.feature_cache._session import (
    CacheOptions,
    CacheSession,
    Storage,
    TrainMode,
    summarize,
)

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["FeatureCache"]


class FeatureCache(StateKeyOnce):
    """Cache the frozen trunk's output once per sample and train the layers above it on the cache.

    While the lower layers are frozen, their output for a training sample never changes (Géron ch. 11, "caching
    the frozen layers"), so the callback computes it once per sample and trains the upper layers on it.
    Decisions, in the order the data flows:

    * **Which layers** (the trunk): ``boundary=None`` follows whatever is frozen (``requires_grad=False``, e.g.
      by :class:`~lightning_dnn.callbacks.LayerFreezer`): one traced forward pass lists the module calls, and the
      trunk is their longest frozen prefix (descending into a container that is only partly frozen; trailing
      layers without weights, such as activations and dropout, stay with the head). ``boundary="hidden2"`` (a
      module name, the library's selection rule: fullmatch on the name or on it without its first component) caches that module's output and refuses to start unless
      everything before it is frozen; ``boundary="forward_features"`` caches ``net.forward_features`` of
      networks with a ``forward_features`` / ``forward_head`` pair (timm models, our MLP). The network is the
      LightningModule's child holding the trunk (``self.net``), called with the batch's first element, as
      :class:`~lightning_dnn.DNNClassifier` does. Every build checks that ``network(cached features)`` equals
      ``network(inputs)`` on its first chunk (a forward that transforms its inputs with non-module code before
      the boundary fails it): an error at the fit's first build, a warning and live epochs after a milestone.
    * **Build**: once per sample, in eval mode (frozen batch norm uses its running statistics; frozen dropout is
      off: a warning says so when the trunk has dropout) under ``no_grad`` and the Trainer's precision context,
      over an unshuffled pass of the training data; the network stops at the boundary (the head does not run).
      Under DDP rank ``r`` computes samples ``r, r + W, ...`` and an ``all_gather`` per chunk gives every rank
      the full cache, so each sample's features are computed once in all and every rank can serve any index.
    * **Serving**: the fit loop's training loader is wrapped (through its data source, before the loop first
      asks for it); each epoch's batches are the same index batches the wrapped loader would produce
      (:class:`~lightning_dnn.loading.DeviceBatchLoader`: its ``(seed, epoch)`` permutation, and its mid-epoch
      resume state; a ``DataLoader``: its batch sampler, drawing the base seed as ``DataLoader.__iter__`` does,
      so even a ``RandomSampler`` gives the live run's order), each served as one ``index_select`` per cached
      tensor. While cached batches are served, the trunk's outermost modules (or ``forward_features``) return
      their input, so the epoch touches neither the input pipeline nor the frozen layers. The modules stay in
      place: ``state_dict``, checkpoints and optimizers see the real network. The batch-transfer hooks would
      run on cached features, so a LightningModule or data module that overrides them is refused.
    * **Validity**: at the first batch of each epoch (after every ``on_train_epoch_start`` hook, so after a
      LayerFreezer milestone) the trunk is re-derived from ``requires_grad`` and its weights are fingerprinted
      (a content hash computed on their device, so even ``param.data`` edits are seen). A new boundary, other
      weights or other data rebuild the cache; when nothing is frozen any more the cache is dropped and the
      epoch runs live. A fingerprint that differs across DDP ranks is an error.
    * **Random augmentation** makes a sample's features differ per epoch: a data module whose
      ``has_random_augmentation`` is true, or a dataset with torchvision-style random transforms, is refused
      unless ``views=K``: K augmented views per sample are cached (seeded by ``seed``), epoch ``e`` uses view
      ``e % K``.
    * **Storage**: ``"device"`` (the training device), ``"pinned"`` (page-locked host memory, for GPUs),
      ``"disk"`` (``.npy`` memory maps under ``cache_dir``, default ``<default_root_dir>/feature_cache``), or
      ``"auto"``: the device when the cache fits ``memory_budget`` (default: half of the free device memory or
      of the available host memory), else pinned memory (GPU runs), else disk. A disk entry is written under a
      temporary name and renamed into place after its manifest; a later run whose fingerprint (trunk weights,
      boundary, precision, views, and the data's content hash or ``data_id``) matches reuses it without
      running the trunk, once its files pass the content check (a SHA-256 per 4 MiB chunk, stored in the
      manifest; an entry that fails it is deleted and rebuilt, with a warning naming the file and chunk). A
      build killed mid-way leaves a ``.tmp-*`` directory, which the next run on the same ``cache_dir`` removes
      once its owner process is gone. Data that is neither held in tensors nor named by ``data_id`` gets a
      run-local key, and its disk entry is deleted after the fit.
    * **Checkpoints** hold the boundary, fingerprint and views (``state_dict``); the cache itself is rebuilt (or
      reused from disk) on resume, which continues as an uninterrupted run would.

    * **Equivalence with live training**: a module may run several times inside the trunk (torchvision's
      residual blocks call one ``relu`` two or three times); a module shared by trunk and head stays with the
      head. When the LightningModule overrides ``forward`` and holds the network in a child, the check also
      compares ``pl_module(cached features)`` with ``pl_module(inputs)``: preprocessing in ``forward`` (e.g.
      ``self.net((x - mean) / std)``) would be applied twice and is refused; move it into a module at the start
      of the network (or into the data). Trunk layers in training mode (batch norm, dropout) are refused, see
      ``train_mode_trunk``. The first chunk runs with gradients enabled: features that depend on a trainable
      parameter the frozen modules do not hold (``x + self.shift`` between frozen layers, a class token) are
      refused, naming it. An exception raised by the layers after the cut (a ViT's size mismatch) becomes the
      refusal's cause, with the advice to use ``forward_features`` or a lower boundary. Each refusal is an error
      before the first training epoch and a warning with live epochs after it. ``verify=True`` adds one training
      step on cached features compared with the same step live (see ``verify``); ``freeze_audit`` (in
      :mod:`lightning_dnn.callbacks`) shows where the cache would cut before a fit.

    Limits: single-device and DDP strategies; one training loader (a DeviceBatchLoader or a DataLoader over a
    map-style dataset). A ``training_step`` that transforms the inputs itself before calling the network
    (rather than through ``forward``) cannot be observed by the check: keep preprocessing in modules or data. On GPUs each cached step is still one Lightning step: for a tiny
    head the epoch is bound by per-step overhead, not by the trunk.

    Args:
        boundary: ``None`` (follow what is frozen, e.g. by LayerFreezer), a module name (regex, the library's
            selection rule; must select one module) whose output is cached, or ``"forward_features"``.
        views: cache this many augmented views per sample (epoch ``e`` uses view ``e % views``); required when
            the training data has random augmentation. ``None``: one view, and random augmentation is refused.
        storage: ``"auto"``, ``"device"``, ``"pinned"`` or ``"disk"`` (see above).
        memory_budget: bytes the cache may take in device or host memory (``"auto"`` goes to disk beyond it;
            ``"device"``/``"pinned"`` refuse a bigger cache); ``None``: half of what is free.
        cache_dir: the directory of disk caches; default ``<trainer.default_root_dir>/feature_cache``.
        cache_val: also serve the validation loaders from caches of their own (fixed order).
        batch_size: samples per chunk of the build pass; default: the training loader's batch size (the trunk
            then runs on inputs shaped as in a live step, which fit in memory and suit its kernels).
        data_id: a name that identifies the training data's content (e.g. ``"fashion-mnist-train-v1"``); it
            replaces the content hash in the disk cache key. Needed to reuse a disk cache across runs when the
            data is not held in tensors (a custom dataset).
        seed: seeds the augmented views.
        train_mode_trunk: ``"refuse"`` (default) a trunk whose batch norm, dropout or RReLU layers the training
            loop runs in training mode (frozen by hand with ``requires_grad_(False)``: live training would use
            batch statistics and random masks, the cache uses eval mode); LayerFreezer keeps frozen
            normalization layers in eval mode. ``"allow"``: cache the eval-mode features anyway, with a warning.
            Batch norm frozen in training mode is refused whether or not it still tracks running statistics
            (finetuning-scheduler's frozen batch norm), as is batch norm without running statistics.
        verify: after each build (or disk reuse) of the training cache, run one training step on cached features
            and the same step live, on copies of the LightningModule (the run itself, its random streams and
            metrics are untouched), with the same batch (this process's first build chunk) and random numbers;
            their losses and the gradients of every trainable parameter must agree (fp32: within
            ``1e-6 + 1e-4 * |live|``). A mismatch is an error naming the likely cause (trunk layers in training
            mode, a training step that changes the inputs or reads them besides the network); after the first
            epoch, a warning and live epochs. Costs two forward/backward passes and a copy of the module per build
            (forward hooks registered on the module run on the copies too; ``self.log`` is dropped); not with
            manual optimization.

    Raises:
        TypeError, ValueError: invalid arguments. At fit start: an unsupported strategy or loader,
            overridden batch-transfer hooks, random augmentation without ``views``, an explicit boundary with
            trainable layers below it or that the network's forward does not reproduce from cached features.

    Example:
        >>> import pytorch_lightning as pl, torch
        >>> from lightning_dnn import DNNClassifier
        >>> from lightning_dnn.callbacks import LayerFreezer
        >>> from lightning_dnn.loading import DeviceBatchLoader
        >>> from lightning_dnn.nn import MLP
        >>> model = DNNClassifier(MLP(4, (8, 8), 3))
        >>> calls = []
        >>> _ = model.net.hidden1.linear.register_forward_hook(lambda m, i, o: calls.append(len(o)))
        >>> data = DeviceBatchLoader(torch.randn(64, 4), torch.randint(0, 3, (64,)), batch_size=16)
        >>> cache = FeatureCache()
        >>> trainer = pl.Trainer(max_epochs=3, callbacks=[LayerFreezer("hidden1"), cache], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(model, data)
        >>> cache.current_boundary, sum(calls)  # hidden1 ran once per sample, not once per epoch
        ('net.hidden1', 64)
    """

    def __init__(
        self,
        boundary: str | None = None,
        *,
        views: int | None = None,
        storage: Storage = "auto",
        memory_budget: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_val: bool = False,
        batch_size: int | None = None,
        data_id: str | None = None,
        seed: int = 0,
        train_mode_trunk: TrainMode = "refuse",
        verify: bool = False,
    ) -> None:
        super().__init__()
        if boundary is not None and (not isinstance(boundary, str) or not boundary):
            raise TypeError(
                f"`boundary` must be None, a module name (regex) or 'forward_features', got {boundary!r}"
            )
        if boundary not in (None, METHOD):
            compile_patterns("boundary", boundary)  # a bad regex fails here, not at fit time
        self.boundary = boundary
        self.views = None if views is None else check_int("views", views, low=1)
        self.storage: Storage = check_choice("storage", storage, ("auto", "device", "pinned", "disk"))  # type: ignore[assignment]
        self.memory_budget = (
            None if memory_budget is None else check_int("memory_budget", memory_budget, low=0)
        )
        if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
            raise TypeError(f"`cache_dir` must be a path or None, got {type(cache_dir).__name__}")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cache_val = check_bool("cache_val", cache_val)
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, low=1)
        if data_id is not None and (not isinstance(data_id, str) or not data_id):
            raise TypeError(f"`data_id` must be a non-empty string or None, got {data_id!r}")
        self.data_id = data_id
        self.seed = check_int("seed", seed, low=0)
        self.train_mode_trunk: TrainMode = check_choice(  # type: ignore[assignment]
            "train_mode_trunk", train_mode_trunk, ("refuse", "allow")
        )
        self.verify = check_bool("verify", verify)
        self._session: CacheSession | None = None  # the fit in progress
        self._sources: SourceSwap | None = None
        self._summary: dict[str, Any] = summarize(None)  # the last cache in use, once its session is closed
        self._warned: set[str] = set()
        self._restored: dict[str, Any] | None = None  # a checkpoint's state loaded before the fit's setup

    # ------------------------------------------------------------------------------------------------ public --
    @property
    def current_boundary(self) -> str | None:
        """The module whose cached output the current (or last) epoch trained on; ``None`` if it ran live.

        Example:
            >>> FeatureCache().current_boundary is None  # before any fit
            True
        """
        return self._current()["boundary"]

    @property
    def current_storage(self) -> str | None:
        """Where the current (or last) epoch's cache lives: ``"device"``, ``"pinned"``, ``"disk"`` or ``None``.

        Example:
            >>> FeatureCache(storage="disk").current_storage is None  # before any fit
            True
        """
        return self._current()["storage"]

    @override
    def state_key_fields(self) -> dict[str, Any]:
        """The arguments in the checkpoint key: ``boundary`` and ``views``."""
        return {"boundary": self.boundary, "views": self.views}

    @override
    def state_dict(self) -> dict[str, Any]:
        """The boundary, trunk modules, fingerprint and views of the current epoch's cache (``None``: live)."""
        return {k: v for k, v in self._current().items() if k != "storage"}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember a checkpoint's state, to say in the log whether the rebuilt cache differs from it."""
        if self._session is not None:
            self._session.restored = dict(state_dict)
        else:
            self._restored = dict(state_dict)

    def _current(self) -> dict[str, Any]:
        return self._session.summary if self._session is not None else self._summary

    # ------------------------------------------------------------------------------------------------- hooks --
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the fit, open its session and wrap the loaders where the fit loop requests them."""
        if stage != "fit":
            return
        check_trainer(trainer, pl_module)
        if self.verify:
            check_verify(pl_module)
        self._close()  # anything left by a fit that ended without teardown
        options = CacheOptions(
            boundary=self.boundary,
            views=self.views,
            storage=self.storage,
            memory_budget=self.memory_budget,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
            data_id=self.data_id,
            seed=self.seed,
            train_mode_trunk=self.train_mode_trunk,
            verify=self.verify,
        )
        runtime = TrainerRuntime(trainer)
        step = partial(training_step_on, trainer) if self.verify else None
        session = CacheSession(
            runtime, pl_module, options, warned=self._warned, summary=self._summary, step=step
        )
        session.restored, self._restored = self._restored, None
        self._session = session
        self._sources = swap_fit_sources(
            trainer, session.wrap_train, session.wrap_val if self.cache_val else None
        )

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validation data is raw (unless its own cache skips the trunk again): run the trunk."""
        if self._session is not None:
            self._session.run_trunk()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Back inside a training epoch: skip the trunk again if the epoch is served from a cache."""
        if self._session is not None:
            self._session.resume_training()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Run the trunk normally between epochs."""
        if self._session is not None:
            self._session.run_trunk()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Restore the network and the loaders."""
        self._close()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Restore the network and the loaders, free the caches; disk entries stay for later runs."""
        if stage == "fit":
            self._close()

    def _close(self) -> None:
        if self._sources is not None:
            self._sources.restore()
            self._sources = None
        if self._session is not None:
            self._summary = self._session.summary
            self._session.close()
            self._session = None
