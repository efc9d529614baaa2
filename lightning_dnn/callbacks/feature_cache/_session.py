"""The per-fit state of :class:`~lightning_dnn.callbacks.FeatureCache`: :class:`CacheSession`.

It owns the trunk plans, fingerprints, stores and build decisions of one fit, and sees the training loop only
through a :class:`Runtime` (``_lightning.TrainerRuntime`` in a fit).
"""

from __future__ import annotations

import logging
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from lightning_dnn._lightning import rank_zero_info, rank_zero_warn
from lightning_dnn.callbacks.feature_cache._build import Built, CutRejected, build_features, load_into_memory
from lightning_dnn.callbacks.feature_cache._disk import (
    DiskCache,
    data_fingerprint,
    model_fingerprint,
    plan_key,
)
from lightning_dnn.callbacks.feature_cache._files import CorruptEntry
from lightning_dnn.callbacks.feature_cache._loaders import (
    BatchKind,
    Data,
    Served,
    TensorData,
    access,
    cached_loader,
    random_transforms,
    rebuilder,
)
from lightning_dnn.callbacks.feature_cache._plan import METHOD, Trace, TrunkPlan, find_network, make_plan
from lightning_dnn.callbacks.feature_cache._runtime import Runtime
from lightning_dnn.callbacks.feature_cache._store import FeatureStore, StorageKind, choose_storage
from lightning_dnn.callbacks.feature_cache._trunk import Shadow, train_mode_modules
from lightning_dnn.callbacks.feature_cache._verify import StepFn, verify_cache

__all__ = ["CacheEntry", "CacheOptions", "CacheSession", "Storage", "TrainMode", "summarize"]

log = logging.getLogger(__name__)

Storage = Literal["auto", "device", "pinned", "disk"]
TrainMode = Literal["refuse", "allow"]


@dataclass(frozen=True)
class CacheOptions:
    """The callback's arguments that steer a session (validated by the callback)."""

    boundary: str | None = None
    views: int | None = None
    storage: Storage = "auto"
    memory_budget: int | None = None
    cache_dir: Path | None = None
    batch_size: int | None = None
    data_id: str | None = None
    seed: int = 0
    train_mode_trunk: TrainMode = "refuse"
    verify: bool = False

    @property
    def method(self) -> bool:
        """Whether the boundary is the network's ``forward_features``."""
        return self.boundary == METHOD

    @property
    def may_use_disk(self) -> bool:
        """Whether caches may be read from or written to disk."""
        return self.storage in ("auto", "disk")


@dataclass
class CacheEntry:
    """A cache in use: its trunk, store, batch kind, views and what it was built from."""

    plan: TrunkPlan
    store: FeatureStore
    kind: BatchKind
    views: int
    model_fp: str
    data_key: tuple[Any, ...]
    fingerprint: str


def summarize(entry: CacheEntry | None) -> dict[str, Any]:
    """The plain-value description of a cache (``None`` values: the epoch ran live)."""
    return {
        "boundary": None if entry is None else entry.plan.boundary,
        "trunk": [] if entry is None else list(entry.plan.trunk),
        "fingerprint": None if entry is None else entry.fingerprint,
        "views": None if entry is None else entry.views,
        "storage": None if entry is None else entry.store.kind,
    }


class CacheSession:
    """The caches of one fit: which trunk to cut, whether a cache is still valid, where it lives, building it.

    Created at ``setup``, closed at ``teardown``. Every decision is agreed across DDP ranks (they run the same
    collectives in the same order). Loaders are keyed ``"train"``, ``"val0"``, ``"val1"``, ...

    Args:
        runtime: the training loop as the session sees it.
        pl_module: the module being trained; the network is the child called with the batch's inputs.
        options: the callback's arguments.
        warned: keys of the warnings already given (shared across the callback's fits: each is given once).
        summary: the description of the last cache in use, until this session serves one.
        step: runs the training step of a copy of the module on a batch (``_lightning.training_step_on``); needed
            with ``options.verify``.

    Raises:
        ValueError: the boundary selects no module or several, or no network defines ``forward_features``, or
            ``options.verify`` without ``step``.
    """

    def __init__(
        self,
        runtime: Runtime,
        pl_module: nn.Module,
        options: CacheOptions,
        *,
        warned: set[str] | None = None,
        summary: dict[str, Any] | None = None,
        step: StepFn | None = None,
    ) -> None:
        if options.verify and step is None:
            raise ValueError(
                "CacheSession: `options.verify` needs `step`, the function that runs a training step"
            )
        self.runtime, self.module, self.options = runtime, pl_module, options
        self._step = step
        self._started = False  # a training epoch was served: later refusals warn and train live
        self.network_name, self.boundary_name = find_network(pl_module, options.boundary)
        self.disk = DiskCache(options.cache_dir or runtime.root_dir / "feature_cache")
        self.summary = summary if summary is not None else summarize(None)
        self.restored: dict[str, Any] | None = None  # a checkpoint's state, compared with the rebuilt cache
        self.train_entry: CacheEntry | None = None  # the cache of the training epoch in progress
        self._shadow = Shadow()
        self._warned = warned if warned is not None else set()
        self._views: dict[str, int] = {}
        self._trace: Trace | None = None
        self._plans: dict[str, tuple[TrunkPlan | None, bool]] = {}  # plan key -> (plan, complete)
        self._rejected: set[TrunkPlan] = set()  # plans whose cut failed the check (their epochs run live)
        self._checked = False  # the requested boundary was checked
        self._entries: dict[str, CacheEntry] = {}
        self._content: dict[tuple[Any, ...], str | None] = {}  # data content hashes by local identity
        self._run_nonce = uuid.uuid4().hex
        self._run_local: list[Path] = []  # disk entries under a run-local data key: deleted at close
        self._train_modes: dict[str, bool] | None = None  # module name -> training, at the last training pass

    # ------------------------------------------------------------------------------------------- loaders --
    def wrap_train(self, loader: object, index: int) -> object:
        """The training loader, wrapped to serve the cache.

        Raises:
            TypeError: a second training loader, or an unsupported one.
            ValueError: random augmentation without ``views``.
        """
        if index:
            raise TypeError("FeatureCache supports a single training loader; the fit has several.")
        data, order = access(loader, self._augmentation())
        if data.random_reason is not None and self.options.views is None:
            raise ValueError(
                f"FeatureCache: the training data has random augmentation ({data.random_reason}): a sample's "
                "features differ every epoch, so one cached copy would silently train on a single fixed "
                "augmentation. Pass `views=K` to cache K augmented views per sample (epoch e uses view e % K), "
                "`views=1` if the transforms are in fact deterministic, or drop the augmentation."
            )
        views = self.options.views or 1
        if isinstance(data, TensorData) and views > 1:
            self._warn_once(
                "views", f"FeatureCache: views={views}, but the data has no augmentation; caching 1"
            )
            views = 1
        self._views["train"] = views
        return cached_loader(loader, order, self, "train", data)

    def wrap_val(self, loader: object, index: int) -> object:
        """The validation loader ``index``, wrapped to serve a cache of its own (fixed order).

        Raises:
            TypeError: an unsupported loader.
            ValueError: the validation data applies random transforms.
        """
        data, order = access(loader)
        found = random_transforms(getattr(loader, "dataset", None))
        if found:
            raise ValueError(
                f"FeatureCache(cache_val=True): the validation data applies random transforms {found}; "
                "validate live (cache_val=False) or make them deterministic."
            )
        key = f"val{index}"
        self._views[key] = 1
        return cached_loader(loader, order, self, key, data)

    def _augmentation(self) -> str | None:
        datamodule = self.runtime.datamodule
        if getattr(datamodule, "has_random_augmentation", False) is True:
            return f"{type(datamodule).__name__}.has_random_augmentation is True"
        return None

    # ------------------------------------------------------------------------------------------- serving --
    def serve(self, key: str, data: Data) -> Served | None:
        """At the first batch of each pass over a wrapped loader: the cache to serve, or ``None`` (live)."""
        if key == "train":
            self._train_modes = {n: m.training for n, m in self.module.named_modules()}
        with self._shadow.suspended():  # a build runs the real trunk
            entry = self._ensure(key, data)
        if key == "train":
            if entry is not None and not self._check_modes(entry.plan):
                self._entries.pop(key, None)
                entry = None
            self._started = True
            self.train_entry, self.summary = entry, summarize(entry)
        if entry is None:
            self._shadow.remove()
            return None
        self._shadow.apply(self.module, entry.plan)
        view = self.runtime.epoch % entry.views if key == "train" else 0
        return Served(entry.store, view, rebuilder(entry.kind))

    def run_trunk(self) -> None:
        """Let the trunk run normally (validation on raw inputs, the end of a training epoch)."""
        self._shadow.remove()

    def resume_training(self) -> None:
        """Skip the trunk again if the training epoch in progress is served from a cache."""
        if self.train_entry is not None:
            self._shadow.apply(self.module, self.train_entry.plan)
        else:
            self._shadow.remove()

    def close(self) -> None:
        """Run the trunk normally and free the caches' memory; delete the disk entries no later run can use."""
        self._shadow.remove()
        self._entries.clear()  # disk entries stay for later runs ...
        self.train_entry = None
        for directory in self._run_local:  # ... unless no later run could recognize them
            shutil.rmtree(directory, ignore_errors=True)
        self._run_local = []

    def _ensure(self, key: str, data: Data) -> CacheEntry | None:
        """The valid cache for ``key``: kept, opened from disk or built; ``None`` when nothing is frozen."""
        agree = self.runtime.all_agree
        views = self._views.get(key, 1)
        plan, known = self.plan()
        if not agree(known):
            return self._verified(key, self._build(key, data, None, views), data)  # traced on the first chunk
        if plan is None or plan in self._rejected:
            if self._entries.pop(key, None) is not None and key == "train":
                rank_zero_info(f"FeatureCache: epoch {self.runtime.epoch}: nothing stays frozen; live")
            return None
        model_fp = self._model_fingerprint(key, plan, views, data)
        entry = self._entries.get(key)
        reuse = (
            entry is not None
            and (entry.plan, entry.model_fp, entry.views) == (plan, model_fp, views)
            and entry.data_key == data.local_key()
        )
        if agree(reuse) and entry is not None:
            return entry
        if entry is not None and key == "train":
            why = "the boundary moved" if entry.plan != plan else "the frozen weights or the data changed"
            rank_zero_info(f"FeatureCache: epoch {self.runtime.epoch}: {why}; rebuilding the cache")
        self._entries.pop(key, None)
        opened = self._open_disk(key, plan, model_fp, data, views)
        if agree(opened is not None) and opened is not None:
            return self._verified(key, self._keep(key, opened), data)
        return self._verified(key, self._build(key, data, plan, views), data)

    def _verified(self, key: str, entry: CacheEntry | None, data: Data) -> CacheEntry | None:
        """With ``verify``: ``entry`` once a cached training step matched a live one (see ``_verify``)."""
        if entry is None or key != "train" or not self.options.verify or self._step is None:
            return entry
        try:
            verify_cache(self, entry, data, self._step)
        except CutRejected as err:
            self._entries.pop(key, None)
            self._refuse(err.plan, str(err), err.__cause__)
            return None
        return entry

    def _keep(self, key: str, entry: CacheEntry) -> CacheEntry:
        self._entries[key] = entry
        if key == "train" and self.restored is not None:
            before = self.restored.get("fingerprint")
            if before is not None and before.split(":")[0] != entry.fingerprint.split(":")[0]:
                rank_zero_info(
                    "FeatureCache: the trunk differs from the checkpoint's run; the cache was rebuilt"
                )
            self.restored = None
        return entry

    # --------------------------------------------------------------------------------------------- plans --
    def plan(self) -> tuple[TrunkPlan | None, bool]:
        """The trunk for the current ``requires_grad`` flags: ``(plan or None, whether it is known)``.

        It is known from a trace of the network (:meth:`plan_from_trace`) or a plan remembered on disk for this
        architecture and these frozen parameters; when nothing is frozen, there is nothing to cache.
        """
        key = self._plan_key()
        if key in self._plans:
            return self._plans[key][0], True
        if self._trace is not None:
            found = make_plan(
                self._trace,
                self.module,
                self.network_name,
                boundary=self.boundary_name,
                method=self.options.method,
            )
        else:
            stored = self._stored_plan(key)
            if stored is None:
                network = self.module.get_submodule(self.network_name)
                if self.options.boundary is None and all(p.requires_grad for p in network.parameters()):
                    self._warn_once("unfrozen", "FeatureCache: no parameter is frozen; training live")
                    return None, True
                return None, False
            found = stored
        self._check_plan(*found)
        self._plans[key] = found
        return found[0], True

    def plan_from_trace(self, trace: Trace) -> TrunkPlan | None:
        """The trunk found in a fresh trace of the network (``None``: nothing to cache)."""
        self._trace = trace
        return self.plan()[0]

    def _plan_key(self) -> str:
        network = self.module.get_submodule(self.network_name)
        return plan_key(self.boundary_name or self.options.boundary, self.network_name, network)

    def _stored_plan(self, key: str) -> tuple[TrunkPlan | None, bool] | None:
        if not self.options.may_use_disk:
            return None
        return self.disk.read_plan(key, {n for n, _ in self.module.named_modules()})

    def _check_plan(self, plan: TrunkPlan | None, complete: bool) -> None:
        if self.options.boundary is not None and not complete and not self._checked:
            wanted = self.boundary_name or f"{self.network_name}.{METHOD}".lstrip(".")
            network = self.module.get_submodule(self.network_name)
            trainable = [n for n, p in network.named_parameters() if p.requires_grad]
            raise ValueError(
                f"FeatureCache(boundary={self.options.boundary!r}): the layers up to {wanted} must be frozen "
                f"(requires_grad=False), output a tensor, and {wanted} must run once and no trunk module may run "
                f"again after it (a module shared with the head); cacheable up to: "
                f"{plan.boundary if plan else 'nothing'}. Trainable parameters of the network: "
                f"{', '.join(trainable[:12]) or 'none'}. Freeze them (e.g. LayerFreezer) or choose a lower boundary."
            )
        self._checked = True
        if plan is not None:
            self._check_modes(plan)

    def _check_modes(self, plan: TrunkPlan) -> bool:
        """Refuse (or, opted in, warn about) trunk layers that training would run in training mode.

        Checked at every training epoch's start (modes may change). Returns whether ``plan`` may be served.

        Raises:
            ValueError: batch norm, dropout or RReLU in the trunk in training mode with ``train_mode_trunk="refuse"``,
                before the fit's first training epoch (later: a warning, and the epochs run live).
        """
        if self._train_modes is None:
            return True
        layers = train_mode_modules(self.module, plan, self._train_modes)
        if not layers:
            return True
        shown = ", ".join(layers[:8]) + (f" (+{len(layers) - 8} more)" if len(layers) > 8 else "")
        if self.options.train_mode_trunk == "allow":
            self._warn_once(
                f"modes:{plan.boundary}",
                f"FeatureCache(train_mode_trunk='allow'): the cached trunk holds layers in training mode ({shown}); "
                "the cache is built in eval mode (running statistics, no dropout), unlike live training.",
            )
            return True
        self._refuse(
            plan,
            f"FeatureCache: the frozen trunk up to {plan.boundary} holds layers in training mode: {shown}. Live "
            "training would normalize with batch statistics (batch norm) or drop activations (dropout), while the "
            "cache is built in eval mode, so the head would train on other features. Freeze with LayerFreezer "
            "(it keeps frozen normalization layers in eval mode), call `.eval()` on these layers before each "
            "training epoch, or pass `FeatureCache(train_mode_trunk='allow')` to accept eval-mode features.",
        )
        return False

    def _refuse(self, plan: TrunkPlan, message: str, cause: BaseException | None = None) -> None:
        """Refuse to cache ``plan``: an error before the first training epoch, later a warning and live epochs.

        Raises:
            ValueError: before the fit's first training epoch was served.
        """
        if not self._started:
            raise ValueError(message) from cause
        self._rejected.add(plan)
        self._warn_once(f"refused:{plan.boundary}", f"{message} Training live instead.")

    # -------------------------------------------------------------------------------------- fingerprints --
    def _model_fingerprint(self, key: str, plan: TrunkPlan, views: int, data: Data) -> str:
        random_views = views > 1 or data.random_reason is not None
        fp = model_fingerprint(
            self.module,
            plan,
            split=key,
            precision=self.runtime.precision,
            views=views,
            seed=self.options.seed if random_views else None,
        )
        runtime = self.runtime
        if runtime.world_size > 1 and not runtime.all_agree(runtime.broadcast(fp) == fp):
            raise RuntimeError(
                "FeatureCache: the frozen weights differ across processes; they cannot share a cache"
            )
        return fp

    def _data_fingerprint(self, key: str, data: Data) -> str:
        if self.options.data_id is not None:
            return data_fingerprint(f"id:{self.options.data_id}:{key}", data.num_samples)
        local = (key, *data.local_key())
        if local not in self._content:
            self._content[local] = data.content_key()
        content = self._content[local]
        if content is None:  # opaque data: a key no later run shares
            return "run" + self._run_nonce
        return data_fingerprint(content, data.num_samples)

    # ---------------------------------------------------------------------------------------------- disk --
    def _open_disk(
        self, key: str, plan: TrunkPlan, model_fp: str, data: Data, views: int
    ) -> CacheEntry | None:
        found = self._find_on_disk(key, model_fp, data) if self.options.may_use_disk else None
        if not self.runtime.all_agree(found is not None) or found is None:
            return None  # every rank gets here, whatever it found: the collectives stay in step
        store, data_fp = found
        log.info("FeatureCache: reusing %s", store.directory)
        kind = store.manifest["kind"]
        storage = self._storage_kind(store.nbytes)
        if storage != "disk":  # it fits in memory: serve it from there
            store = load_into_memory(store, storage, self.runtime.device)
        return CacheEntry(plan, store, kind, views, model_fp, data.local_key(), f"{model_fp}:{data_fp}")

    def _find_on_disk(self, key: str, model_fp: str, data: Data) -> tuple[FeatureStore, str] | None:
        """This process's look at the disk (no collectives): the entry and its data fingerprint, or ``None``.

        The node's local rank 0 reads the entry's files once to check their content hashes; when they fail,
        it warns, deletes the entry and returns ``None``, which makes every rank rebuild.
        """
        self.disk.sweep_once()
        if not self.disk.may_hold(key, model_fp):
            return None  # nothing on disk for these weights: no need to hash the data
        data_fp = self._data_fingerprint(key, data)
        checker = self.runtime.local_rank == 0
        try:
            store = self.disk.open(key, model_fp, data_fp, self.runtime.device, verify_contents=checker)
        except CorruptEntry as err:  # seen by one process per node (local rank 0), so warned by each of them
            warnings.warn(
                f"FeatureCache: the disk cache is corrupted: {err}. Discarding it and rebuilding.",
                stacklevel=2,
            )
            self.disk.discard(self.disk.entry(key, model_fp, data_fp))
            return None
        return None if store is None else (store, data_fp)

    def _storage_kind(self, nbytes: int) -> StorageKind:
        options = self.options
        kind = choose_storage(options.storage, nbytes, options.memory_budget, self.runtime.device)
        return self.runtime.broadcast(kind)  # every rank stores it alike

    # --------------------------------------------------------------------------------------------- build --
    def allocate(self, key: str, data: Data, plan: TrunkPlan, rows: list[Tensor], views: int) -> Built:
        """An empty store for ``plan``'s cache of ``data``, given one row of each cached tensor (features first).

        The storage is chosen by size; a disk entry is named by both fingerprints.
        """
        model_fp, data_fp = self._model_fingerprint(key, plan, views, data), "memory"
        storage = self._storage_kind(
            views * data.num_samples * sum(r.numel() * r.element_size() for r in rows)
        )
        directory = None
        if storage == "disk":
            self.disk.sweep_once()
            data_fp = self._data_fingerprint(key, data)
            directory = self.disk.entry(key, model_fp, data_fp)
        store = FeatureStore.allocate(
            storage,
            views,
            data.num_samples,
            rows,
            self.runtime.device,
            directory=directory,
            write=self.runtime.local_rank == 0,
        )
        return Built(plan, store, model_fp, data_fp)

    def _build(self, key: str, data: Data, plan: TrunkPlan | None, views: int) -> CacheEntry | None:
        try:
            built = build_features(self, key, data, plan, views)
        except CutRejected as err:
            self._refuse(err.plan, str(err), err.__cause__)
            return None
        if built is None:
            return None
        fingerprint = f"{built.model_fp}:{built.data_fp}"
        kind: BatchKind = data.kind if data.kind is not None else "tuple"
        store = built.store
        if store.kind == "disk":
            store = self._commit(built, fingerprint, data.num_samples, views, kind)
        rank_zero_info(
            f"FeatureCache: cached the output of {built.plan.boundary} for {data.num_samples} samples x {views} "
            f"view(s) in {store.kind} storage"
        )
        entry = CacheEntry(built.plan, store, kind, views, built.model_fp, data.local_key(), fingerprint)
        return self._keep(key, entry)

    def _commit(self, built: Built, fingerprint: str, n: int, views: int, kind: BatchKind) -> FeatureStore:
        """Finish a disk entry (local rank 0 writes it while the node's other ranks wait), then open it."""
        directory = built.store.directory
        if directory is None:
            raise RuntimeError("FeatureCache: a disk store without a directory")
        if self.runtime.local_rank == 0:
            batch_kind = kind if isinstance(kind, str) else "namedtuple"
            manifest = {"plan": built.plan.to_json(), "views": views, "samples": n, "kind": batch_kind}
            built.store.commit(fingerprint, manifest)
            if fingerprint.split(":")[1].startswith("run"):
                self._run_local.append(directory)
            else:
                key = self._plan_key()
                self.disk.write_plan(key, built.plan, self._plans.get(key, (built.plan, True))[1])
        self.runtime.barrier("FeatureCache.commit")
        # written by this node's local rank 0 a moment ago (and checked when it replaced another process's)
        opened = FeatureStore.open(directory, fingerprint, self.runtime.device, verify_contents=False)
        if opened is None:
            raise RuntimeError(
                f"FeatureCache: the disk cache {directory} written by local rank 0 cannot be read here: "
                "`cache_dir` must be on a file system that all processes of a node share."
            )
        return opened

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)
