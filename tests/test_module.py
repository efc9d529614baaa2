"""Tests for DNNClassifier: training, logged values against hand computations, optimizers, schedules, penalties,
checkpoints (plain and LightningCLI) and argument validation."""

from __future__ import annotations

import copy
import functools
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP
from lightning_dnn.optim import FTRL
from tests.trainer_utils import quiet_trainer

IN, CLASSES = 8, 3


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well separated Gaussian blobs in 8 dims (linearly separable with a wide margin)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.zeros(CLASSES, IN)
    centers[0, 0], centers[1, 1], centers[2, 2] = 4.0, 4.0, 4.0
    y = torch.arange(n) % CLASSES
    x = centers[y] + torch.randn(n, IN, generator=g)
    return x, y


X_TRAIN, Y_TRAIN = _blobs(240, seed=0)
X_VAL, Y_VAL = _blobs(130, seed=1)  # 130 = 50 + 50 + 30: unequal batches check the weighting


def _loader(
    x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 50, shuffle: bool = False
) -> DataLoader:
    dataset = TensorDataset(x) if y is None else TensorDataset(x, y)
    # a torch.Generator does not survive ddp_spawn's pickling: only shuffled loaders get one
    generator = torch.Generator().manual_seed(0) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def _seq(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, 16), nn.ReLU(), nn.Linear(16, CLASSES))


def _trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    return quiet_trainer(tmp_path, **{"max_epochs": 1, **kwargs})


class _EpochRecorder(pl.Callback):
    """Reads the metrics every epoch-end hook sees (a plain callback runs before the module's own hook)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


class _HandLoss(pl.Callback):
    """Before each step, computes CE + l1 * sum|w| + l2 * sum w^2 by hand on the batch, with its size."""

    def __init__(self, l1: float, l2: float) -> None:
        self.l1, self.l2 = l1, l2
        self.rows: list[tuple[float, float, int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        x, y = batch
        with torch.no_grad():
            ce = F.cross_entropy(pl_module.net(x), y)
            weights = [m.weight for m in pl_module.net.modules() if isinstance(m, nn.Linear)]
            penalty = sum(self.l1 * w.abs().sum() + self.l2 * (w * w).sum() for w in weights)
        self.rows.append((float(ce + penalty), float(penalty), len(y)))


class _LrRecorder(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _weighted_mean(values: list[float], sizes: list[int]) -> float:
    return sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)


# ------------------------------------------------------------------------------------------------- training
def test_fit_learns_and_logs_epoch_values(tmp_path: Path) -> None:
    model = DNNClassifier(_seq(), lr=0.02)
    recorder = _EpochRecorder()
    trainer = _trainer(tmp_path, max_epochs=4, callbacks=[recorder])
    trainer.fit(model, _loader(X_TRAIN, Y_TRAIN, shuffle=True), _loader(X_VAL, Y_VAL))

    # every epoch-end callback sees this epoch's train and val values; no penalty logged without l1/l2
    assert [sorted(e) for e in recorder.epochs] == [["train_acc", "train_loss", "val_acc", "val_loss"]] * 4
    losses = [e["train_loss"] for e in recorder.epochs]
    assert losses[-1] < 0.5 * losses[0]
    assert recorder.epochs[-1]["train_acc"] > 0.9

    # the logged validation values equal the full-set loss and accuracy computed by hand
    model.eval()
    with torch.no_grad():
        logits = model.net(X_VAL)
    assert trainer.callback_metrics["val_loss"].item() == pytest.approx(
        F.cross_entropy(logits, Y_VAL).item(), rel=1e-5
    )
    hand_acc = (logits.argmax(1) == Y_VAL).float().mean().item()
    assert trainer.callback_metrics["val_acc"].item() == pytest.approx(hand_acc)

    (result,) = trainer.test(model, _loader(X_VAL, Y_VAL), verbose=False)
    assert sorted(result) == ["test_acc", "test_loss"]
    assert result["test_acc"] == pytest.approx(hand_acc) and result["test_acc"] > 0.9
    assert result["test_loss"] == pytest.approx(F.cross_entropy(logits, Y_VAL).item(), rel=1e-5)


def test_train_loss_is_weighted_mean_of_ce_plus_penalty(tmp_path: Path) -> None:
    l1, l2 = 1e-3, 1e-2
    model = DNNClassifier(_seq(), optimizer="sgd", lr=0.05, l1=l1, l2=l2)
    hand, recorder = _HandLoss(l1, l2), _EpochRecorder()
    loader = _loader(X_TRAIN[:130], Y_TRAIN[:130])  # batches of 50, 50, 30
    _trainer(tmp_path, max_epochs=2, callbacks=[hand, recorder]).fit(model, loader)
    assert [n for _, _, n in hand.rows] == [50, 50, 30] * 2
    for epoch, logged in enumerate(recorder.epochs):
        rows = hand.rows[3 * epoch : 3 * epoch + 3]
        sizes = [n for _, _, n in rows]
        assert logged["train_loss"] == pytest.approx(_weighted_mean([r[0] for r in rows], sizes), rel=1e-5)
        assert logged["train_penalty"] == pytest.approx(_weighted_mean([r[1] for r in rows], sizes), rel=1e-5)


def test_epoch_cut_short_by_max_steps_still_logs(tmp_path: Path) -> None:
    model = DNNClassifier(_seq(), lr=0.01)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, _loader(X_TRAIN, Y_TRAIN))
    assert {"train_loss", "train_acc"} <= set(trainer.callback_metrics)


def test_predict_returns_probabilities(tmp_path: Path) -> None:
    model = DNNClassifier(_seq(), lr=0.01)
    trainer = _trainer(tmp_path)
    for loader in (_loader(X_VAL), _loader(X_VAL, Y_VAL)):  # x alone, or (x, y)
        batches = trainer.predict(model, loader)
        assert batches is not None
        probs = torch.cat(batches)  # type: ignore[arg-type]
        assert probs.shape == (len(X_VAL), CLASSES)
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(X_VAL)))
        with torch.no_grad():
            torch.testing.assert_close(probs, torch.softmax(model.net(X_VAL), dim=1))


# ----------------------------------------------------------------------------------------------- optimizers
def test_optimizer_by_name_with_kwargs() -> None:
    opt = DNNClassifier(_seq(), optimizer="momentum", lr=0.05).configure_optimizers()
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["lr"] == 0.05 and opt.defaults["momentum"] == 0.9
    opt = DNNClassifier(
        _seq(), optimizer="adam", lr=0.002, optimizer_kwargs={"betas": (0.8, 0.99)}
    ).configure_optimizers()
    assert (
        type(opt) is torch.optim.Adam and opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["lr"] == 0.002
    )
    opt = DNNClassifier(
        _seq(), optimizer="ftrl", lr=0.1, optimizer_kwargs={"l1": 0.01}
    ).configure_optimizers()
    assert type(opt) is FTRL and opt.defaults["l1"] == 0.01


def test_optimizer_callable_and_class_path() -> None:
    model = DNNClassifier(_seq(), optimizer=functools.partial(torch.optim.SGD, lr=0.3, momentum=0.5))
    opt = model.configure_optimizers()
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.3 and opt.defaults["momentum"] == 0.5
    assert model.hparams["optimizer"] == {
        "class_path": "torch.optim.sgd.SGD",
        "init_args": {"lr": 0.3, "momentum": 0.5},
    }

    spec = {"class_path": "torch.optim.RMSprop", "init_args": {"lr": 0.01, "alpha": 0.9}}
    opt = DNNClassifier(_seq(), optimizer=spec).configure_optimizers()
    assert type(opt) is torch.optim.RMSprop and opt.defaults["alpha"] == 0.9

    model = DNNClassifier(_seq(), optimizer=lambda params: torch.optim.Adagrad(params, lr=0.2))
    assert type(model.configure_optimizers()) is torch.optim.Adagrad
    assert model.hparams["optimizer"] is None  # a lambda cannot be stored

    with pytest.raises(TypeError, match=r"must return a torch\.optim\.Optimizer"):
        DNNClassifier(_seq(), optimizer=lambda params: 3).configure_optimizers()


def test_frozen_parameters_are_left_out_of_the_optimizer() -> None:
    net = _seq()
    net[0].requires_grad_(False)
    opt = DNNClassifier(net).configure_optimizers()
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(net[2].weight), id(net[2].bias)}


def test_ftrl_l1_gives_exact_zeros(tmp_path: Path) -> None:
    def zeros(optimizer_kwargs: dict[str, float]) -> tuple[float, float]:
        model = DNNClassifier(_seq(), optimizer="ftrl", lr=0.5, optimizer_kwargs=optimizer_kwargs)
        trainer = _trainer(tmp_path, max_epochs=3)
        trainer.fit(model, _loader(X_TRAIN, Y_TRAIN, shuffle=True))
        w = model.net[0].weight
        return (w == 0).float().mean().item(), trainer.callback_metrics["train_acc"].item()

    sparse, acc = zeros({"l1": 0.05})
    dense, _ = zeros({})
    assert sparse > 0.5 and dense == 0.0
    assert acc > 0.9


# ------------------------------------------------------------------------------------------------ schedules
@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"name": "exponential", "decay_steps": 4, "decay_rate": 0.5}, lambda t: 0.1 * 0.5 ** (t / 4)),
        (
            {"name": "exponential", "decay_steps": 4, "decay_rate": 0.5, "staircase": True},
            lambda t: 0.1 * 0.5 ** (t // 4),
        ),
        ({"name": "power", "decay_steps": 2, "power": 1.0}, lambda t: 0.1 / (1 + t / 2)),
        (
            {"name": "piecewise_constant", "boundaries": [2, 5], "values": [0.1, 0.01, 0.001]},
            lambda t: 0.1 if t <= 2 else 0.01 if t <= 5 else 0.001,
        ),
    ],
)
def test_step_schedules_follow_closed_form(tmp_path: Path, schedule: dict[str, Any], expected: Any) -> None:
    model = DNNClassifier(_seq(), optimizer="sgd", lr=0.1, lr_schedule=schedule)
    lrs = _LrRecorder()
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[lrs])
    trainer.fit(model, _loader(X_TRAIN[:200], Y_TRAIN[:200]))  # 4 steps per epoch, 8 in all
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert lrs.lrs == pytest.approx([expected(t) for t in range(8)], rel=1e-6)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected(8), rel=1e-6)


def test_epoch_schedule_callable_and_class_path(tmp_path: Path) -> None:
    step_lr = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    model = DNNClassifier(_seq(), optimizer="sgd", lr=0.1, lr_schedule=step_lr)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, _loader(X_TRAIN[:100], Y_TRAIN[:100]))
    assert trainer.lr_scheduler_configs[0].interval == "epoch"
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)

    spec = {
        "class_path": "torch.optim.lr_scheduler.StepLR",
        "init_args": {"step_size": 3, "gamma": 0.1},
        "interval": "step",
    }
    model = DNNClassifier(_seq(), optimizer="sgd", lr=0.1, lr_schedule=spec)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, _loader(X_TRAIN[:100], Y_TRAIN[:100]))  # 2 steps per epoch: 4 steps
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.1)


def test_performance_schedule_monitors_val_metric(tmp_path: Path) -> None:
    schedule = {"name": "performance", "monitor": "val_acc", "mode": "max", "patience": 0, "factor": 0.5}
    model = DNNClassifier(_seq(), optimizer="sgd", lr=0.05, lr_schedule=schedule)
    recorder = _EpochRecorder()
    trainer = _trainer(tmp_path, max_epochs=4, callbacks=[recorder])
    trainer.fit(model, _loader(X_TRAIN, Y_TRAIN), _loader(X_VAL, Y_VAL))
    config = trainer.lr_scheduler_configs[0]
    assert (config.interval, config.monitor) == ("epoch", "val_acc")
    # replay the logged val_acc sequence into torch's own ReduceLROnPlateau
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, mode="max", patience=0, factor=0.5)
    for epoch in recorder.epochs:
        plateau.step(epoch["val_acc"])
    assert trainer.optimizers[0].param_groups[0]["lr"] == reference.param_groups[0]["lr"]


def test_performance_schedule_default_monitor(tmp_path: Path) -> None:
    model = DNNClassifier(_seq(), optimizer="sgd", lr=0.05, lr_schedule="performance")
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, _loader(X_TRAIN[:100], Y_TRAIN[:100]))  # no validation loop: falls back to train_loss
    assert trainer.lr_scheduler_configs[0].monitor == "train_loss"
    trainer = _trainer(tmp_path, max_epochs=2, check_val_every_n_epoch=2)
    trainer.fit(model, _loader(X_TRAIN[:100], Y_TRAIN[:100]), _loader(X_VAL, Y_VAL))
    config = trainer.lr_scheduler_configs[0]
    assert (config.monitor, config.frequency) == ("val_loss", 2)


# ---------------------------------------------------------------------------------------------- checkpoints
def _eval_logits(model: DNNClassifier) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(X_VAL)


def test_checkpoint_rebuilds_mlp_without_net(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = MLP(IN, (16, 8), CLASSES, norm="batch", activation="leaky_relu")
    model = DNNClassifier(
        net, optimizer=functools.partial(torch.optim.SGD, lr=0.05), lr_schedule="performance"
    )
    trainer = _trainer(tmp_path)
    trainer.fit(model, _loader(X_TRAIN, Y_TRAIN))
    path = tmp_path / "mlp.ckpt"
    trainer.save_checkpoint(path)

    loaded = DNNClassifier.load_from_checkpoint(path, weights_only=True)
    assert isinstance(loaded.net, MLP) and loaded.net.config == net.config
    torch.testing.assert_close(_eval_logits(loaded), _eval_logits(model), rtol=0, atol=0)
    assert loaded.net.hidden1.bn.running_mean.abs().sum() > 0  # batch-norm statistics came back too
    opt = loaded.configure_optimizers()
    assert type(opt["optimizer"]) is torch.optim.SGD and opt["optimizer"].defaults["lr"] == 0.05


def test_checkpoint_of_arbitrary_net_needs_net(tmp_path: Path) -> None:
    model = DNNClassifier(_seq(), lr=0.01)
    trainer = _trainer(tmp_path)
    trainer.fit(model, _loader(X_TRAIN, Y_TRAIN))
    path = tmp_path / "seq.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(TypeError, match=r"load_from_checkpoint\(path, net=MyNet\(\)\)"):
        DNNClassifier.load_from_checkpoint(path, weights_only=True)
    loaded = DNNClassifier.load_from_checkpoint(path, net=_seq(seed=1), weights_only=True)
    torch.testing.assert_close(_eval_logits(loaded), _eval_logits(model), rtol=0, atol=0)


def test_lightning_cli_config_and_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pytorch_lightning.cli import LightningCLI

    monkeypatch.setattr(sys, "argv", ["lightning-dnn"])
    caplog.set_level("INFO")

    config = {
        "model": {
            "net": {
                "class_path": "lightning_dnn.nn.MLP",
                "init_args": {"in_features": IN, "hidden": [16], "out_features": CLASSES},
            },
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
            "lr_schedule": {"name": "exponential", "decay_steps": 10, "decay_rate": 0.5},
            "l2": 1e-4,
        },
        "trainer": {
            "max_epochs": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
            "accelerator": "cpu",
        },
    }
    cli = LightningCLI(DNNClassifier, run=False, args=config, save_config_callback=None)
    assert isinstance(cli.model.net, MLP) and cli.model.num_classes == CLASSES
    assert "cannot be stored" not in caplog.text  # LightningCLI's optimizer callable is described
    cli.trainer.fit(cli.model, _loader(X_TRAIN, Y_TRAIN))
    assert type(cli.trainer.optimizers[0]) is torch.optim.SGD
    assert cli.trainer.lr_scheduler_configs[0].interval == "step"
    path = tmp_path / "cli.ckpt"
    cli.trainer.save_checkpoint(path)

    loaded = DNNClassifier.load_from_checkpoint(path, weights_only=True)
    assert isinstance(loaded.net, MLP)
    torch.testing.assert_close(_eval_logits(loaded), _eval_logits(cli.model), rtol=0, atol=0)
    opt = loaded.configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9


def test_net_without_jsonable_config_is_not_stored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    model = DNNClassifier(MLP(4, (5,), 3, activation=nn.ReLU()))  # a module activation: no JSON config
    assert model.hparams["net"] is None
    assert "load_from_checkpoint(path, net=...)" in caplog.text


def test_net_from_class_path_mapping() -> None:
    spec = {
        "class_path": "lightning_dnn.nn.MLP",
        "init_args": {"in_features": 4, "hidden": [5], "out_features": 3},
    }
    model = DNNClassifier(spec)
    assert isinstance(model.net, MLP) and model.num_classes == 3
    assert model.hparams["net"] == spec


# -------------------------------------------------------------------------------------------- num_classes
def test_num_classes_inference() -> None:
    assert DNNClassifier(_seq()).num_classes == CLASSES  # last Linear
    assert DNNClassifier(MLP(4, (5,), 7, norm="batch", output_norm=True)).num_classes == 7  # net.out_features
    assert DNNClassifier(nn.Sequential(nn.Flatten(), nn.LazyLinear(4)), num_classes=4).num_classes == 4


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"net": "mlp"}, TypeError, r"`net` must be a torch.nn.Module"),
        ({"net": {"init_args": {}}}, ValueError, r"needs a 'class_path'"),
        ({"net": {"class_path": "not_imported_pkg.Net"}}, ValueError, r"import its module first"),
        ({"net": {"class_path": "torch.optim.SGD"}}, TypeError, r"must name a subclass of Module"),
        ({"lr": 0}, ValueError, r"`lr` must be > 0"),
        ({"lr": -1e-3}, ValueError, r"`lr` must be > 0"),
        ({"l1": -0.1}, ValueError, r"`l1` must be >= 0"),
        ({"l2": -1}, ValueError, r"`l2` must be >= 0"),
        ({"num_classes": 1}, ValueError, r"`num_classes` must be >= 2"),
        ({"num_classes": 2.5}, TypeError, r"`num_classes` must be an integer"),
        ({"net": MLP(4, 5, 3), "num_classes": 5}, ValueError, r"does not match the network's out_features=3"),
        ({"optimizer": "adamm"}, ValueError, r"Unknown optimizer 'adamm'. Did you mean 'adam'"),
        ({"optimizer": 3}, TypeError, r"`optimizer` must be an optimizer name"),
        (
            {"optimizer_kwargs": {"momentun": 0.9}, "optimizer": "momentum"},
            TypeError,
            r"did you mean 'momentum'",
        ),
        ({"optimizer_kwargs": [1]}, TypeError, r"`optimizer_kwargs` must be a mapping"),
        ({"optimizer_kwargs": {"lr": 0.1}}, ValueError, r"pass the learning rate as `lr=`"),
        (
            {"optimizer": torch.optim.SGD, "optimizer_kwargs": {"momentum": 0.9}},
            ValueError,
            r"only applies to an optimizer given by name",
        ),
        ({"lr_schedule": "exponentail"}, ValueError, r"Did you mean 'exponential'"),
        ({"lr_schedule": "exponential"}, TypeError, r"`lr_schedule`: .*decay_steps"),
        (
            {"lr_schedule": {"name": "exponential", "decay_steps": -1, "decay_rate": 0.5}},
            ValueError,
            r"`decay_steps` must be > 0",
        ),
        ({"lr_schedule": {"decay_steps": 10}}, ValueError, r"needs a 'name'"),
        (
            {"lr_schedule": {"name": "performance", "interval": "batch"}},
            ValueError,
            r"`lr_schedule\['interval'\]` must be one of",
        ),
        ({"lr_schedule": 0.1}, TypeError, r"`lr_schedule` must be None, a schedule name"),
        ({"l1": 0.1, "penalty_pattern": "nothing_here"}, ValueError, r"selects no module"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    kwargs = {"net": _seq(), **kwargs}
    with pytest.raises(error, match=match):
        DNNClassifier(**kwargs)


def test_num_classes_not_inferable() -> None:
    with pytest.raises(ValueError, match="cannot be inferred"):
        DNNClassifier(nn.Sequential(nn.Conv1d(1, 3, 1), nn.Flatten()))
    with pytest.raises(ValueError, match="needs >= 2 classes"):
        DNNClassifier(nn.Linear(3, 1))


def test_bad_batch_is_explained(tmp_path: Path) -> None:
    model = DNNClassifier(_seq())
    with pytest.raises(ValueError, match=r"expects batches `\(x, y\)`"):
        _trainer(tmp_path, max_steps=1).fit(model, _loader(X_TRAIN))


def test_caller_arguments_are_not_mutated() -> None:
    kwargs = {"momentum": 0.5}
    schedule = {"name": "performance", "monitor": "val_acc", "mode": "max"}
    model = DNNClassifier(_seq(), optimizer="sgd", optimizer_kwargs=kwargs, lr_schedule=schedule)
    assert kwargs == {"momentum": 0.5} and schedule == {
        "name": "performance",
        "monitor": "val_acc",
        "mode": "max",
    }
    assert math.isclose(model.lr, 1e-3)
    assert model.hparams["lr_schedule"] == schedule


def test_reloaded_model_without_stored_optimizer_explains(tmp_path: Path) -> None:
    model = DNNClassifier(MLP(IN, (4,), CLASSES), optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model, _loader(X_TRAIN, Y_TRAIN))
    path = tmp_path / "lambda.ckpt"
    trainer.save_checkpoint(path)
    loaded = DNNClassifier.load_from_checkpoint(path, weights_only=True)
    torch.testing.assert_close(_eval_logits(loaded), _eval_logits(model))
    with pytest.raises(ValueError, match="has no optimizer"):
        loaded.configure_optimizers()
    reloaded = DNNClassifier.load_from_checkpoint(path, optimizer="sgd", lr=0.1, weights_only=True)
    assert type(reloaded.configure_optimizers()) is torch.optim.SGD


def test_penalty_pattern_narrows_the_penalty() -> None:
    net = _seq()
    model = DNNClassifier(net, l2=0.5, penalty_pattern="net.2")
    expected = 0.5 * net[2].weight.pow(2).sum()
    torch.testing.assert_close(model.penalty(model), expected)
    _ = copy.deepcopy(model)  # the model stays copyable (weak cache)


@pytest.mark.ddp
def test_ddp_logs_global_values(tmp_path: Path) -> None:
    """Two CPU processes: the logged val values are those of the whole validation set, not of one shard."""
    model = DNNClassifier(_seq(), optimizer="sgd", lr=0.05, l2=1e-3)
    trainer = _trainer(tmp_path, strategy="ddp_spawn", devices=2, max_epochs=1)
    trainer.fit(model, _loader(X_TRAIN, Y_TRAIN), _loader(X_VAL, Y_VAL))  # the weights come back after fit
    with torch.no_grad():
        logits = model.eval().net(X_VAL)
    metrics = trainer.callback_metrics
    assert metrics["val_loss"].item() == pytest.approx(F.cross_entropy(logits, Y_VAL).item(), rel=1e-5)
    assert metrics["val_acc"].item() == pytest.approx((logits.argmax(1) == Y_VAL).float().mean().item())
    assert {"train_loss", "train_acc", "train_penalty"} <= set(metrics)


def test_train_acc_is_the_exact_accuracy_over_the_epoch(tmp_path):
    """train_acc is counted on the device in the training step: with a (practically) frozen net it must equal
    the plain accuracy of that net over every training sample, with a ragged last batch."""
    torch.manual_seed(0)
    x, y = torch.randn(203, 5), torch.randint(0, 3, (203,))
    net = nn.Linear(5, 3)
    expected = (net(x).argmax(1) == y).float().mean().item()
    model = DNNClassifier(net, optimizer="sgd", lr=1e-30)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    trainer = _trainer(tmp_path)
    trainer.fit(model, loader)
    assert trainer.callback_metrics["train_acc"].item() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------ hand-loop parity
def test_trainer_run_equals_a_hand_written_loop_bit_for_bit(tmp_path: Path) -> None:
    """Same weights, batches and dropout masks: DNNClassifier under a Trainer does the plain loop's arithmetic."""
    from lightning_dnn.data import ArrayDataModule

    torch.manual_seed(0)
    x, y = torch.rand(300, 12), torch.randint(0, 4, (300,))
    net = MLP(12, (16, 8), 4, activation="elu", norm="batch", bn_momentum=0.01, dropout=0.2)
    hand = copy.deepcopy(net)
    data = ArrayDataModule(x, y, batch_size=32, seed=5, scaling=None)
    data.setup("fit")
    loader = data.train_dataloader()
    orders = [loader.sampler.indices(epoch) for epoch in range(3)]

    class Reseed(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            torch.manual_seed(123)

    model = DNNClassifier(net, optimizer="adam", lr=1e-2)
    _trainer(tmp_path, max_epochs=3, callbacks=[Reseed()]).fit(model, datamodule=data)

    opt = torch.optim.Adam(hand.parameters(), lr=1e-2)
    torch.manual_seed(123)
    hand.train()
    for order in orders:
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            loss = F.cross_entropy(hand(x.index_select(0, idx)), y.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    assert model.trainer.global_step == 30  # 3 epochs of ceil(300 / 32) batches
    for (name, a), b in zip(net.state_dict().items(), hand.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
