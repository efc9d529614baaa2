"""Train the upper layers on cached outputs of the frozen lower layers (Géron ch. 11, "caching the frozen layers").

While the lower layers are frozen, their output for a training sample never changes, so :class:`FeatureCache`
computes it once per sample and trains the upper layers on it. Decisions, in the order the data flows:

* **Which layers** (the trunk): ``boundary=None`` follows whatever is frozen (``requires_grad=False``, e.g. by
  :class:`~lightning_dnn.callbacks.LayerFreezer`): one traced forward pass lists the module calls, and the trunk is
  their longest frozen prefix (descending into a container that is only partly frozen; trailing layers without
  weights, such as activations and dropout, stay with the head). ``boundary="hidden2"`` (a module name, DESIGN.md
  §4 selection rule) caches that module's output and refuses to start unless everything before it is frozen;
  ``boundary="forward_features"`` caches ``net.forward_features`` of networks with a ``forward_features`` /
  ``forward_head`` pair (timm models, our MLP). The network is the LightningModule's child holding the trunk
  (``self.net``), called with the batch's first element, as :class:`~lightning_dnn.DNNClassifier` does. Every
  build checks that ``network(cached features)`` equals ``network(inputs)`` on its first chunk (a forward that
  transforms its inputs with non-module code before the boundary fails it): an error at the fit's first build,
  a warning and live epochs after a milestone.
* **Build**: once per sample, in eval mode (frozen batch norm uses its running statistics; frozen dropout is
  off: a warning says so when the trunk has dropout) under ``no_grad`` and the Trainer's precision context, over
  an unshuffled pass of the training data; the network stops at the boundary (the head does not run). Under DDP
  rank ``r`` computes samples ``r, r + W, ...`` and an ``all_gather`` per chunk gives every rank the full cache,
  so each sample's features are computed once in all and every rank can serve any index its sampler draws.
* **Serving**: the fit loop's training loader is wrapped (through its data source, before the loop first asks
  for it); each epoch's batches are the same index batches the wrapped loader would produce
  (:class:`~lightning_dnn.data.DeviceBatchLoader`: its ``(seed, epoch)`` permutation, and its mid-epoch resume
  state; a ``DataLoader``: its batch sampler, drawing the base seed as ``DataLoader.__iter__`` does, so even a
  ``RandomSampler`` gives the live run's order), each served as one ``index_select`` per cached tensor. While
  cached batches are served, the trunk's outermost modules (or ``forward_features``) return their input, so the
  epoch touches neither the input pipeline nor the frozen layers. The modules stay in place: ``state_dict``,
  checkpoints and optimizers see the real network. The batch-transfer hooks would run on cached features, so
  a LightningModule or data module that overrides them is refused.
* **Validity**: at the first batch of each epoch (after every ``on_train_epoch_start`` hook, so after a
  LayerFreezer milestone) the trunk is re-derived from ``requires_grad`` and its weights are fingerprinted (a
  content hash computed on their device, so even ``param.data`` edits are seen). A new boundary, other weights
  or other data rebuild the cache; when nothing is frozen any more the cache is dropped and the epoch runs
  live. A fingerprint that differs across DDP ranks is an error.
* **Random augmentation** makes a sample's features differ per epoch: a data module whose
  ``has_random_augmentation`` is true, or a dataset with torchvision-style random transforms, is refused unless
  ``views=K``: K augmented views per sample are cached (seeded by ``seed``), epoch ``e`` uses view ``e % K``.
* **Storage**: ``"device"`` (the training device), ``"pinned"`` (page-locked host memory, for GPUs), ``"disk"``
  (``.npy`` memory maps under ``cache_dir``, default ``<default_root_dir>/feature_cache``), or ``"auto"``: the
  device when the cache fits ``memory_budget`` (default: half of the free device memory or of the available host
  memory), else pinned memory (GPU runs), else disk. A disk entry is written under a temporary name and renamed
  into place after its manifest; a later run whose fingerprint (trunk weights, boundary, precision, views, and
  the data's content hash or ``data_id``) matches reuses it without running the trunk. Data that is neither held
  in tensors nor named by ``data_id`` gets a run-local key, and its disk entry is deleted after the fit.
* **Checkpoints** hold the boundary, fingerprint and views (``state_dict``); the cache itself is rebuilt (or
  reused from disk) on resume, which continues as an uninterrupted run would.

Limits: single-device and DDP strategies; one training loader (a DeviceBatchLoader or a DataLoader over a
map-style dataset); the cached features of a trunk shared with the head (a module called twice) are not
supported (the trunk stops before it). On GPUs each cached step is still one Lightning step: for a tiny head the
epoch is bound by per-step overhead, not by the trunk.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from pytorch_lightning.trainer.states import RunningStage, TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import Tensor
from typing_extensions import override

from lightning_dnn._checks import check_choice, check_int
from lightning_dnn._selection import compile_patterns, select_modules
from lightning_dnn.callbacks._feature_build import BuildSpec, CutRejected, build_features, load_into_memory
from lightning_dnn.callbacks._feature_disk import DiskCache, data_fingerprint, model_fingerprint, plan_key
from lightning_dnn.callbacks._feature_loaders import (
    BatchKind,
    CachedLoader,
    CachingSource,
    DatasetData,
    DeviceOrder,
    Served,
    StatefulCachedLoader,
    TensorData,
    access,
    random_transforms,
    rebuilder,
)
from lightning_dnn.callbacks._feature_store import FeatureStore, StorageKind, choose_storage
from lightning_dnn.callbacks._feature_trunk import (
    METHOD,
    Shadow,
    Trace,
    TrunkPlan,
    make_plan,
    stochastic_modules,
)

try:  # the processing Lightning gives the loaders it requests (DDP samplers, ...), applied before wrapping
    from pytorch_lightning.trainer.connectors.data_connector import _process_dataloader
except ImportError:  # pragma: no cover - other Lightning versions
    _process_dataloader = None  # type: ignore[assignment]

__all__ = ["FeatureCache"]

log = logging.getLogger(__name__)

Storage = Literal["auto", "device", "pinned", "disk"]
Data = TensorData | DatasetData
_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


@dataclass
class _Entry:
    plan: TrunkPlan
    store: FeatureStore
    kind: BatchKind
    views: int
    model_fp: str
    data_key: tuple[Any, ...]
    fingerprint: str


class FeatureCache(Callback):
    """Cache the frozen trunk's output once per sample and train the layers above it on the cache.

    Args:
        boundary: ``None`` (follow what is frozen, e.g. by LayerFreezer), a module name (regex, DESIGN.md §4
            selection rule; must select one module) whose output is cached, or ``"forward_features"``.
        views: cache this many augmented views per sample (epoch ``e`` uses view ``e % views``); required when
            the training data has random augmentation. ``None``: one view, and random augmentation is refused.
        storage: ``"auto"``, ``"device"``, ``"pinned"`` or ``"disk"`` (see the module description).
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

    Raises:
        TypeError, ValueError: invalid arguments. At fit start: an unsupported strategy or loader,
            overridden batch-transfer hooks, random augmentation without ``views``, an explicit boundary with
            trainable layers below it or that the network's forward does not reproduce from cached features.

    Example:
        >>> import pytorch_lightning as pl, torch
        >>> from lightning_dnn import DNNClassifier
        >>> from lightning_dnn.callbacks import LayerFreezer
        >>> from lightning_dnn.data import DeviceBatchLoader
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
    ) -> None:
        super().__init__()
        if boundary is not None and (not isinstance(boundary, str) or not boundary):
            raise TypeError(
                f"`boundary` must be None, a module name (regex) or 'forward_features', got {boundary!r}"
            )
        self.boundary = boundary
        self._pattern = None if boundary in (None, METHOD) else compile_patterns("boundary", boundary)
        self.views = None if views is None else check_int("views", views, low=1)
        self.storage: Storage = check_choice("storage", storage, ("auto", "device", "pinned", "disk"))  # type: ignore[assignment]
        self.memory_budget = (
            None if memory_budget is None else check_int("memory_budget", memory_budget, low=0)
        )
        if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
            raise TypeError(f"`cache_dir` must be a path or None, got {type(cache_dir).__name__}")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if not isinstance(cache_val, bool):
            raise TypeError(f"`cache_val` must be a bool, got {type(cache_val).__name__} {cache_val!r}")
        self.cache_val = cache_val
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, low=1)
        if data_id is not None and (not isinstance(data_id, str) or not data_id):
            raise TypeError(f"`data_id` must be a non-empty string or None, got {data_id!r}")
        self.data_id = data_id
        self.seed = check_int("seed", seed, low=0)
        # Per fit (reset in `setup`).
        self._trainer: pl.Trainer | None = None
        self._module: pl.LightningModule | None = None
        self._network = ""  # name of the network in the LightningModule ("" = the module itself)
        self._boundary_name: str | None = None  # the explicit boundary's full name
        self._sources: list[tuple[Any, Any]] = []  # (loop, its original data source)
        self._views: dict[str, int] = {}
        self._trace: Trace | None = None
        self._plans: dict[str, tuple[TrunkPlan | None, bool]] = {}  # plan key -> (plan, complete)
        self._rejected: set[TrunkPlan] = set()  # plans whose cut failed the check (their epochs run live)
        self._checked = False  # the requested boundary was checked in this fit
        self._entries: dict[str, _Entry] = {}  # "train", "val0", ... -> the cache in use
        self._train_entry: _Entry | None = None  # the cache of the training epoch in progress (None: live)
        self._summary: dict[str, Any] = _summary(None)
        self._content: dict[tuple[Any, ...], str | None] = {}  # data content hashes by local identity
        self._run_nonce = uuid.uuid4().hex
        self._run_local: list[Path] = []  # disk entries written under a run-local data key
        self._shadow = Shadow()
        self._warned: set[str] = set()
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------ public --
    @property
    def current_boundary(self) -> str | None:
        """The module whose cached output the current (or last) epoch trained on; ``None`` if it ran live.

        Example:
            >>> FeatureCache().current_boundary is None  # before any fit
            True
        """
        return self._summary["boundary"]

    @property
    def current_storage(self) -> str | None:
        """Where the current (or last) epoch's cache lives: ``"device"``, ``"pinned"``, ``"disk"`` or ``None``.

        Example:
            >>> FeatureCache(storage="disk").current_storage is None  # before any fit
            True
        """
        return self._summary["storage"]

    @functools.cached_property
    @override
    def state_key(self) -> str:  # type: ignore[override]
        # computed once: Lightning formats every callback's key at every hook call, several times a step
        return self._generate_state_key(boundary=self.boundary, views=self.views)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The boundary, trunk modules, fingerprint and views of the current epoch's cache (``None``: live)."""
        return {k: v for k, v in self._summary.items() if k != "storage"}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)  # compared with the rebuilt cache, for the log

    # ------------------------------------------------------------------------------------------------- hooks --
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._check_trainer(trainer, pl_module)
        self._cleanup()  # anything left by a fit that ended without teardown
        self._trainer, self._module = trainer, pl_module
        self._network = self._resolve_network(pl_module)
        self._trace, self._plans, self._checked, self._content = None, {}, False, {}
        self._rejected = set()
        # Wrap the loaders where the loops request them: before the fit loop first asks (on_fit_start comes
        # later, and `estimated_stepping_batches` in configure_optimizers may already ask).
        fit_loop = trainer.fit_loop
        loops: list[tuple[Any, Any]] = [(fit_loop, self._wrap_train)]
        if self.cache_val:
            loops.append((fit_loop.epoch_loop.val_loop, self._wrap_val))
        for loop, wrap in loops:
            self._sources.append((loop, loop._data_source))
            loop._data_source = CachingSource(loop._data_source, wrap)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._shadow.remove()  # the validation data is raw, unless its own cache skips the trunk again

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_entry is not None:  # back inside a cached training epoch
            self._shadow.apply(pl_module, self._train_entry.plan)
        else:
            self._shadow.remove()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._shadow.remove()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._cleanup()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._cleanup()

    def _cleanup(self) -> None:
        """Run the trunk normally, give the loops their own data sources back, free the caches' memory."""
        self._shadow.remove()
        for loop, source in self._sources:
            loop._data_source = source
        self._sources = []
        self._entries.clear()  # disk entries stay for later runs ...
        self._train_entry = None
        for directory in self._run_local:  # ... unless no later run could recognize them
            shutil.rmtree(directory, ignore_errors=True)
        self._run_local = []

    # ---------------------------------------------------------------------------------------------- checks --
    def _check_trainer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy = trainer.strategy
        if not isinstance(strategy, SingleDeviceStrategy | DDPStrategy) or isinstance(
            strategy, DeepSpeedStrategy
        ):
            raise ValueError(
                f"FeatureCache supports single-device and DDP strategies, got {type(strategy).__name__}."
            )
        if _process_dataloader is None or not hasattr(trainer.fit_loop, "_data_source"):
            raise RuntimeError(
                f"FeatureCache needs the fit loop of pytorch_lightning 2.x, not {pl.__version__}."
            )
        if getattr(trainer, "overfit_batches", 0):
            raise ValueError("FeatureCache cannot be combined with Trainer(overfit_batches=...)")
        for owner in (pl_module, getattr(trainer, "datamodule", None)):
            for hook in _TRANSFER_HOOKS:
                if owner is not None and is_overridden(hook, owner):
                    raise ValueError(
                        f"FeatureCache cannot be used with {type(owner).__name__}.{hook}: the hook would also run "
                        "on the cached features. Move that processing into the dataset or the network's trunk."
                    )

    def _resolve_network(self, pl_module: pl.LightningModule) -> str:
        """The module called with the batch's inputs: the child holding the boundary / all the weights."""
        if self.boundary == METHOD:
            for name, module in pl_module.named_modules():
                if callable(getattr(module, "forward_features", None)) and callable(
                    getattr(module, "forward_head", None)
                ):
                    return name
            raise ValueError(
                "`boundary`='forward_features' needs a network with `forward_features` and `forward_head` "
                f"methods (timm models, lightning_dnn.nn.MLP); {type(pl_module).__name__} has none."
            )
        if self._pattern is not None:
            names = [n for n, _ in select_modules(pl_module, self._pattern, arg="boundary")]
            if len(names) != 1:
                raise ValueError(f"`boundary`={self.boundary!r} must select exactly one module, got {names}")
            self._boundary_name = names[0]
            return names[0].split(".")[0] if "." in names[0] else ""
        holders = [n for n, c in pl_module.named_children() if any(True for _ in c.parameters())]
        if len(holders) == 1 and not any(True for _ in pl_module.parameters(recurse=False)):
            return holders[0]
        return ""

    def _random_reason(self, loader: object) -> str | None:
        datamodule = getattr(self._trainer, "datamodule", None)
        if getattr(datamodule, "has_random_augmentation", False) is True:
            return f"{type(datamodule).__name__}.has_random_augmentation is True"
        found = random_transforms(getattr(loader, "dataset", None))
        return f"its dataset applies {', '.join(found)}" if found else None

    # -------------------------------------------------------------------------------------------- wrapping --
    def _wrap_train(self, loader: object, index: int) -> object:
        if index:
            raise TypeError("FeatureCache supports a single training loader; the fit has several.")
        processed = _process_dataloader(self._require()[0], TrainerFn.FITTING, RunningStage.TRAINING, loader)
        data, order = access(processed, self._random_reason)
        if data.random_reason is not None and self.views is None:
            raise ValueError(
                f"FeatureCache: the training data has random augmentation ({data.random_reason}): a sample's "
                "features differ every epoch, so one cached copy would silently train on a single fixed "
                "augmentation. Pass `views=K` to cache K augmented views per sample (epoch e uses view e % K), "
                "`views=1` if the transforms are in fact deterministic, or drop the augmentation."
            )
        views = self.views or 1
        if isinstance(data, TensorData) and views > 1:
            self._warn_once(
                "views", f"FeatureCache: views={views}, but the data has no augmentation; caching 1"
            )
            views = 1
        self._views["train"] = views
        wrapper = StatefulCachedLoader if isinstance(order, DeviceOrder) else CachedLoader
        return wrapper(processed, order, functools.partial(self._serve, "train", data))

    def _wrap_val(self, loader: object, index: int) -> object:
        processed = _process_dataloader(
            self._require()[0], TrainerFn.FITTING, RunningStage.VALIDATING, loader
        )
        data, order = access(processed, lambda dl: None)
        found = random_transforms(getattr(processed, "dataset", None))
        if found:
            raise ValueError(
                f"FeatureCache(cache_val=True): the validation data applies random transforms {found}; "
                "validate live (cache_val=False) or make them deterministic."
            )
        key = f"val{index}"
        self._views[key] = 1
        wrapper = StatefulCachedLoader if isinstance(order, DeviceOrder) else CachedLoader
        return wrapper(processed, order, functools.partial(self._serve, key, data))

    # ---------------------------------------------------------------------------------------------- serving --
    def _serve(self, key: str, data: Data) -> Served | None:
        """At the first batch of each pass over a wrapped loader: the cache to serve, or ``None`` (live)."""
        trainer, module = self._require()
        with self._shadow.suspended():  # a build runs the real trunk
            entry = self._ensure(key, data)
        if key == "train":
            self._train_entry, self._summary = entry, _summary(entry)
        if entry is None:
            self._shadow.remove()
            return None
        self._shadow.apply(module, entry.plan)
        view = trainer.current_epoch % entry.views if key == "train" else 0
        return Served(entry.store, view, rebuilder(entry.kind))

    def _ensure(self, key: str, data: Data) -> _Entry | None:
        """The valid cache for ``key``: kept, opened from disk or built; ``None`` when nothing is frozen.

        Every decision is agreed across DDP ranks (they run the same collectives in the same order).
        """
        trainer = self._require()[0]
        strategy = trainer.strategy
        views = self._views[key]
        plan, known = self._plan()
        if not strategy.reduce_boolean_decision(known, all=True):
            return self._build(key, data, None, views)  # trace the network on the build's first chunk
        if plan is None or plan in self._rejected:
            if self._entries.pop(key, None) is not None and key == "train":
                rank_zero_info(f"FeatureCache: epoch {trainer.current_epoch}: nothing stays frozen; live")
            return None
        model_fp = self._model_fingerprint(key, plan, views, data)
        entry = self._entries.get(key)
        reuse = (
            entry is not None
            and (entry.plan, entry.model_fp, entry.views) == (plan, model_fp, views)
            and entry.data_key == data.local_key()
        )
        if strategy.reduce_boolean_decision(reuse, all=True):
            assert entry is not None
            return entry
        if entry is not None and key == "train":
            why = "the boundary moved" if entry.plan != plan else "the frozen weights or the data changed"
            rank_zero_info(f"FeatureCache: epoch {trainer.current_epoch}: {why}; rebuilding the cache")
        self._entries.pop(key, None)
        opened = self._open_disk(key, plan, model_fp, data, views)
        if strategy.reduce_boolean_decision(opened is not None, all=True):
            assert opened is not None
            return self._keep(key, opened)
        return self._build(key, data, plan, views)

    def _keep(self, key: str, entry: _Entry) -> _Entry:
        self._entries[key] = entry
        if key == "train" and self._restored is not None:
            before = self._restored.get("fingerprint")
            if before is not None and before.split(":")[0] != entry.fingerprint.split(":")[0]:
                rank_zero_info(
                    "FeatureCache: the trunk differs from the checkpoint's run; the cache was rebuilt"
                )
            self._restored = None
        return entry

    # ------------------------------------------------------------------------------------------------ plans --
    def _plan(self) -> tuple[TrunkPlan | None, bool]:
        """The trunk for the current ``requires_grad`` flags: ``(plan or None, whether it is known)``."""
        module = self._require()[1]
        network = module.get_submodule(self._network)
        key = plan_key(self._boundary_name or self.boundary, self._network, network)
        if key in self._plans:
            return self._plans[key][0], True
        if self._trace is not None:
            found = make_plan(
                self._trace,
                module,
                self._network,
                boundary=self._boundary_name,
                method=self.boundary == METHOD,
            )
        else:
            stored = (
                self._disk().read_plan(key, {n for n, _ in module.named_modules()})
                if self._may_use_disk()
                else None
            )
            if stored is None:
                if self.boundary is None and all(p.requires_grad for p in network.parameters()):
                    self._warn_once("unfrozen", "FeatureCache: no parameter is frozen; training live")
                    return None, True
                return None, False
            found = stored
        self._check_plan(*found)
        self._plans[key] = found
        return found[0], True

    def _check_plan(self, plan: TrunkPlan | None, complete: bool) -> None:
        module = self._require()[1]
        if self.boundary is not None and not complete and not self._checked:
            wanted = self._boundary_name or f"{self._network}.{METHOD}".lstrip(".")
            network = module.get_submodule(self._network)
            trainable = [n for n, p in network.named_parameters() if p.requires_grad]
            raise ValueError(
                f"FeatureCache(boundary={self.boundary!r}): the layers up to {wanted} must be frozen "
                f"(requires_grad=False) and output a tensor; cacheable up to: "
                f"{plan.boundary if plan else 'nothing'}. Trainable parameters of the network: "
                f"{', '.join(trainable[:12]) or 'none'}. Freeze them (e.g. LayerFreezer) or choose a lower boundary."
            )
        self._checked = True
        noisy = stochastic_modules(module, plan) if plan is not None and module.training else []
        if plan is not None and noisy:
            self._warn_once(
                plan.boundary,
                f"FeatureCache: the cached trunk contains {', '.join(noisy)}, which is off (eval mode) in the "
                "cached features, while a live run would apply it to the head's inputs.",
            )

    # ---------------------------------------------------------------------------------------- fingerprints --
    def _model_fingerprint(self, key: str, plan: TrunkPlan, views: int, data: Data) -> str:
        trainer, module = self._require()
        random_views = views > 1 or data.random_reason is not None
        fp = model_fingerprint(
            module,
            plan,
            split=key,
            precision=str(trainer.precision),
            views=views,
            seed=self.seed if random_views else None,
        )
        strategy = trainer.strategy
        if trainer.world_size > 1 and not strategy.reduce_boolean_decision(
            strategy.broadcast(fp, src=0) == fp, all=True
        ):
            raise RuntimeError(
                "FeatureCache: the frozen weights differ across processes; they cannot share a cache"
            )
        return fp

    def _data_fingerprint(self, key: str, data: Data) -> str:
        if self.data_id is not None:
            return data_fingerprint(f"id:{self.data_id}:{key}", data.num_samples)
        local = (key, *data.local_key())
        if local not in self._content:
            self._content[local] = data.content_key()
        content = self._content[local]
        if content is None:  # opaque data: a key no later run shares
            return "run" + self._run_nonce
        return data_fingerprint(content, data.num_samples)

    # ------------------------------------------------------------------------------------------------- disk --
    def _disk(self) -> DiskCache:
        trainer = self._require()[0]
        root = (
            self.cache_dir if self.cache_dir is not None else Path(trainer.default_root_dir) / "feature_cache"
        )
        return DiskCache(root)

    def _may_use_disk(self) -> bool:
        return self.storage in ("auto", "disk")

    def _open_disk(self, key: str, plan: TrunkPlan, model_fp: str, data: Data, views: int) -> _Entry | None:
        disk = self._disk()
        if not self._may_use_disk() or not disk.may_hold(key, model_fp):
            return None  # nothing on disk for these weights: no need to hash the data
        data_fp = self._data_fingerprint(key, data)
        device = self._require()[0].strategy.root_device
        store = disk.open(key, model_fp, data_fp, device)
        if store is None:
            return None
        log.info("FeatureCache: reusing %s", store.directory)
        kind = store.manifest["kind"]
        storage = self._storage_kind(store.nbytes)
        if storage != "disk":  # it fits in memory: serve it from there
            store = load_into_memory(store, storage, device)
        return _Entry(plan, store, kind, views, model_fp, data.local_key(), f"{model_fp}:{data_fp}")

    def _storage_kind(self, nbytes: int) -> StorageKind:
        trainer = self._require()[0]
        kind = choose_storage(self.storage, nbytes, self.memory_budget, trainer.strategy.root_device)
        chosen: StorageKind = trainer.strategy.broadcast(kind, src=0)  # every rank stores it alike
        return chosen

    # ------------------------------------------------------------------------------------------------ build --
    def _build(self, key: str, data: Data, plan: TrunkPlan | None, views: int) -> _Entry | None:
        trainer, module = self._require()
        first_build = not self._entries and not self._checked
        fps: dict[str, str] = {}

        def from_trace(trace: Trace) -> TrunkPlan | None:
            self._trace = trace
            return self._plan()[0]

        def allocate(plan: TrunkPlan, rows: list[Tensor]) -> FeatureStore:
            fps["model"] = self._model_fingerprint(key, plan, views, data)
            fps["data"] = "memory"
            storage = self._storage_kind(
                views * data.num_samples * sum(r.numel() * r.element_size() for r in rows)
            )
            directory = None
            if storage == "disk":
                fps["data"] = self._data_fingerprint(key, data)
                directory = self._disk().entry(key, fps["model"], fps["data"])
            return FeatureStore.allocate(
                storage,
                views,
                data.num_samples,
                rows,
                trainer.strategy.root_device,
                directory=directory,
                write=trainer.local_rank == 0,
            )

        spec = BuildSpec(
            trainer,
            module,
            self._network,
            data,
            views,
            self.batch_size or data.batch_size,
            self.seed,
            self.boundary == METHOD,
            plan,
            from_trace,
            allocate,
        )
        try:
            built = build_features(spec)
        except CutRejected as err:
            if first_build:
                raise ValueError(str(err)) from None
            self._rejected.add(err.plan)
            self._warn_once("cut", f"{err} Training live instead.")
            return None
        if built is None:
            return None
        plan, store = built
        fingerprint = f"{fps['model']}:{fps['data']}"
        kind: BatchKind = data.kind if data.kind is not None else "tuple"
        if store.kind == "disk":
            store = self._commit(store, plan, fingerprint, data.num_samples, views, kind)
        rank_zero_info(
            f"FeatureCache: cached the output of {plan.boundary} for {data.num_samples} samples x {views} "
            f"view(s) in {store.kind} storage"
        )
        return self._keep(key, _Entry(plan, store, kind, views, fps["model"], data.local_key(), fingerprint))

    def _commit(
        self, store: FeatureStore, plan: TrunkPlan, fingerprint: str, n: int, views: int, kind: BatchKind
    ) -> FeatureStore:
        """Finish a disk entry (local rank 0 writes it while the node's other ranks wait), then open it."""
        trainer, module = self._require()
        directory = store.directory
        assert directory is not None
        if trainer.local_rank == 0:
            batch_kind = kind if isinstance(kind, str) else "namedtuple"
            store.commit(
                fingerprint, {"plan": plan.to_json(), "views": views, "samples": n, "kind": batch_kind}
            )
            if fingerprint.split(":")[1].startswith("run"):
                self._run_local.append(directory)
            else:
                key = plan_key(
                    self._boundary_name or self.boundary, self._network, module.get_submodule(self._network)
                )
                self._disk().write_plan(key, plan, self._plans.get(key, (plan, True))[1])
        trainer.strategy.barrier("FeatureCache.commit")
        opened = FeatureStore.open(directory, fingerprint, trainer.strategy.root_device)
        if opened is None:
            raise RuntimeError(
                f"FeatureCache: the disk cache {directory} written by local rank 0 cannot be read here: "
                "`cache_dir` must be on a file system that all processes of a node share."
            )
        return opened

    # ---------------------------------------------------------------------------------------------- helpers --
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def _require(self) -> tuple[pl.Trainer, pl.LightningModule]:
        if self._trainer is None or self._module is None:
            raise RuntimeError("FeatureCache is used outside `Trainer.fit`")
        return self._trainer, self._module


def _summary(entry: _Entry | None) -> dict[str, Any]:
    return {
        "boundary": None if entry is None else entry.plan.boundary,
        "trunk": [] if entry is None else list(entry.plan.trunk),
        "fingerprint": None if entry is None else entry.fingerprint,
        "views": None if entry is None else entry.views,
        "storage": None if entry is None else entry.store.kind,
    }
