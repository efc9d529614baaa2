"""LayerFreezer: bit-identical frozen weights and BN statistics, named param groups, schedulers, resume, errors."""

from __future__ import annotations

import csv
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn.callbacks.freezing import LayerFreezer
from tests.trainer_utils import quiet_trainer

STEPS_PER_EPOCH = 4


def make_net(*, bn: bool = True, seed: int = 0) -> nn.Sequential:
    """hidden1..hidden3 blocks (linear [+ bn] + relu; no bn in hidden3) and an output layer, seeded init."""
    gen = torch.Generator().manual_seed(seed)

    def block(n_in: int, n_out: int, with_bn: bool) -> nn.Sequential:
        layers: OrderedDict[str, nn.Module] = OrderedDict(linear=nn.Linear(n_in, n_out))
        if with_bn:
            layers["bn"] = nn.BatchNorm1d(n_out)
        layers["act"] = nn.ReLU()
        return nn.Sequential(layers)

    net = nn.Sequential(
        OrderedDict(
            hidden1=block(6, 8, bn),
            hidden2=block(8, 8, bn),
            hidden3=block(8, 8, False),
            output=nn.Linear(8, 3),
        )
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


class Net(pl.LightningModule):
    """Any LightningModule: ``configure_optimizers`` keeps only trainable parameters unless ``all_params``."""

    def __init__(
        self,
        net: nn.Module | None = None,
        *,
        optimizer: Callable[[Any], torch.optim.Optimizer] = lambda ps: torch.optim.SGD(ps, lr=0.1),
        scheduler: Callable[[torch.optim.Optimizer], dict[str, Any]] | None = None,
        all_params: bool = False,
    ) -> None:
        super().__init__()
        self.net = net if net is not None else make_net()
        self.make_optimizer = optimizer
        self.make_scheduler = scheduler
        self.all_params = all_params
        self.modes: list[dict[str, bool]] = []  # per training step: module name -> training flag

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.modes.append({n: m.training for n, m in self.named_modules() if n})
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))
        self.log("constant", 1.0)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if self.all_params or p.requires_grad]
        opt = self.make_optimizer(params)
        if self.make_scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.make_scheduler(opt)}


def loader(n: int = 32, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def trainer(tmp_path: Path, callbacks: list[Callback], *, max_epochs: int = 2, **kwargs: Any) -> pl.Trainer:
    return quiet_trainer(
        tmp_path, **{"max_epochs": max_epochs, "num_sanity_val_steps": 0, "callbacks": callbacks, **kwargs}
    )


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class EpochSnapshots(Callback):
    """The model's state dict at the end of every training epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, Tensor]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.states.append(snapshot(pl_module))


def changed(a: dict[str, Tensor], b: dict[str, Tensor], prefix: str) -> dict[str, bool]:
    return {k: not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix)}


# ------------------------------------------------------------------------------------- frozen stays frozen --
class ZeroGradNotNone(Net):
    """Zeroes gradients in place (``set_to_none=False``), so trainable parameters always hold a gradient."""

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=False)


class TrainAfterValidation(Net):
    """Old-style code that puts the whole model back in train mode after validation."""

    def on_validation_model_train(self) -> None:
        self.trainer.model.train()


@pytest.mark.parametrize(
    ("module_cls", "optimizer"),
    [
        (Net, lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.5)),
        (ZeroGradNotNone, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.5)),
        (TrainAfterValidation, lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.5)),
    ],
    ids=["adamw", "sgd-set_to_none-False", "train-after-validation"],
)
def test_frozen_parameters_and_bn_statistics_are_bit_identical(
    tmp_path: Path, module_cls: type[Net], optimizer: Callable[[Any], torch.optim.Optimizer]
) -> None:
    # The optimizer holds every parameter (frozen ones included) and decays weights: frozen ones must not move.
    model = module_cls(optimizer=optimizer, all_params=True)
    before = snapshot(model)
    # Validation twice per epoch: the model is put back in train mode mid-epoch too.
    t = trainer(tmp_path, [LayerFreezer("hidden[12]")], val_check_interval=0.5)
    t.fit(model, loader(), loader(16, seed=1))
    after = snapshot(model)

    frozen = [k for k in before if k.startswith(("net.hidden1.", "net.hidden2."))]
    assert any(k.endswith("running_mean") for k in frozen) and any(
        k.endswith("num_batches_tracked") for k in frozen
    )
    for key in frozen:  # weights, biases, BN affine, running_mean/var, num_batches_tracked
        assert torch.equal(before[key], after[key]), key
    for key in ("net.hidden3.linear.weight", "net.output.weight", "net.output.bias"):
        assert not torch.equal(before[key], after[key]), key
    for name, param in model.named_parameters():
        assert param.requires_grad == (not name.startswith(("net.hidden1.", "net.hidden2."))), name
        if not param.requires_grad:
            assert param.grad is None, name
    # Frozen BN was in eval mode at every training step of both epochs (after each validation loop too, even
    # when the module puts everything back in train mode), the rest of the model in train mode.
    assert len(model.modes) == 2 * STEPS_PER_EPOCH
    for modes in model.modes:
        assert modes["net.hidden1.bn"] is False and modes["net.hidden2.bn"] is False
        assert modes["net.hidden3.linear"] is True and modes["net.hidden1.act"] is True


def test_bn_train_keeps_updating_statistics_of_frozen_layers(tmp_path: Path) -> None:
    model = Net()
    before = snapshot(model)
    trainer(tmp_path, [LayerFreezer("hidden1", bn="train")]).fit(model, loader(), loader(16, seed=1))
    after = snapshot(model)
    for key in ("net.hidden1.linear.weight", "net.hidden1.bn.weight", "net.hidden1.bn.bias"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["net.hidden1.bn.running_mean"], after["net.hidden1.bn.running_mean"])
    assert after["net.hidden1.bn.num_batches_tracked"].item() == 2 * STEPS_PER_EPOCH
    assert all(modes["net.hidden1.bn"] for modes in model.modes)


# --------------------------------------------------------------------------------------------- unfreezing --
def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class WithIdleParameter(Net):
    """Holds a trainable all-zero parameter that gets no gradient, so it is still all zeros at the milestone."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.idle = nn.Parameter(torch.zeros(8))


def test_unfreeze_adds_a_named_param_group_by_identity_and_lr_monitor_labels_it(tmp_path: Path) -> None:
    net = make_net(bn=False)
    with (
        torch.no_grad()
    ):  # equal by value to `idle`, already in the optimizer: a by-value dedupe would drop it
        net.hidden2.linear.bias.zero_()
    model = WithIdleParameter(net)
    snaps = EpochSnapshots()
    freezer = LayerFreezer("hidden[12]", unfreeze={1: "hidden2"}, unfrozen_lr=0.02)
    logger = CSVLogger(tmp_path, name="lr")
    t = trainer(
        tmp_path,
        [freezer, snaps, LearningRateMonitor(logging_interval="step")],
        max_epochs=3,
        logger=logger,
        log_every_n_steps=1,
    )
    init = snapshot(model)
    t.fit(model, loader())

    groups = t.optimizers[0].param_groups
    assert [g.get("name") for g in groups] == [None, "unfrozen-epoch1"]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in net.hidden2.parameters()]
    assert any(p is model.idle for p in groups[0]["params"])
    assert torch.equal(model.idle, torch.zeros(8))
    assert groups[0]["lr"] == 0.1 and groups[1]["lr"] == 0.02
    # hidden2 stays put during epoch 0, trains from epoch 1 on (its zero bias included); hidden1 never trains.
    s0, s1, s2 = snaps.states
    assert not any(changed(init, s0, "net.hidden2.").values())
    assert all(changed(s0, s1, "net.hidden2.").values()) and all(changed(s1, s2, "net.hidden2.").values())
    assert not any(changed(init, s2, "net.hidden1.").values())
    assert freezer.state_dict() == {
        "frozen": ["net.hidden1", "net.hidden1.act", "net.hidden1.linear"],
        "unfrozen": [
            {
                "step": 0,
                "epoch": 1,
                "modules": ["net.hidden2", "net.hidden2.act", "net.hidden2.linear"],
                "groups": [
                    {
                        "name": "unfrozen-epoch1",
                        "params": ["net.hidden2.linear.weight", "net.hidden2.linear.bias"],
                    }
                ],
            }
        ],
        "triggered": 0,
        "metric": None,
    }
    rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    new = [float(r["lr-SGD/unfrozen-epoch1"]) for r in rows if r.get("lr-SGD/unfrozen-epoch1")]
    assert new == [0.02] * (2 * STEPS_PER_EPOCH)


def test_parameters_already_in_the_optimizer_train_after_unfreezing_without_a_new_group(
    tmp_path: Path,
) -> None:
    model = Net(all_params=True)
    snaps = EpochSnapshots()
    t = trainer(tmp_path, [LayerFreezer("hidden3", unfreeze={1: "hidden3"}), snaps])
    init = snapshot(model)
    t.fit(model, loader())
    assert len(t.optimizers[0].param_groups) == 1
    assert not any(changed(init, snaps.states[0], "net.hidden3.").values())
    assert all(changed(snaps.states[0], snaps.states[1], "net.hidden3.").values())


def test_freeze_all_but_head_trains_the_head_then_everything(tmp_path: Path) -> None:
    model = Net()
    snaps = EpochSnapshots()
    t = trainer(tmp_path, [LayerFreezer.freeze_all_but_head("output", epochs=1), snaps])
    init = snapshot(model)
    t.fit(model, loader(), loader(16, seed=1))
    s0, s1 = snaps.states
    body = [k for k in init if not k.startswith("net.output.")]
    assert all(torch.equal(init[k], s0[k]) for k in body)  # BN statistics included
    assert all(changed(init, s0, "net.output.").values())
    # (hidden1's linear bias feeds batch norm: its gradient is exactly zero, so it is not checked)
    assert all(changed(s0, s1, "net.hidden1.linear.weight").values()) and all(
        changed(s0, s1, "net.hidden1.bn.").values()
    )
    assert all(not modes["net.hidden1.bn"] for modes in model.modes[:STEPS_PER_EPOCH])
    assert all(modes["net.hidden1.bn"] for modes in model.modes[STEPS_PER_EPOCH:])
    groups = t.optimizers[0].param_groups
    assert [g.get("name") for g in groups] == [None, "unfrozen-epoch1"]
    assert {id(p) for p in groups[1]["params"]} == {
        id(p) for n, p in model.named_parameters() if not n.startswith("net.output.")
    }


def test_freeze_all_but_head_without_epochs_never_unfreezes(tmp_path: Path) -> None:
    model = Net()
    t = trainer(tmp_path, [LayerFreezer.freeze_all_but_head(["output", "hidden3"])])
    t.fit(model, loader())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "net.hidden3.linear.weight",
        "net.hidden3.linear.bias",
        "net.output.weight",
        "net.output.bias",
    ]


# ---------------------------------------------------------------------------------------------- schedulers --
TOTAL_STEPS = 3 * STEPS_PER_EPOCH
SCHEDULERS: dict[str, tuple[Callable[[torch.optim.Optimizer], Any], str]] = {
    "lambda": (lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.9**t), "step"),
    "multiplicative": (lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, lambda t: 0.95), "step"),
    "step": (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5), "epoch"),
    "exponential": (lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8), "epoch"),
    "plateau": (
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0, min_lr=[0.04]),
        "epoch",
    ),
    "onecycle": (
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=TOTAL_STEPS + 1),
        "step",
    ),
    "cyclic": (
        lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3),
        "step",
    ),
    "sequential": (
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=3),
                torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
            ],
            milestones=[3],
        ),
        "step",
    ),
}


def reference_lrs(make: Callable[[torch.optim.Optimizer], Any], interval: str) -> list[float]:
    """The lr at the start of each of 3 epochs and at the end, from the same scheduler on a one-group optimizer."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = make(opt)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(3):
        for _ in range(STEPS_PER_EPOCH):
            opt.step()
            if interval == "step":
                sched.step()
        if interval == "epoch":
            sched.step(1.0) if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) else sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


class LrRecorder(Callback):
    """The lrs of every param group at the start of each epoch (after LayerFreezer's milestone) and at fit end."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lrs.append([float(g["lr"]) for g in trainer.optimizers[0].param_groups])

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_train_epoch_start(trainer, pl_module)


@pytest.mark.parametrize("kind", list(SCHEDULERS))
def test_attached_schedulers_keep_working_for_the_new_group(tmp_path: Path, kind: str) -> None:
    make, interval = SCHEDULERS[kind]

    def scheduler(opt: torch.optim.Optimizer) -> dict[str, Any]:
        return {"scheduler": make(opt), "interval": interval, "monitor": "constant"}

    model = Net(optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), scheduler=scheduler)
    recorder = LrRecorder()
    freezer = LayerFreezer("hidden3", unfreeze={1: "hidden3"}, unfrozen_lr=0.02)
    t = trainer(tmp_path, [freezer, recorder], max_epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(model, loader(), loader(16, seed=1))
    assert not [str(w.message) for w in caught if "LayerFreezer" in str(w.message)]

    # Group 0 follows the schedule exactly as on an optimizer nobody touched. The new group starts at
    # unfrozen_lr when added (epoch 1) and then keeps its ratio to group 0 through every scheduler step.
    ref = reference_lrs(make, interval)
    assert [lrs[0] for lrs in recorder.lrs] == pytest.approx(ref, rel=1e-12)
    assert len(recorder.lrs[0]) == 1
    assert recorder.lrs[1][1] == pytest.approx(0.02, rel=1e-12)
    ratio = 0.02 / recorder.lrs[1][0]
    for lrs in recorder.lrs[2:]:
        assert lrs[1] == pytest.approx(ratio * lrs[0], rel=1e-12)
    sched = t.lr_scheduler_configs[0].scheduler
    assert len(sched.get_last_lr()) == 2
    assert len(set(ref[1:])) > 1  # the schedule did change the lr after the milestone


def test_unfrozen_lr_with_a_scheduler_that_cannot_keep_the_ratio_fails_at_fit_start(tmp_path: Path) -> None:
    def scheduler(opt: torch.optim.Optimizer) -> dict[str, Any]:
        return {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=0.01)}

    model = Net(scheduler=scheduler)
    snaps = EpochSnapshots()
    t = trainer(tmp_path, [LayerFreezer("hidden3", unfreeze={1: "hidden3"}, unfrozen_lr=0.02), snaps])
    with pytest.raises(ValueError, match=r"`unfrozen_lr`: CosineAnnealingLR\(eta_min=0\.01\) anneals every"):
        t.fit(model, loader())
    assert not snaps.states  # refused before the first epoch, not at the milestone
    # without unfrozen_lr the new group follows the first one exactly, which any scheduler can do
    t = trainer(tmp_path, [LayerFreezer("hidden3", unfreeze={1: "hidden3"})])
    t.fit(Net(scheduler=scheduler), loader())
    lrs = [g["lr"] for g in t.optimizers[0].param_groups]
    assert len(lrs) == 2 and lrs[0] == lrs[1]


# -------------------------------------------------------------------------------------------------- resume --
def resume_setup(kind: str) -> tuple[Callable[[], Net], Callable[[], LayerFreezer]]:
    def scheduler(opt: torch.optim.Optimizer) -> dict[str, Any]:
        if kind == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, min_lr=[1e-4])
            return {"scheduler": sched, "interval": "epoch", "monitor": "val_loss"}
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.95**t), "interval": "step"}

    def model() -> Net:
        return Net(optimizer=lambda ps: torch.optim.Adam(ps, lr=0.01), scheduler=scheduler)

    def freezer() -> LayerFreezer:
        return LayerFreezer("hidden[1-3]", unfreeze={1: "hidden3", 2: "hidden2"}, unfrozen_lr=0.005)

    return model, freezer


@pytest.mark.parametrize("kind", ["lambda", "plateau"])
def test_resume_before_and_after_a_milestone_matches_an_uninterrupted_run(tmp_path: Path, kind: str) -> None:
    make_model, make_freezer = resume_setup(kind)
    ckpts = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full_model = make_model()
    full = trainer(tmp_path, [make_freezer(), ckpts], max_epochs=4, enable_checkpointing=True)
    full.fit(full_model, loader(), loader(16, seed=1))
    expected = snapshot(full_model)
    expected_groups = [(g.get("name"), g["lr"]) for g in full.optimizers[0].param_groups]
    expected_opt = full.optimizers[0].state_dict()
    assert [name for name, _ in expected_groups] == [None, "unfrozen-epoch1", "unfrozen-epoch2"]

    for epoch in (0, 1):  # before the epoch-1 milestone; between the two milestones
        model = make_model()
        t = trainer(tmp_path / f"resume{epoch}", [make_freezer()], max_epochs=4)
        t.fit(model, loader(), loader(16, seed=1), ckpt_path=tmp_path / "ckpt" / f"epoch={epoch}.ckpt")
        got = snapshot(model)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (epoch, key)
        assert [(g.get("name"), g["lr"]) for g in t.optimizers[0].param_groups] == expected_groups
        state = t.optimizers[0].state_dict()["state"]
        assert state.keys() == expected_opt["state"].keys()
        for i, s in state.items():
            assert torch.equal(s["exp_avg_sq"], expected_opt["state"][i]["exp_avg_sq"]), (epoch, i)


# -------------------------------------------------------------------------------------------------- errors --
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(freeze=3), TypeError, "`freeze` must be a regex string"),
        (dict(freeze="hidden[1"), ValueError, "`freeze` contains an invalid regex"),
        (dict(freeze="hidden1", bn="frozen"), ValueError, "`bn` must be one of"),
        (dict(freeze="hidden1", unfreeze=["hidden1"]), TypeError, "`unfreeze` must be a dict"),
        (dict(freeze="hidden1", unfreeze={-1: "hidden1"}), ValueError, "`unfreeze key -1` must be >= 0"),
        (
            dict(freeze="hidden1", unfreeze={"2": "hidden1"}),
            TypeError,
            "`unfreeze key '2'` must be an integer",
        ),
        (dict(freeze="hidden1", unfreeze={True: "hidden1"}), TypeError, "must be an integer"),
        (dict(freeze="hidden1", unfreeze={1.0: "hidden1"}), TypeError, "must be an integer"),
        (dict(freeze="hidden1", unfreeze={1: 5}), TypeError, r"`unfreeze\[1\]` must be a regex"),
        (dict(freeze="hidden1", unfrozen_lr=0.0), ValueError, "`unfrozen_lr` must be > 0"),
        (dict(freeze="hidden1", unfrozen_lr=-1e-3), ValueError, "`unfrozen_lr` must be > 0"),
        (dict(freeze="hidden1", unfrozen_lr="0.1"), TypeError, "`unfrozen_lr` must be a real number"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        LayerFreezer(**kwargs)


def test_freeze_all_but_head_rejects_bad_epochs() -> None:
    with pytest.raises(ValueError, match="`epochs` must be >= 1"):
        LayerFreezer.freeze_all_but_head("output", epochs=0)
    with pytest.raises(TypeError, match="`head` must be a regex"):
        LayerFreezer.freeze_all_but_head(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("freezer", "match"),
    [
        (
            lambda: LayerFreezer("hidden9"),
            r"`freeze` pattern 'hidden9' selects no module\. Available modules: net, ",
        ),
        (lambda: LayerFreezer(r"hidden[12]\.act"), "`freeze` selects modules without parameters"),
        (
            lambda: LayerFreezer("hidden1", unfreeze={1: "nothing"}),
            r"`unfreeze\[1\]` pattern 'nothing' selects no",
        ),
        (
            lambda: LayerFreezer("hidden1", unfreeze={1: "output"}),
            r"`unfreeze\[1\]`=\['output'\] unfreezes no",
        ),
        (
            lambda: LayerFreezer("hidden[12]", unfreeze={1: "hidden2", 3: "hidden2"}),
            r"`unfreeze\[3\]`=\['hidden2'\] unfreezes no frozen parameter.*Frozen at epoch 3: net.hidden1",
        ),
        (lambda: LayerFreezer.freeze_all_but_head("head"), r"`head` pattern 'head' selects no module"),
    ],
)
def test_selection_errors_fail_at_setup_naming_the_modules(
    tmp_path: Path, freezer: Callable[[], LayerFreezer], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        trainer(tmp_path, [freezer()]).fit(Net(), loader())


def test_patterns_never_match_deeper_suffixes(tmp_path: Path) -> None:
    # "linear" is the last component of net.hidden1.linear ...; the selection rule only drops the first one
    with pytest.raises(ValueError, match=r"`freeze` pattern 'linear' selects no module"):
        trainer(tmp_path, [LayerFreezer("linear")]).fit(Net(), loader())
    model = Net()
    trainer(tmp_path, [LayerFreezer(r"hidden1\.linear")]).fit(model, loader())
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == [
        "net.hidden1.linear.weight",
        "net.hidden1.linear.bias",
    ]


def test_unfreezing_a_parent_unfreezes_only_what_was_frozen(tmp_path: Path) -> None:
    # "net" also covers output (never frozen): allowed, and only the frozen hidden3 joins the new group.
    model = Net()
    t = trainer(tmp_path, [LayerFreezer("hidden3", unfreeze={1: "net"})])
    t.fit(model, loader())
    assert [id(p) for p in t.optimizers[0].param_groups[1]["params"]] == [
        id(p) for p in model.net.hidden3.parameters()
    ]
    assert all(p.requires_grad for p in model.parameters())


def test_named_parameter_optimizers_get_param_names_for_the_new_group(tmp_path: Path) -> None:
    def optimizer(_: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD([(n, p) for n, p in model.named_parameters() if p.requires_grad], lr=0.1)

    model = Net(optimizer=optimizer)
    t = trainer(tmp_path, [LayerFreezer("hidden3", unfreeze={1: "hidden3"})])
    t.fit(model, loader())
    new = t.optimizers[0].param_groups[1]
    assert new["param_names"] == ["net.hidden3.linear.weight", "net.hidden3.linear.bias"]
    assert t.optimizers[0].state_dict()["param_groups"][1]["param_names"] == new["param_names"]


class WarmupLambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """A custom scheduler with a per-group list LayerFreezer cannot know about."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.warmup_lrs = [0.01] * len(optimizer.param_groups)
        super().__init__(optimizer, lambda t: 1.0)


def test_unknown_per_group_scheduler_lists_are_reported(tmp_path: Path) -> None:
    model = Net(scheduler=lambda opt: {"scheduler": WarmupLambdaLR(opt), "interval": "step"})
    t = trainer(tmp_path, [LayerFreezer("hidden3", unfreeze={1: "hidden3"})])
    with pytest.warns(UserWarning, match=r"WarmupLambdaLR keeps per-param-group lists \['warmup_lrs'\]"):
        t.fit(model, loader())
