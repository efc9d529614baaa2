"""FeatureCache: training on cached trunk outputs equals training live, and touches neither data nor trunk.

Every equivalence test trains the same initial model twice, once with the frozen layers computed live and once
from the cache, and compares all parameters and buffers after several epochs (tolerance 1e-6). Counters prove
the rest: forward hooks on the trunk's layers count the samples they process, and the training inputs are a
tensor subclass (or a dataset) that counts every read.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_dnn.callbacks import LayerFreezer
from lightning_dnn.callbacks.feature_cache import FeatureCache
from lightning_dnn.data import ArrayDataModule, DeviceBatchLoader
from lightning_dnn.loading import TransformDataset
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP
from tests.trainer_utils import quiet_trainer_kwargs

N, D, C = 64, 12, 4


def arrays(seed: int = 0, n: int = N, shape: tuple[int, ...] = (D,)) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen), torch.randint(0, C, (n,), generator=gen)


def mlp_model(seed: int = 0, *, norm: str | None = "batch", lr: float = 1e-2) -> DNNClassifier:
    torch.manual_seed(seed)
    return DNNClassifier(MLP(D, (16, 16, 16), C, norm=norm), optimizer="adam", lr=lr)  # type: ignore[arg-type]


def conv_model(seed: int = 0) -> DNNClassifier:
    torch.manual_seed(seed)
    net = nn.Sequential(
        OrderedDict(
            block1=nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)
            ),
            block2=nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),
            flatten=nn.Flatten(),
            output=nn.Linear(6 * 4 * 4, C),
        )
    )
    return DNNClassifier(net, C, optimizer="adam", lr=1e-2)


class SampleCounter:
    """Counts the samples each watched module processes (forward hooks)."""

    def __init__(self, model: nn.Module, *names: str) -> None:
        self.counts = dict.fromkeys(names, 0)
        for name in names:
            model.get_submodule(name).register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            self.counts[name] += len(output)

        return hook


class Watched(Tensor):
    """A tensor counting the operations that read it (metadata queries excluded)."""

    reads = 0
    _METADATA = frozenset(
        {"__get__", "data_ptr", "dim", "size", "numel", "__len__", "element_size", "is_contiguous", "stride"}
    )

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") not in cls._METADATA:
            Watched.reads += 1
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


class WatchedData(pl.LightningDataModule):
    """Training batches from a DeviceBatchLoader over a Watched input tensor."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int = 16) -> None:
        super().__init__()
        self.x, self.y, self.batch_size = x.as_subclass(Watched), y, batch_size

    def train_dataloader(self) -> DeviceBatchLoader:
        return DeviceBatchLoader(self.x, self.y, batch_size=self.batch_size, seed=3)


class Record(Callback):
    """Per epoch: the boundary in use and the counters; the reads of the inputs at the first training step."""

    def __init__(self, cache: FeatureCache | None = None, counter: SampleCounter | None = None) -> None:
        self.cache, self.counter = cache, counter
        self.boundaries: list[str | None] = []
        self.counts: list[dict[str, int]] = []
        self.reads_after_build: int | None = None
        self.batches: list[list[Any]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.reads_after_build is None:
            self.reads_after_build = Watched.reads
        if batch_idx == 0:
            self.batches.append([])
        self.batches[-1].append([t.detach().clone() for t in batch])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.boundaries.append(self.cache.current_boundary if self.cache else None)
        self.counts.append(dict(self.counter.counts) if self.counter else {})


def fit(
    model: pl.LightningModule,
    data: Any,
    callbacks: list[Callback],
    tmp_path: Path,
    ckpt_path: Path | None = None,
    **kwargs: Any,
) -> pl.Trainer:
    options = quiet_trainer_kwargs(tmp_path, **{"max_epochs": 3, "num_sanity_val_steps": 0, **kwargs})
    trainer = pl.Trainer(callbacks=callbacks, **options)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer


def assert_same_state(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=atol, msg=key)


TRUNK = ("net.hidden1.linear", "net.hidden2.linear")


# --------------------------------------------------------------------------------------------- equivalence --
def test_mlp_cache_equals_live_and_reads_neither_data_nor_trunk_after_the_build(tmp_path: Path) -> None:
    x, y = arrays()
    live = mlp_model()
    fit(live, WatchedData(x, y), [LayerFreezer("hidden[12]")], tmp_path)

    cached, cache = mlp_model(), FeatureCache(batch_size=24)
    counter = SampleCounter(cached, *TRUNK)
    record = Record(cache, counter)
    Watched.reads = 0
    fit(cached, WatchedData(x, y), [LayerFreezer("hidden[12]"), cache, record], tmp_path)

    assert_same_state(cached, live)  # head weights, head batch-norm statistics, and the untouched trunk
    assert record.boundaries == ["net.hidden2"] * 3
    assert record.counts == [dict.fromkeys(TRUNK, N)] * 3  # each sample once, in the build of epoch 0
    assert record.reads_after_build is not None and record.reads_after_build > 0  # the build read the inputs
    assert Watched.reads == record.reads_after_build  # ... and nothing read them afterwards
    features = record.batches[0][0][0]
    assert features.shape == (16, 16) and type(features) is Tensor  # hidden2's output, not inputs
    assert cache.state_dict()["boundary"] == "net.hidden2"


def test_conv_net_with_explicit_boundary_equals_live(tmp_path: Path) -> None:
    x, y = arrays(1, shape=(1, 8, 8))
    data = ArrayDataModule(x, y, batch_size=16, flatten=False, seed=5)
    live = conv_model()
    fit(live, data, [LayerFreezer("block[12]")], tmp_path)

    cached, cache = conv_model(), FeatureCache("block2", batch_size=20)
    counter = SampleCounter(cached, "net.block1.0", "net.block2.0")
    fit(cached, data, [LayerFreezer("block[12]"), cache], tmp_path)

    assert_same_state(cached, live)
    assert cache.current_boundary == "net.block2"
    assert counter.counts == {"net.block1.0": N, "net.block2.0": N}


def test_dataloader_with_random_sampler_gives_the_live_order_without_getitem(tmp_path: Path) -> None:
    x, y = arrays(2)

    class Counting(TensorDataset):
        calls = 0

        def __getitem__(self, index: int) -> Any:
            Counting.calls += 1
            return super().__getitem__(index)

    def loader() -> DataLoader[Any]:
        return DataLoader(Counting(x, y), batch_size=10, shuffle=True)  # a RandomSampler on the global RNG

    pl.seed_everything(7, verbose=False)
    live = mlp_model(norm=None)
    fit(live, loader(), [LayerFreezer("hidden1")], tmp_path)

    pl.seed_everything(7, verbose=False)
    cached, cache = mlp_model(norm=None), FeatureCache()
    Counting.calls = 0
    fit(cached, loader(), [LayerFreezer("hidden1"), cache], tmp_path)

    assert Counting.calls == N  # once per sample, for the build
    assert cache.current_boundary == "net.hidden1"
    assert_same_state(cached, live)


def test_forward_features_boundary(tmp_path: Path) -> None:
    x, y = arrays(3)
    live = mlp_model()
    fit(live, ArrayDataModule(x, y, batch_size=16), [LayerFreezer("hidden[123]")], tmp_path, max_epochs=2)
    cached, cache = mlp_model(), FeatureCache("forward_features")
    counter = SampleCounter(cached, "net.hidden3.linear")
    fit(
        cached,
        ArrayDataModule(x, y, batch_size=16),
        [LayerFreezer("hidden[123]"), cache],
        tmp_path,
        max_epochs=2,
    )
    assert cache.current_boundary == "net.forward_features"
    assert counter.counts["net.hidden3.linear"] == N
    assert_same_state(cached, live)


# -------------------------------------------------------------------------------------------- invalidation --
def test_unfreezing_moves_the_boundary_down_then_drops_the_cache(tmp_path: Path) -> None:
    x, y = arrays(4)
    schedule = {1: "hidden2", 2: "hidden1"}
    live = mlp_model()
    fit(live, ArrayDataModule(x, y, batch_size=16), [LayerFreezer("hidden[12]", unfreeze=schedule)], tmp_path)

    cached, cache = mlp_model(), FeatureCache()
    counter = SampleCounter(cached, *TRUNK)
    record = Record(cache, counter)
    freezer = LayerFreezer("hidden[12]", unfreeze=schedule)
    fit(
        cached, ArrayDataModule(x, y, batch_size=16), [cache, freezer, record], tmp_path
    )  # cache listed first

    assert record.boundaries == ["net.hidden2", "net.hidden1", None]
    h1, h2 = TRUNK
    # epoch 0: one build; epoch 1: a new build of hidden1 (hidden2 is now a head layer); epoch 2: all live
    assert [c[h1] for c in record.counts] == [N, 2 * N, 3 * N]
    assert record.counts[0][h2] == N
    assert_same_state(cached, live)


class ScaleFrozenWeight(Callback):
    """Changes a frozen weight behind the version counter's back (``.data``) at the start of epoch 1."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            pl_module.net.hidden1.linear.weight.data.mul_(0.5)


def test_a_frozen_weight_changed_by_user_code_rebuilds_the_cache(tmp_path: Path) -> None:
    x, y = arrays(5)
    live = mlp_model()
    fit(
        live,
        ArrayDataModule(x, y, batch_size=16),
        [LayerFreezer("hidden[12]"), ScaleFrozenWeight()],
        tmp_path,
    )

    cached, cache = mlp_model(), FeatureCache()
    counter = SampleCounter(cached, *TRUNK)
    record = Record(cache, counter)
    callbacks = [LayerFreezer("hidden[12]"), cache, ScaleFrozenWeight(), record]
    fit(cached, ArrayDataModule(x, y, batch_size=16), callbacks, tmp_path)
    assert [c[TRUNK[0]] for c in record.counts] == [N, 2 * N, 2 * N]  # rebuilt at epoch 1 only
    assert_same_state(cached, live)

    # between fits: the same callback sees an edit made after the first fit
    with torch.no_grad():
        cached.net.hidden2.bn.bias.add_(1.0)
    fit(
        cached,
        ArrayDataModule(x, y, batch_size=16),
        [LayerFreezer("hidden[12]"), cache],
        tmp_path,
        max_epochs=1,
    )
    assert counter.counts[TRUNK[0]] == 3 * N


class ReluBetween(nn.Module):
    """hidden1 -> relu (not a module) -> hidden2 -> output: a cut after hidden1 is valid, after hidden2 not."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden1, self.hidden2, self.output = nn.Linear(D, 8), nn.Linear(8, 8), nn.Linear(8, C)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.hidden2(self.hidden1(x).relu()))


class FreezeHidden2(Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            pl_module.net.hidden2.requires_grad_(False)


def test_a_cut_that_fails_the_check_mid_fit_trains_live_with_a_warning(tmp_path: Path) -> None:
    x, y = arrays(19)

    def model() -> DNNClassifier:
        torch.manual_seed(0)
        return DNNClassifier(ReluBetween(), C, optimizer="sgd", lr=0.1)

    live = model()
    fit(live, ArrayDataModule(x, y, batch_size=16), [LayerFreezer("hidden1"), FreezeHidden2()], tmp_path)
    cached, cache = model(), FeatureCache(batch_size=16)
    counter = SampleCounter(cached, "net.hidden1")
    record = Record(cache, counter)
    with pytest.warns(UserWarning, match="differs from its output on the inputs.*Training live instead"):
        fit(
            cached,
            ArrayDataModule(x, y, batch_size=16),
            [LayerFreezer("hidden1"), FreezeHidden2(), cache, record],
            tmp_path,
        )
    assert record.boundaries == ["net.hidden1", None, None]
    # epoch 0: the build; epoch 1: the rejected build's first chunk (16) + a live epoch; epoch 2: live, no retry
    assert [c["net.hidden1"] for c in record.counts] == [N, 2 * N + 16, 3 * N + 16]
    assert_same_state(cached, live)


# ------------------------------------------------------------------------------------------- augmentation --
def shift_augment(sample: Tensor) -> Tensor:
    return sample + 100 * torch.rand(())  # draws from the global torch RNG


def test_random_augmentation_is_refused_without_views(tmp_path: Path) -> None:
    x, y = arrays(6, shape=(1, 2, 2))
    data = ArrayDataModule(x, y, batch_size=16, flatten=False, augment=shift_augment)
    torch.manual_seed(0)
    model = DNNClassifier(nn.Sequential(OrderedDict(hidden1=nn.Flatten(), output=nn.Linear(4, C))), C)
    with pytest.raises(ValueError, match=r"random augmentation \(ArrayDataModule.has_random_augmentation"):
        fit(model, data, [FeatureCache()], tmp_path)


def test_views_cycle_through_k_augmented_copies_without_getitem(tmp_path: Path, monkeypatch: Any) -> None:
    n = 24
    x = torch.zeros(n, 1, 2, 2)
    y = torch.arange(n)  # the label identifies the sample
    calls = {"getitem": 0}
    original = TransformDataset.__getitem__

    def counting(self: TransformDataset, index: int) -> Any:
        calls["getitem"] += 1
        return original(self, index)

    monkeypatch.setattr(TransformDataset, "__getitem__", counting)
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(hidden1=nn.Sequential(nn.Flatten(), nn.Linear(4, 4)), output=nn.Linear(4, n))
    )
    model = DNNClassifier(net, n)
    cache = FeatureCache(views=2)
    record = Record(cache)
    data = ArrayDataModule(x, y, batch_size=8, flatten=False, augment=shift_augment)
    fit(model, data, [LayerFreezer("hidden1"), cache, record], tmp_path, max_epochs=4)

    assert calls["getitem"] == 2 * n  # two augmented views of each sample, read once each
    by_sample = []
    for epoch in record.batches:
        features = torch.cat([b[0] for b in epoch])
        labels = torch.cat([b[1] for b in epoch])
        by_sample.append(features[labels.argsort()])
    assert torch.equal(by_sample[0], by_sample[2]) and torch.equal(by_sample[1], by_sample[3])
    assert not torch.isclose(by_sample[0], by_sample[1]).all(dim=1).any()  # the views differ for every sample


# ------------------------------------------------------------------------------------------------- storage --
def test_disk_cache_is_reused_by_a_second_run_and_keyed_by_the_data(tmp_path: Path) -> None:
    x, y = arrays(7)
    runs = []
    for data_x in (x, x, x + 1):
        model, cache = mlp_model(), FeatureCache(storage="disk", cache_dir=tmp_path / "fc")
        counter = SampleCounter(model, *TRUNK)
        fit(model, ArrayDataModule(data_x, y, batch_size=16), [LayerFreezer("hidden[12]"), cache], tmp_path)
        runs.append((model, counter.counts[TRUNK[0]], cache.current_storage))
    assert [r[1] for r in runs] == [N, 0, N]  # the second run ran no trunk forward at all
    assert [r[2] for r in runs] == ["disk"] * 3
    assert_same_state(runs[1][0], runs[0][0], atol=0)
    entries = [p for p in (tmp_path / "fc").iterdir() if (p / "manifest.json").exists()]
    assert len(entries) == 2


@pytest.mark.parametrize("storage", ["device", "pinned", "disk"])
def test_every_storage_trains_alike(tmp_path: Path, storage: str) -> None:
    x, y = arrays(17)
    live = mlp_model()
    fit(live, ArrayDataModule(x, y, batch_size=16), [LayerFreezer("hidden[12]")], tmp_path, max_epochs=2)
    cached, cache = mlp_model(), FeatureCache(storage=storage, cache_dir=tmp_path / "fc")  # type: ignore[arg-type]
    fit(
        cached,
        ArrayDataModule(x, y, batch_size=16),
        [LayerFreezer("hidden[12]"), cache],
        tmp_path,
        max_epochs=2,
    )
    assert cache.current_storage == storage
    assert_same_state(cached, live)


class Opaque(Dataset[tuple[Tensor, Tensor]]):
    """A dataset FeatureCache cannot hash: only its length and type are known."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


def test_opaque_data_is_reused_from_disk_only_when_named_by_data_id(tmp_path: Path) -> None:
    x, y = arrays(18)
    cache_dir = tmp_path / "fc"
    counts = []
    for data_id in (None, None, "toy-v1", "toy-v1"):
        model = mlp_model()
        counter = SampleCounter(model, *TRUNK)
        cache = FeatureCache(storage="disk", cache_dir=cache_dir, data_id=data_id)
        loader = DataLoader(Opaque(x, y), batch_size=16)
        fit(model, loader, [LayerFreezer("hidden[12]"), cache], tmp_path, max_epochs=1)
        counts.append(counter.counts[TRUNK[0]])
        entries = [p for p in cache_dir.iterdir() if (p / "manifest.json").exists()]
        assert len(entries) == (0 if data_id is None else 1)  # a run-local entry is deleted after the fit
    assert counts == [N, N, N, 0]


def test_auto_storage_goes_to_disk_over_the_memory_budget(tmp_path: Path) -> None:
    x, y = arrays(8)
    live = mlp_model()
    fit(live, ArrayDataModule(x, y, batch_size=16), [LayerFreezer("hidden[12]")], tmp_path, max_epochs=2)
    cached, cache = mlp_model(), FeatureCache(memory_budget=1000, cache_dir=tmp_path / "fc")
    fit(
        cached,
        ArrayDataModule(x, y, batch_size=16),
        [LayerFreezer("hidden[12]"), cache],
        tmp_path,
        max_epochs=2,
    )
    assert cache.current_storage == "disk"  # N x 16 floats + labels > 1000 bytes
    assert_same_state(cached, live)


def test_a_crash_mid_build_leaves_no_cache_that_a_later_run_trusts(tmp_path: Path) -> None:
    x, y = arrays(9)
    model = mlp_model()
    calls = {"n": 0}

    def explode(module: nn.Module, args: Any, output: Tensor) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")

    handle = model.net.hidden1.register_forward_hook(explode)
    cache_dir = tmp_path / "fc"
    with pytest.raises(RuntimeError, match="disk full"):
        fit(
            model,
            ArrayDataModule(x, y, batch_size=16),
            [LayerFreezer("hidden[12]"), FeatureCache(storage="disk", cache_dir=cache_dir, batch_size=8)],
            tmp_path,
        )
    assert not [p for p in cache_dir.iterdir() if p.name != "plans"]  # no entry, no temporary leftovers
    handle.remove()

    counter = SampleCounter(model, *TRUNK)
    cache = FeatureCache(storage="disk", cache_dir=cache_dir, batch_size=8)
    fit(
        model,
        ArrayDataModule(x, y, batch_size=16),
        [LayerFreezer("hidden[12]"), cache],
        tmp_path,
        max_epochs=1,
    )
    assert counter.counts[TRUNK[0]] == N  # built from scratch


def test_an_entry_without_a_valid_manifest_is_rebuilt(tmp_path: Path) -> None:
    x, y = arrays(10)
    cache_dir = tmp_path / "fc"
    fit(
        mlp_model(),
        ArrayDataModule(x, y, batch_size=16),
        [LayerFreezer("hidden[12]"), FeatureCache(storage="disk", cache_dir=cache_dir)],
        tmp_path,
        max_epochs=1,
    )
    (entry,) = [p for p in cache_dir.iterdir() if (p / "manifest.json").exists()]
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64  # as if written for other weights
    (entry / "manifest.json").write_text(json.dumps(manifest))
    model = mlp_model()
    counter = SampleCounter(model, *TRUNK)
    fit(
        model,
        ArrayDataModule(x, y, batch_size=16),
        [LayerFreezer("hidden[12]"), FeatureCache(storage="disk", cache_dir=cache_dir)],
        tmp_path,
        max_epochs=1,
    )
    assert counter.counts[TRUNK[0]] == N


# ------------------------------------------------------------------------------------------- validation --
def test_validation_cache_gives_the_live_metrics(tmp_path: Path) -> None:
    x, y = arrays(11, n=80)
    live = mlp_model()
    live_trainer = fit(
        live,
        ArrayDataModule(x, y, batch_size=16, val_split=16),
        [LayerFreezer("hidden[12]")],
        tmp_path,
        max_epochs=2,
    )
    cached, cache = mlp_model(), FeatureCache(cache_val=True)
    counter = SampleCounter(cached, *TRUNK)
    trainer = fit(
        cached,
        ArrayDataModule(x, y, batch_size=16, val_split=16),
        [LayerFreezer("hidden[12]"), cache],
        tmp_path,
        max_epochs=2,
        num_sanity_val_steps=1,
    )
    assert counter.counts[TRUNK[0]] == 64 + 16  # the training and the validation samples, once each
    for key in ("val_loss", "val_acc", "train_loss"):
        torch.testing.assert_close(
            trainer.callback_metrics[key], live_trainer.callback_metrics[key], rtol=0, atol=1e-6
        )
    assert_same_state(cached, live)


def test_live_validation_inside_cached_epochs_sees_the_whole_network(tmp_path: Path) -> None:
    x, y = arrays(16, n=80)
    kwargs: dict[str, Any] = dict(max_epochs=2, val_check_interval=0.5, num_sanity_val_steps=1)
    live = mlp_model()
    live_trainer = fit(
        live,
        ArrayDataModule(x, y, batch_size=16, val_split=16),
        [LayerFreezer("hidden[12]")],
        tmp_path,
        **kwargs,
    )
    cached, cache = mlp_model(), FeatureCache()  # cache_val=False: validation runs on the raw inputs
    trainer = fit(
        cached,
        ArrayDataModule(x, y, batch_size=16, val_split=16),
        [LayerFreezer("hidden[12]"), cache],
        tmp_path,
        **kwargs,
    )
    assert cache.current_boundary == "net.hidden2"
    for key in ("val_loss", "val_acc"):
        torch.testing.assert_close(
            trainer.callback_metrics[key], live_trainer.callback_metrics[key], rtol=0, atol=1e-6
        )
    assert_same_state(cached, live)


# ----------------------------------------------------------------------------------------------- resume --
def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    x, y = arrays(12)
    full = mlp_model()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=6, save_top_k=-1)
    fit(
        full,
        ArrayDataModule(x, y, batch_size=16),
        [LayerFreezer("hidden[12]"), FeatureCache(), ckpt],
        tmp_path,
        enable_checkpointing=True,
    )
    path = tmp_path / "ckpt" / "epoch=1-step=6.ckpt"  # 4 batches per epoch: the middle of epoch 1
    assert path.exists()
    state = torch.load(path, weights_only=False)
    assert any(k.startswith("FeatureCache") for k in state["callbacks"])

    resumed, cache = mlp_model(seed=1), FeatureCache()
    counter = SampleCounter(resumed, *TRUNK)
    fit(
        resumed,
        ArrayDataModule(x, y, batch_size=16),
        [LayerFreezer("hidden[12]"), cache],
        tmp_path,
        ckpt_path=path,
    )
    assert counter.counts[TRUNK[0]] == N  # rebuilt once, from the restored weights
    assert_same_state(resumed, full)


def test_skipped_modules_neither_compute_nor_fire_hooks_and_get_them_back() -> None:
    from lightning_dnn.callbacks.feature_cache._plan import TrunkPlan
    from lightning_dnn.callbacks.feature_cache._trunk import Shadow

    net = nn.Sequential(OrderedDict(hidden1=nn.Linear(3, 3), output=nn.Linear(3, 2)))
    seen: list[str] = []
    net.hidden1.register_forward_hook(lambda m, i, o: seen.append("before"))
    shadow = Shadow()
    shadow.apply(net, TrunkPlan("", "hidden1", ("hidden1",), ("hidden1",)))
    features = torch.randn(4, 3)
    torch.testing.assert_close(net(features), net.output(features))
    net.hidden1.register_forward_hook(lambda m, i, o: seen.append("during"))
    assert seen == []  # the skipped layer did not run, as far as anything can observe
    shadow.remove()
    net(features)
    assert seen == ["before", "during"]
    assert set(net.state_dict()) == {"hidden1.weight", "hidden1.bias", "output.weight", "output.bias"}


# ----------------------------------------------------------------------------------------------- errors --
def test_argument_errors() -> None:
    with pytest.raises(TypeError, match="`boundary` must be None"):
        FeatureCache(boundary=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`views` must be >= 1"):
        FeatureCache(views=0)
    with pytest.raises(ValueError, match="`storage` must be one of"):
        FeatureCache(storage="ram")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid regex"):
        FeatureCache(boundary="hidden[")
    with pytest.raises(TypeError, match="`data_id`"):
        FeatureCache(data_id="")


def test_fit_time_errors(tmp_path: Path) -> None:
    x, y = arrays(13)
    data = ArrayDataModule(x, y, batch_size=16)
    with pytest.raises(ValueError, match=r"layers up to net\.hidden2 must be frozen"):
        fit(mlp_model(), data, [LayerFreezer("hidden2"), FeatureCache("hidden2")], tmp_path)
    with pytest.raises(ValueError, match="selects no module"):
        fit(mlp_model(), data, [FeatureCache("hidden9")], tmp_path)

    class Transfers(DNNClassifier):
        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="on_after_batch_transfer"):
        fit(Transfers(MLP(D, (8,), C)), data, [LayerFreezer("hidden1"), FeatureCache()], tmp_path)

    class Doubling(nn.Module):  # transforms its inputs with code that is not a module
        def __init__(self) -> None:
            super().__init__()
            self.hidden1, self.output = nn.Linear(D, 8), nn.Linear(8, C)

        def forward(self, x: Tensor) -> Tensor:
            return self.output(self.hidden1(x * 2).relu())

    with pytest.raises(ValueError, match="differs from its output on the inputs"):
        fit(DNNClassifier(Doubling(), C), data, [LayerFreezer("hidden1"), FeatureCache("hidden1")], tmp_path)


def test_nothing_frozen_trains_live_with_a_warning(tmp_path: Path) -> None:
    x, y = arrays(14)
    model, cache = mlp_model(), FeatureCache()
    with pytest.warns(UserWarning, match="no parameter is frozen"):
        fit(model, ArrayDataModule(x, y, batch_size=16), [cache], tmp_path, max_epochs=1)
    assert cache.current_boundary is None


def test_checkpoint_state_names_the_boundary_and_fingerprints_the_trunk(tmp_path: Path) -> None:
    x, y = arrays(15)
    states = []
    for scale in (1.0, 1.0, 0.5):
        model, cache = mlp_model(), FeatureCache()
        with torch.no_grad():
            model.net.hidden1.linear.weight.mul_(scale)
        fit(
            model,
            ArrayDataModule(x, y, batch_size=16),
            [LayerFreezer("hidden[12]"), cache],
            tmp_path,
            max_epochs=1,
        )
        states.append(cache.state_dict())
    assert states[0]["boundary"] == "net.hidden2" and states[0]["trunk"] == ["net.hidden1", "net.hidden2"]
    assert states[0]["views"] == 1
    assert states[0]["fingerprint"] == states[1]["fingerprint"]  # same frozen weights, same key
    assert states[0]["fingerprint"] != states[2]["fingerprint"]
