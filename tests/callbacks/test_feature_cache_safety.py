"""FeatureCache under anyone's freezer: it caches only what live training would compute, or says why not.

Each case trains the same initial model with and without the cache: where the cache runs, the weights agree
(1e-6); where it cannot reproduce live training, the fit is refused at the start (ValueError naming the cause) or,
after the first epoch, runs live with a warning, and then equals the live run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning, Callback
from torch import Tensor, nn

from lightning_dnn.callbacks import LayerFreezer
from lightning_dnn.callbacks.feature_cache import FeatureCache
from lightning_dnn.data import DeviceBatchLoader
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP
from tests.trainer_utils import quiet_trainer_kwargs

N, D, C = 64, 12, 4


def data() -> DeviceBatchLoader:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, D, generator=gen), torch.randint(0, C, (N,), generator=gen)
    return DeviceBatchLoader(x, y, batch_size=16, seed=3)


def mlp(norm: str | None = "batch") -> DNNClassifier:
    torch.manual_seed(0)
    return DNNClassifier(MLP(D, (16, 16, 16), C, norm=norm), optimizer="adam", lr=1e-2)  # type: ignore[arg-type]


class Shifted(nn.Module):
    """``hidden1 -> + shift -> hidden2 -> hidden3 -> output``: ``shift`` is held by the network itself."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden1, self.hidden2, self.hidden3 = nn.Linear(D, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.output = nn.Linear(16, C)
        self.shift = nn.Parameter(torch.full((16,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.hidden1(x)) + self.shift
        return self.output(torch.relu(self.hidden3(torch.relu(self.hidden2(x)))))


def shifted() -> DNNClassifier:
    torch.manual_seed(0)
    return DNNClassifier(Shifted(), C, optimizer="adam", lr=1e-2)


def fit(
    model: pl.LightningModule, callbacks: list[Callback], tmp_path: Path, epochs: int = 3
) -> pl.LightningModule:
    options = quiet_trainer_kwargs(tmp_path, max_epochs=epochs, num_sanity_val_steps=0)
    pl.Trainer(callbacks=callbacks, **options).fit(model, data())
    return model


def assert_same_state(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=atol, msg=key)


class FreezeAt(Callback):
    """Freeze ``modules`` by hand (``BaseFinetuning.freeze``, as finetuning-scheduler does) at ``epoch``."""

    def __init__(self, modules: tuple[str, ...], epoch: int = 0, train_bn: bool = False) -> None:
        self.modules, self.epoch, self.train_bn = modules, epoch, train_bn

    def _freeze(self, pl_module: pl.LightningModule) -> None:
        BaseFinetuning.freeze([pl_module.net.get_submodule(m) for m in self.modules], train_bn=self.train_bn)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.epoch == 0:
            self._freeze(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epoch and trainer.current_epoch == self.epoch:
            self._freeze(pl_module)


# ------------------------------------------------------------------------------- frozen batch norm in train mode --
def test_base_finetuning_frozen_batch_norm_is_refused(tmp_path: Path) -> None:
    # Lightning's BaseFinetuning.freeze(train_bn=False) (finetuning-scheduler's freeze) sets
    # track_running_stats=False and leaves the layer in training mode: live training normalizes with batch
    # statistics, a cache built in eval mode with the running ones (before the fix: cached, no warning).
    live = fit(mlp(), [FreezeAt(("hidden1", "hidden2"))], tmp_path)
    eval_mode = mlp().eval()
    with torch.no_grad():  # the two differ: caching them would train on other features (measured 2.4 before)
        x = data().tensors[0]
        assert (
            live.net.hidden2(live.net.hidden1(x)) - eval_mode.net.hidden2(eval_mode.net.hidden1(x))
        ).abs().max() > 0.1
    with pytest.raises(ValueError, match=r"training mode: net\.hidden1\.bn, net\.hidden2\.bn"):
        fit(mlp(), [FreezeAt(("hidden1", "hidden2")), FeatureCache()], tmp_path)


def test_layer_freezer_with_batch_norm_in_train_mode_is_refused_and_eval_mode_caches(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"training mode: net\.hidden1\.bn, net\.hidden2\.bn.*LayerFreezer"):
        fit(mlp(), [LayerFreezer("hidden[12]", bn="train"), FeatureCache()], tmp_path)
    live = fit(mlp(), [LayerFreezer("hidden[12]")], tmp_path)
    cache = FeatureCache()
    cached = fit(mlp(), [LayerFreezer("hidden[12]"), cache], tmp_path)
    assert cache.current_boundary == "net.hidden2"
    assert_same_state(live, cached)


def test_batch_norm_without_running_statistics_is_refused_even_in_eval_mode(tmp_path: Path) -> None:
    model = mlp()
    model.net.hidden1.bn = nn.BatchNorm1d(16, track_running_stats=False)  # batch statistics in every mode
    with pytest.raises(ValueError, match=r"training mode: net\.hidden1\.bn"):
        fit(model, [LayerFreezer("hidden[12]"), FeatureCache()], tmp_path)


def test_a_trunk_that_turns_to_train_mode_after_a_milestone_runs_live_with_a_warning(tmp_path: Path) -> None:
    # epoch 0: hidden1 frozen by LayerFreezer (eval mode): cached; epoch 1: hidden2 frozen in train mode by hand
    def callbacks() -> list[Callback]:
        return [LayerFreezer("hidden1"), FreezeAt(("hidden2",), epoch=1)]

    live = fit(mlp(), callbacks(), tmp_path)
    cache = FeatureCache()
    with pytest.warns(UserWarning, match=r"training mode: net\.hidden2\.bn.*Training live instead"):
        cached = fit(mlp(), [*callbacks(), cache], tmp_path)
    assert cache.current_boundary is None  # the last epoch ran live
    assert_same_state(live, cached)


# ------------------------------------------------------------------------- trainable tensors inside the trunk --
def test_a_trainable_parameter_of_the_network_used_inside_the_trunk_is_refused(tmp_path: Path) -> None:
    # without the check the cached run trained other weights (max difference 0.14), with no warning
    with pytest.raises(ValueError, match=r"depends on trainable parameters .*: net\.shift\..*boundary"):
        fit(shifted(), [LayerFreezer("hidden[12]"), FeatureCache()], tmp_path)


def test_the_same_parameter_after_the_cut_or_frozen_is_cached_and_equals_live(tmp_path: Path) -> None:
    # shift is applied after hidden1's output: with only hidden1 frozen it belongs to the head
    live = fit(shifted(), [LayerFreezer("hidden1")], tmp_path)
    cache = FeatureCache()
    cached = fit(shifted(), [LayerFreezer("hidden1"), cache], tmp_path)
    assert cache.current_boundary == "net.hidden1"
    assert_same_state(live, cached)

    class FreezeShift(Callback):
        def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            pl_module.net.shift.requires_grad_(False)

    # frozen, between frozen layers: `+ shift` is not a module, replaying the head on hidden2's output adds it
    # again; the cut check refuses hidden2, and an explicit boundary below it caches
    with pytest.raises(ValueError, match=r"output computed from the cached output of net\.hidden2 differs"):
        fit(shifted(), [LayerFreezer("hidden[12]"), FreezeShift(), FeatureCache()], tmp_path)
    live = fit(shifted(), [LayerFreezer("hidden[12]"), FreezeShift()], tmp_path)
    cache = FeatureCache("hidden1")
    cached = fit(shifted(), [LayerFreezer("hidden[12]"), FreezeShift(), cache], tmp_path)
    assert cache.current_boundary == "net.hidden1"
    assert_same_state(live, cached)


def test_a_trainable_parameter_inside_the_trunk_after_a_milestone_runs_live_with_a_warning(
    tmp_path: Path,
) -> None:
    def callbacks() -> list[Callback]:
        return [LayerFreezer("hidden1"), FreezeAt(("hidden2",), epoch=1)]

    live = fit(shifted(), callbacks(), tmp_path)
    cache = FeatureCache()
    with pytest.warns(UserWarning, match=r"net\.shift.*Training live instead"):
        cached = fit(shifted(), [*callbacks(), cache], tmp_path)
    assert cache.current_boundary is None
    assert_same_state(live, cached)


# ----------------------------------------------------------------------------- exceptions inside the cut check --
def test_an_exception_in_the_cut_check_becomes_the_forward_features_advice(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")

    def vit() -> DNNClassifier:
        torch.manual_seed(0)
        net = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=C, pretrained=False)
        return DNNClassifier(net, C, optimizer="adam", lr=1e-3)

    class FreezeAllButHead(Callback):  # by hand: the class token and position embedding too
        def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            for name, p in pl_module.net.named_parameters():
                p.requires_grad_(name.startswith("head."))

    gen = torch.Generator().manual_seed(0)
    images = DeviceBatchLoader(
        torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, C, (16,)), batch_size=8
    )
    trainer_args = quiet_trainer_kwargs(tmp_path, max_epochs=2, num_sanity_val_steps=0)
    with pytest.raises(
        ValueError,
        match=r"cannot run on its output \(cached\) \(RuntimeError: .*size.*"
        r"VisionTransformer defines forward_features/forward_head: use "
        r"FeatureCache\(boundary='forward_features'\)",
    ) as err:
        pl.Trainer(callbacks=[FreezeAllButHead(), FeatureCache()], **trainer_args).fit(vit(), images)
    assert isinstance(err.value.__cause__, RuntimeError)  # the original error is chained

    live = vit()
    pl.Trainer(callbacks=[FreezeAllButHead()], **trainer_args).fit(live, images)
    cache, cached = FeatureCache("forward_features"), vit()
    pl.Trainer(callbacks=[FreezeAllButHead(), cache], **trainer_args).fit(cached, images)
    assert cache.current_boundary == "net.forward_features"
    assert_same_state(live, cached, atol=1e-5)


# --------------------------------------------------------------------------------------------------- verify --
class Recorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self.losses.append(float(loss))


def test_verify_passes_and_changes_nothing_in_the_run(tmp_path: Path) -> None:
    live = fit(mlp(), [LayerFreezer("hidden[12]")], tmp_path)
    plain = fit(mlp(), [LayerFreezer("hidden[12]"), FeatureCache()], tmp_path)
    cache, seen = FeatureCache(verify=True), Recorder()
    verified = fit(mlp(), [LayerFreezer("hidden[12]"), cache, seen], tmp_path)
    assert cache.current_boundary == "net.hidden2"
    assert len(seen.losses) == 3 * N // 16  # the verification steps are not training steps
    for key, value in plain.state_dict().items():  # bit for bit: random streams and weights untouched
        assert torch.equal(value, verified.state_dict()[key]), key
    assert_same_state(live, verified)


def test_verify_names_train_mode_layers_the_cache_was_allowed_to_hold(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"verify=True.*differs.*training mode \(net\.hidden1\.bn, net\.hidden2\.bn"
    ):
        fit(
            mlp(),
            [LayerFreezer("hidden[12]", bn="train"), FeatureCache(train_mode_trunk="allow", verify=True)],
            tmp_path,
        )


def test_a_verify_mismatch_after_a_milestone_trains_live_with_a_warning(tmp_path: Path) -> None:
    # epoch 0: hidden1 frozen in eval mode: verified, cached; epoch 1: hidden2 frozen in training mode, allowed by
    # train_mode_trunk='allow' but caught by verify: a warning, and the epoch runs live
    def callbacks() -> list[Callback]:
        return [LayerFreezer("hidden1"), FreezeAt(("hidden2",), epoch=1)]

    live = fit(mlp(), callbacks(), tmp_path)
    cache = FeatureCache(train_mode_trunk="allow", verify=True)
    with pytest.warns(
        UserWarning, match=r"verify=True.*training mode \(net\.hidden2\.bn\).*Training live instead"
    ):
        cached = fit(mlp(), [*callbacks(), cache], tmp_path)
    assert cache.current_boundary is None
    assert_same_state(live, cached)


class ScalesInputs(DNNClassifier):
    """A training step that changes the inputs itself (not through ``forward``): invisible to the build check."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x * 2), y)


class ReadsInputs(DNNClassifier):
    """A training step whose loss reads the raw inputs besides the network's output."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y) + self.net.output.linear.bias.sum() * x.mean()


@pytest.mark.parametrize(
    ("cls", "cause"),
    [(ScalesInputs, "code in training_step that changes the inputs"), (ReadsInputs, "reads the raw inputs")],
)
def test_verify_catches_a_training_step_the_build_check_cannot_see(
    cls: type[DNNClassifier], cause: str, tmp_path: Path
) -> None:
    def model() -> DNNClassifier:
        torch.manual_seed(0)
        return cls(MLP(D, (16, 16, 16), C), optimizer="adam", lr=1e-2)  # type: ignore[arg-type]

    live = fit(model(), [LayerFreezer("hidden[12]")], tmp_path)
    unverified = fit(model(), [LayerFreezer("hidden[12]"), FeatureCache()], tmp_path)
    assert any(  # what verify prevents: a silently different model
        (a - b).abs().max() > 1e-3
        for a, b in zip(live.state_dict().values(), unverified.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match=rf"verify=True.*{cause}"):
        fit(model(), [LayerFreezer("hidden[12]"), FeatureCache(verify=True)], tmp_path)


def test_verify_refuses_manual_optimization(tmp_path: Path) -> None:
    class Manual(DNNClassifier):
        def __init__(self) -> None:
            super().__init__(MLP(D, (16, 16), C), optimizer="adam")  # type: ignore[arg-type]
            self.automatic_optimization = False

    with pytest.raises(ValueError, match=r"verify=True.*manual optimization"):
        fit(Manual(), [LayerFreezer("hidden1"), FeatureCache(verify=True)], tmp_path)
    with pytest.raises(TypeError, match="`verify` must be"):
        FeatureCache(verify="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- with finetuning-scheduler --
def test_finetuning_scheduler_itself_is_refused_with_batch_norm_and_cached_without(tmp_path: Path) -> None:
    pytest.importorskip("finetuning_scheduler")
    lightning = pytest.importorskip("lightning.pytorch")
    from finetuning_scheduler import FinetuningScheduler

    def fts_fit(model: DNNClassifier, *extra: Any, track: bool = True) -> DNNClassifier:
        schedule = {0: {"params": ["net.output.*", "net.hidden3.*"], "max_transition_epoch": 3}}
        fts = FinetuningScheduler(
            ft_schedule=schedule, epoch_transitions_only=True, frozen_bn_track_running_stats=track
        )
        trainer = lightning.Trainer(callbacks=[fts, *extra], **quiet_trainer_kwargs(tmp_path, max_epochs=2))
        trainer.fit(model, data())
        return model

    for track in (True, False):  # its frozen batch norm stays in training mode, tracking or not
        with pytest.raises(ValueError, match=r"training mode: net\.hidden1\.bn, net\.hidden2\.bn"):
            fts_fit(mlp(), FeatureCache(), track=track)
    live = fts_fit(mlp(norm=None))
    cache = FeatureCache()
    cached = fts_fit(mlp(norm=None), cache)
    assert cache.current_boundary == "net.hidden2"
    assert_same_state(live, cached)
