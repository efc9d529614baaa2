"""LayerFreezer phases: metric-driven steps, restore-best, per-step lr and layer decay, scheduler restarts, the
automatic schedule, user param groups (timm's layer decay), the head's ancestors, ``dry_run`` and the CLI form."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn

from lightning_dnn.callbacks.freezing import LayerFreezer, PlannedStep
from tests.callbacks.test_freezing import EpochSnapshots, LrRecorder, Net, loader, snapshot, trainer

# ------------------------------------------------------------------------------------------ metric phases --


class Scripted(Net):
    """Logs a scripted validation ``score`` per epoch (the metric the phases follow)."""

    def __init__(self, scores: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scores = scores

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("score", self.scores[self.current_epoch])


def reference_triggers(scores: list[float], patience: int, min_delta: float, mode: str) -> list[int]:
    """The epochs whose validation makes the next step due: a plain loop over the plateau rule."""
    best = math.inf if mode == "min" else -math.inf
    wait, out = 0, []
    for epoch, score in enumerate(scores):
        better = score < best - min_delta if mode == "min" else score > best + min_delta
        if better:
            best, wait = score, 0
        else:
            wait += 1
            if wait >= patience:
                out.append(epoch)
                wait = 0
    return out


SCORES = [1.0, 0.8, 0.9, 0.95, 0.7, 0.75, 0.8, 0.85]


@pytest.mark.parametrize(
    ("scores", "patience", "min_delta", "mode"),
    [
        (SCORES, 2, 0.0, "min"),
        ([1.0, 0.96, 0.92, 0.91, 0.9, 0.5, 0.49, 0.48], 2, 0.05, "min"),
        ([0.1, 0.3, 0.3, 0.2, 0.5, 0.5, 0.9, 0.9], 1, 0.0, "max"),
    ],
    ids=["min", "min_delta", "max-patience1"],
)
def test_metric_milestones_advance_after_patience_checks_without_improvement(
    tmp_path: Path, scores: list[float], patience: int, min_delta: float, mode: str
) -> None:
    steps = ["hidden3", "hidden2", "hidden1"]
    freezer = LayerFreezer(
        "hidden[1-3]",
        unfreeze=steps,
        milestones="metric",
        monitor="score",
        mode=mode,  # type: ignore[arg-type]
        patience=patience,
        min_delta=min_delta,
    )
    model = Scripted(scores)
    snaps = EpochSnapshots()
    t = trainer(tmp_path, [freezer, snaps], max_epochs=len(scores))
    init = snapshot(model)
    t.fit(model, loader(), loader(16, seed=1))

    due = [epoch + 1 for epoch in reference_triggers(scores, patience, min_delta, mode)]
    due = [e for e in due if e < len(scores)][: len(steps)]
    assert due, "the script must trigger at least one step"
    applied = freezer.state_dict()["unfrozen"]
    assert [rec["epoch"] for rec in applied] == due
    assert [g.get("name") for g in t.optimizers[0].param_groups] == [None] + [
        f"unfrozen-step{k}" for k in range(1, len(due) + 1)
    ]
    # each block is bit-identical until the epoch its step ran, and trains from then on
    states = [init, *snaps.states]
    for block, epoch in zip(steps, due, strict=False):
        prefix = f"net.{block}.linear.weight"
        assert torch.equal(states[epoch][prefix], init[prefix]), block
        assert not torch.equal(states[epoch + 1][prefix], init[prefix]), block


class StateAt(Callback):
    """The module's state dict at every validation end (before or after the callbacks listed ahead of it)."""

    def __init__(self) -> None:
        self.states: list[dict[str, Tensor]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.states.append(snapshot(pl_module))


def test_restore_best_loads_the_best_epochs_weights_before_advancing(tmp_path: Path) -> None:
    before, after = StateAt(), StateAt()
    freezer = LayerFreezer(
        "hidden[1-3]",
        unfreeze=["hidden3", "hidden2"],
        milestones="metric",
        monitor="score",
        patience=2,
        restore_best=True,
    )
    model = Scripted(SCORES)
    t = trainer(tmp_path, [before, freezer, after], max_epochs=len(SCORES))
    t.fit(model, loader(), loader(16, seed=1))
    # triggers at epochs 3 (best: epoch 1) and 6 (best: epoch 4); elsewhere the freezer leaves the weights alone
    assert reference_triggers(SCORES, 2, 0.0, "min") == [3, 6]
    for epoch, best in ((3, 1), (6, 4)):
        assert any(not torch.equal(before.states[epoch][k], v) for k, v in before.states[best].items())
        for key, value in before.states[best].items():  # parameters and batch-norm statistics
            assert torch.equal(after.states[epoch][key], value), (epoch, key)
    for epoch in (0, 1, 2, 4, 5, 7):
        for key, value in before.states[epoch].items():
            assert torch.equal(after.states[epoch][key], value), (epoch, key)
    state = freezer.state_dict()["metric"]
    assert state["best"] == pytest.approx(0.7, rel=1e-6) and state["best_epoch"] == 4
    assert torch.equal(state["best_weights"]["net.output.weight"], before.states[4]["net.output.weight"])


def metric_setup() -> tuple[Callable[[], Scripted], Callable[[], LayerFreezer]]:
    def model() -> Scripted:
        def scheduler(opt: torch.optim.Optimizer) -> dict[str, Any]:
            return {
                "scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.95**t),
                "interval": "step",
            }

        return Scripted(SCORES, optimizer=lambda ps: torch.optim.Adam(ps, lr=0.01), scheduler=scheduler)

    def freezer() -> LayerFreezer:
        return LayerFreezer(
            "hidden[1-3]",
            unfreeze=["hidden3", {"pattern": "hidden2", "lr": 0.003}],
            milestones="metric",
            monitor="score",
            patience=2,
            restore_best=True,
            layer_decay=0.5,
            reset_scheduler=True,
        )

    return model, freezer


def test_metric_phases_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    make_model, make_freezer = metric_setup()
    ckpts = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full_model = make_model()
    full = trainer(tmp_path, [make_freezer(), ckpts], max_epochs=len(SCORES), enable_checkpointing=True)
    full.fit(full_model, loader(), loader(16, seed=1))
    expected = snapshot(full_model)
    expected_groups = [(g.get("name"), g["lr"]) for g in full.optimizers[0].param_groups]
    assert [n for n, _ in expected_groups] == [None, "unfrozen-step1", "unfrozen-step2"]

    # epoch 3: the first step is decided (and the best weights restored) but not applied yet; epoch 5: between
    # the steps, with the best weights of epoch 4 in the checkpoint.
    for epoch in (1, 3, 5):
        model = make_model()
        t = trainer(tmp_path / f"resume{epoch}", [make_freezer()], max_epochs=len(SCORES))
        t.fit(model, loader(), loader(16, seed=1), ckpt_path=tmp_path / "ckpt" / f"epoch={epoch}.ckpt")
        got = snapshot(model)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (epoch, key)
        assert [(g.get("name"), g["lr"]) for g in t.optimizers[0].param_groups] == expected_groups


# ------------------------------------------------------------------------------- lr per step, layer decay --
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(layer_decay=0.5), [0.1, 0.05, 0.025, 0.007]),
        (dict(layer_decay=0.5, unfrozen_lr=0.02), [0.1, 0.01, 0.005, 0.007]),
        (dict(), [0.1, 0.1, 0.1, 0.007]),
    ],
    ids=["decay-of-lr0", "decay-of-unfrozen_lr", "no-decay"],
)
def test_step_lrs_and_layer_decay_give_the_documented_start_lrs(
    tmp_path: Path, kwargs: dict[str, Any], expected: list[float]
) -> None:
    # step k (from 1) starts at lr * layer_decay**k; a step's own lr is taken as is
    freezer = LayerFreezer(
        "hidden[1-3]", unfreeze={1: "hidden3", 2: "hidden2", 3: ("hidden1", 0.007)}, **kwargs
    )
    t = trainer(tmp_path, [freezer], max_epochs=4)
    model = Net()
    t.fit(model, loader())
    groups = t.optimizers[0].param_groups
    assert [g.get("name") for g in groups] == [None, "unfrozen-epoch1", "unfrozen-epoch2", "unfrozen-epoch3"]
    assert [g["lr"] for g in groups] == pytest.approx(expected, rel=1e-12)
    assert [s.lr if s.lr is not None else s.lr_factor * 0.1 for s in freezer.dry_run(Net())] == pytest.approx(
        expected[1:], rel=1e-12
    )


# ---------------------------------------------------------------------------------------- reset scheduler --
@pytest.mark.parametrize("kind", ["step", "lambda"])
def test_reset_scheduler_restarts_the_schedule_at_each_step(tmp_path: Path, kind: str) -> None:
    def scheduler(opt: torch.optim.Optimizer) -> dict[str, Any]:
        if kind == "step":
            return {
                "scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
                "interval": "epoch",
            }
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9**t), "interval": "step"}

    recorder = LrRecorder()
    freezer = LayerFreezer("hidden[23]", unfreeze={2: ("hidden3", 0.04), 3: "hidden2"}, reset_scheduler=True)
    t = trainer(tmp_path, [freezer, recorder], max_epochs=4)
    t.fit(Net(scheduler=scheduler), loader())
    # hand-computed: 4 optimizer steps per epoch; each step restarts every group from its initial lr
    f = 0.5 if kind == "step" else 0.9**4  # the decay over one epoch
    expected = [
        [0.1],
        [0.1 * f],
        [0.1, 0.04],  # epoch 2: restart; hidden3 starts at its own lr
        [
            0.1,
            0.04,
            0.1,
        ],  # epoch 3: restart again; hidden2 follows the first group (its lr at that point: 0.1)
        [0.1 * f, 0.04 * f, 0.1 * f],  # fit end
    ]
    assert len(recorder.lrs) == len(expected)
    for got, want in zip(recorder.lrs, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------------ auto schedule --
def test_auto_schedule_unfreezes_one_top_level_block_per_epoch_top_down(tmp_path: Path) -> None:
    freezer = LayerFreezer("hidden[1-3]", unfreeze="auto")
    plan = freezer.dry_run(Net())
    assert [(s.trigger, s.modules) for s in plan] == [
        (1, ("net.hidden3",)),
        (2, ("net.hidden2",)),
        (3, ("net.hidden1",)),
    ]
    assert plan[1].parameters == (
        "net.hidden2.linear.weight",
        "net.hidden2.linear.bias",
        "net.hidden2.bn.weight",
        "net.hidden2.bn.bias",
    )
    assert plan[1].numel == 8 * 8 + 8 + 8 + 8
    model = Net()
    snaps = EpochSnapshots()
    t = trainer(tmp_path, [freezer, snaps], max_epochs=4)
    init = snapshot(model)
    t.fit(model, loader())
    for epoch, block in ((1, "hidden3"), (2, "hidden2"), (3, "hidden1")):
        key = f"net.{block}.linear.weight"
        assert torch.equal((init if epoch == 1 else snaps.states[epoch - 2])[key], init[key])
        assert not torch.equal(snaps.states[epoch][key], init[key])


class WithTokens(nn.Module):
    """A network holding tensors itself next to its blocks (like timm's VisionTransformer's cls_token)."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(6))
        self.body = nn.Linear(6, 8)
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.output = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.blocks(self.body(x + self.token)))


def test_freeze_all_but_head_freezes_tensors_held_by_the_heads_ancestors(tmp_path: Path) -> None:
    model = Net(WithTokens())
    t = trainer(tmp_path, [LayerFreezer.freeze_all_but_head("output")], max_epochs=1)
    before = snapshot(model)
    t.fit(model, loader())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "net.output.weight",
        "net.output.bias",
    ]
    assert torch.equal(model.net.token, before["net.token"])
    # the automatic schedule unfreezes the token with the lowest block
    freezer = LayerFreezer.freeze_all_but_head(
        "output", unfreeze="auto", milestones="metric", monitor="score"
    )
    assert [s.modules for s in freezer.dry_run(Net(WithTokens()))] == [("net.blocks",), ("net", "net.body")]
    assert freezer.dry_run(Net(WithTokens()))[1].parameters == (
        "net.token",
        "net.body.weight",
        "net.body.bias",
    )


def test_freeze_all_but_head_covers_vit_cls_token_and_pos_embed() -> None:
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, depth=2)
    model = Net(vit)
    freezer = LayerFreezer.freeze_all_but_head(
        "head", unfreeze="auto", milestones="metric", monitor="val_loss"
    )
    plan = freezer.dry_run(model)
    assert [s.modules for s in plan] == [
        ("net.norm",),
        ("net.blocks",),
        ("net", "net.patch_embed"),
    ]
    assert {"net.cls_token", "net.pos_embed"} <= set(plan[-1].parameters)
    everything = {n for n, _ in model.named_parameters()}
    assert {n for s in plan for n in s.parameters} == everything - {"net.head.weight", "net.head.bias"}


# ----------------------------------------------------------------------------------- user param groups --
class TimmGroups(Net):
    """``configure_optimizers`` with timm's ``param_groups_layer_decay`` (which skips frozen parameters): each
    group's lr is ``0.1 * lr_scale``, as timm's schedulers apply it, and a LambdaLR moves every group."""

    def configure_optimizers(self) -> Any:
        from timm.optim import param_groups_layer_decay

        groups = param_groups_layer_decay(self.net, weight_decay=0.01, layer_decay=0.5)
        for group in groups:
            group["lr"] = 0.1 * group["lr_scale"]
        opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9**t)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def group_of(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, dict[str, Any]]:
    """Parameter name -> the hyper-parameters of the param group holding it."""
    ids = {id(p): n for n, p in model.named_parameters()}
    return {
        ids[id(p)]: {k: g[k] for k in ("lr", "weight_decay", "lr_scale")}
        for g in optimizer.param_groups
        for p in g["params"]
    }


@pytest.mark.parametrize(
    ("freeze", "unfreeze"),
    [
        # blocks.1 and norm (timm's layer 2), then blocks.0 (layer 1): groups the live optimizer lacks
        ("blocks|norm", {1: ["norm", r"blocks\.1"], 2: r"blocks\.0"}),
        # part of layer 2 and of the stem (layer 0): groups the live optimizer has, followed exactly
        (r"blocks\.1\.mlp|patch_embed", {1: r"blocks\.1\.mlp", 2: "patch_embed"}),
    ],
    ids=["missing-groups", "live-groups"],
)
def test_unfrozen_parameters_keep_the_lr_and_decay_of_the_users_param_groups(
    tmp_path: Path, freeze: str, unfreeze: dict[int, Any]
) -> None:
    timm = pytest.importorskip("timm")

    def vit() -> nn.Module:
        torch.manual_seed(0)
        return timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=2
        )

    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))), batch_size=4
    )
    reference = TimmGroups(vit())  # nothing frozen: every parameter in its timm group from the start
    ref = trainer(tmp_path / "ref", [], max_epochs=3)
    ref.fit(reference, data)
    expected = group_of(ref.optimizers[0], reference)
    assert len({v["lr_scale"] for v in expected.values()}) == 4  # stem, two blocks, head: 1/8 ... 1

    model = TimmGroups(vit())
    freezer = LayerFreezer(freeze, unfreeze=unfreeze)
    t = trainer(tmp_path / "frozen", [freezer], max_epochs=3)
    t.fit(model, data)
    got = group_of(t.optimizers[0], model)
    assert got.keys() == expected.keys()
    for name, settings in expected.items():  # same lr (after the same LambdaLR steps), decay and lr_scale
        assert got[name]["weight_decay"] == settings["weight_decay"], name
        assert got[name]["lr_scale"] == settings["lr_scale"], name
        assert got[name]["lr"] == pytest.approx(settings["lr"], rel=1e-12), name
    added = [g["name"] for g in t.optimizers[0].param_groups if "name" in g]
    assert len(added) == 4 and all(
        n.startswith(("unfrozen-epoch1/group", "unfrozen-epoch2/group")) for n in added
    )


# ------------------------------------------------------------------------------------------------ dry run --
def test_dry_run_lists_the_steps_and_leaves_the_module_alone() -> None:
    model = Net()
    freezer = LayerFreezer("hidden[1-3]", unfreeze={1: ("hidden3", 0.01), 4: "hidden[12]"})
    plan = freezer.dry_run(model)
    assert plan == [
        PlannedStep(
            0,
            1,
            "hidden3",
            ("net.hidden3",),
            ("net.hidden3.linear.weight", "net.hidden3.linear.bias"),
            72,
            0.01,
            1.0,
        ),
        PlannedStep(
            1,
            4,
            "hidden[12]",
            ("net.hidden1", "net.hidden2"),
            tuple(n for n, _ in model.named_parameters() if n.startswith(("net.hidden1.", "net.hidden2."))),
            6 * 8 + 8 + 8 + 8 + 8 * 8 + 8 + 8 + 8,
            None,
            1.0,
        ),
    ]
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("freezer", "error", "match"),
    [
        (
            lambda: LayerFreezer("hidden[12]", unfreeze={1: "nothing"}),
            ValueError,
            r"`unfreeze\[1\]` pattern 'nothing'",
        ),
        (
            lambda: LayerFreezer("hidden[12]", unfreeze={1: "output"}),
            ValueError,
            "unfreezes no frozen parameter",
        ),
        (
            lambda: LayerFreezer("hidden[123]", unfreeze={1: "hidden[23]", 2: "hidden[12]"}),
            ValueError,
            r"`unfreeze\[2\]`='hidden\[12\]' overlaps earlier steps \[0\]: it also selects net.hidden2",
        ),
        (
            lambda: LayerFreezer("hidden1", unfreeze=["hidden1"], milestones="metric", monitor="m"),
            None,
            None,
        ),
    ],
    ids=["selects-nothing", "already-trainable", "overlap", "valid"],
)
def test_dry_run_refuses_bad_schedules(
    freezer: Callable[[], LayerFreezer], error: type[Exception] | None, match: str | None
) -> None:
    if error is None:
        assert [s.modules for s in freezer().dry_run(Net())] == [("net.hidden1",)]
        return
    with pytest.raises(error, match=match):
        freezer().dry_run(Net())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(unfreeze=["hidden1"]), TypeError, "without an epoch"),
        (dict(unfreeze={1: ("hidden1", -0.1)}), ValueError, r"`unfreeze\[1\] lr` must be > 0"),
        (dict(unfreeze=[{"pattern": "hidden1", "epoch": 1, "lr": 0}]), ValueError, r"lr` must be > 0"),
        (
            dict(unfreeze=[{"pattern": "hidden1", "epoch": 1, "lrs": 0.1}]),
            ValueError,
            r"unknown keys \['lrs'\]",
        ),
        (
            dict(unfreeze=[{"pattern": "a", "epoch": 1}, {"pattern": "b", "epoch": 1}]),
            ValueError,
            "two steps at epoch 1",
        ),
        (dict(unfreeze={1: "hidden1"}, milestones="metric", monitor="m"), TypeError, "ordered list of steps"),
        (
            dict(unfreeze=[{"pattern": "h", "epoch": 2}], milestones="metric", monitor="m"),
            ValueError,
            "has an 'epoch'",
        ),
        (dict(unfreeze=["hidden1"], milestones="metric"), ValueError, "needs `monitor`"),
        (
            dict(unfreeze={1: "hidden1"}, monitor="m"),
            ValueError,
            "`monitor`='m' is used by milestones='metric' only",
        ),
        (dict(unfreeze={1: "hidden1"}, restore_best=True), ValueError, "`restore_best`=True is used by"),
        (
            dict(unfreeze=["h"], milestones="metric", monitor="m", patience=0),
            ValueError,
            "`patience` must be >= 1",
        ),
        (
            dict(unfreeze=["h"], milestones="metric", monitor="m", mode="up"),
            ValueError,
            "`mode` must be one of",
        ),
        (dict(unfreeze={1: "hidden1"}, layer_decay=1.5), ValueError, r"`layer_decay` must be <= 1"),
        (dict(unfreeze={1: "hidden1"}, layer_decay=0), ValueError, r"`layer_decay` must be > 0"),
        (dict(unfreeze={1: "hidden1"}, milestones="plateau"), ValueError, "`milestones` must be one of"),
        (dict(unfreeze="everything"), TypeError, "'auto'"),
        (dict(unfreeze={1: "hidden1"}, reset_scheduler="yes"), TypeError, "`reset_scheduler`"),
    ],
)
def test_bad_phase_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        LayerFreezer("hidden1", **kwargs)


def test_epochs_and_unfreeze_together_are_refused() -> None:
    with pytest.raises(ValueError, match=r"give `epochs` \(2\) or `unfreeze`"):
        LayerFreezer.freeze_all_but_head("output", 2, unfreeze="auto")


def test_a_monitor_that_is_not_logged_fails_naming_the_logged_metrics(tmp_path: Path) -> None:
    freezer = LayerFreezer("hidden1", unfreeze=["hidden1"], milestones="metric", monitor="val_acc")
    with pytest.raises(RuntimeError, match=r"monitors 'val_acc', which was not logged.*constant, val_loss"):
        trainer(tmp_path, [freezer]).fit(Net(), loader(), loader(16, seed=1))


# -------------------------------------------------------------------------------------------- CLI (YAML) --
def test_yaml_config_expresses_metric_steps_with_lrs(tmp_path: Path) -> None:
    from lightning_dnn.cli import DNNCLI

    config = tmp_path / "phases.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning_dnn.callbacks.LayerFreezer\n"
        "      init_args:\n"
        '        freeze: "hidden[12]"\n'
        "        milestones: metric\n"
        "        monitor: val_loss\n"
        "        patience: 1\n"
        "        layer_decay: 0.5\n"
        "        unfreeze:\n"
        "          - {pattern: hidden2, lr: 0.01}\n"
        "          - hidden1\n"
        "    - class_path: lightning_dnn.callbacks.LayerFreezer\n"
        "      init_args:\n"
        '        freeze: "hidden[12]"\n'
        "        unfreeze: {1: hidden2, 2: [hidden1, 0.001]}\n"
    )
    args = [
        "--model.net",
        "lightning_dnn.nn.MLP",
        "--model.net.in_features",
        "64",
        "--model.net.hidden",
        "[16, 8]",
    ]
    args += ["--model.net.out_features", "10", "--data", "lightning_dnn.data.DigitsDataModule"]
    cli = DNNCLI(
        args=["--config", str(config), *args, "--trainer.default_root_dir", str(tmp_path)], run=False
    )
    metric, epochs = [c for c in cli.trainer.callbacks if isinstance(c, LayerFreezer)]
    assert [(s.trigger, s.modules, s.lr, s.lr_factor) for s in metric.dry_run(cli.model)] == [
        ("metric", ("net.hidden2",), 0.01, 1.0),
        ("metric", ("net.hidden1",), None, 0.25),
    ]
    assert [(s.trigger, s.modules, s.lr) for s in epochs.dry_run(cli.model)] == [
        (1, ("net.hidden2",), None),
        (2, ("net.hidden1",), 0.001),
    ]


def test_state_key_tells_metric_freezers_apart() -> None:
    a = LayerFreezer("hidden1", unfreeze=["hidden1"], milestones="metric", monitor="val_loss")
    b = LayerFreezer("hidden1", unfreeze=["hidden1"], milestones="metric", monitor="val_acc", mode="max")
    assert a.state_key != b.state_key
    assert a.state_key == "LayerFreezer{'freeze': 'hidden1', 'unfreeze': ['hidden1'], 'monitor': 'val_loss'}"


# ------------------------------------------------------------------------- restart == a fresh scheduler --
RESTARTABLE: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "sequential": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o,
        [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=3),
            torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
        ],
        milestones=[3],
    ),
    "chained": lambda o: torch.optim.lr_scheduler.ChainedScheduler(
        [
            torch.optim.lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
            torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
        ]
    ),
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "multistep": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2, 4], gamma=0.3),
    "plateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=1),
}
METRICS = [1.0, 0.9, 0.95, 0.97, 0.99, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]


def step_scheduler(sched: Any, t: int) -> None:
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step(METRICS[t])
    else:
        sched.step()


@pytest.mark.parametrize("kind", list(RESTARTABLE))
def test_a_restarted_scheduler_matches_a_fresh_one_built_on_the_same_groups(kind: str) -> None:
    from lightning_dnn.callbacks._param_groups import add_param_group, restart_scheduler

    make = RESTARTABLE[kind]
    p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = make(opt)
    opt.param_groups[0].setdefault("initial_lr", 0.1)  # as LayerFreezer(reset_scheduler=True) does
    start = sched.state_dict()
    for t in range(5):  # a run in progress: the lr has moved and the plateau counters are set
        opt.step()
        step_scheduler(sched, t)
    group = add_param_group(opt, [q], name="new", lr=0.02, schedulers=[sched])
    group["initial_lr"] = 0.02  # LayerFreezer(reset_scheduler=True): the step's lr is the new group's start
    restart_scheduler(sched, start)

    fresh_opt = torch.optim.SGD(
        [{"params": [nn.Parameter(torch.zeros(1))]}, {"params": [q]}], lr=0.1, momentum=0.9
    )
    fresh_opt.param_groups[1]["lr"] = 0.02
    fresh = make(fresh_opt)
    for t in range(7):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(
            [g["lr"] for g in fresh_opt.param_groups], rel=1e-12
        ), t
        assert sched.get_last_lr() == pytest.approx(fresh.get_last_lr(), rel=1e-12), t
        for o, s in ((opt, sched), (fresh_opt, fresh)):
            o.step()
            step_scheduler(s, 5 + t)


# ------------------------------------------------------------------ user param groups: resume, exact lrs --
class TwoGroups(Net):
    """Weights and biases in two param groups with their own lr and weight decay (frozen ones left out)."""

    def configure_optimizers(self) -> Any:
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        opt = torch.optim.SGD(
            [
                {"params": [p for n, p in trainable if n.endswith("weight")], "weight_decay": 0.01},
                {"params": [p for n, p in trainable if n.endswith("bias")], "lr": 0.05},
            ],
            lr=0.1,
            momentum=0.9,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.95**t)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_user_groups_are_kept_through_a_resume(tmp_path: Path) -> None:
    def freezer() -> LayerFreezer:
        return LayerFreezer("hidden[23]", unfreeze={1: "hidden3", 2: "hidden2"})

    ckpts = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full_model = TwoGroups(make_bn_free_net())
    full = trainer(tmp_path, [freezer(), ckpts], max_epochs=3, enable_checkpointing=True)
    full.fit(full_model, loader(), loader(16, seed=1))
    groups = full.optimizers[0].param_groups
    assert [g.get("name") for g in groups] == [
        None,
        None,
        "unfrozen-epoch1/group0",
        "unfrozen-epoch1/group1",
        "unfrozen-epoch2/group0",
        "unfrozen-epoch2/group1",
    ]
    decay = 0.95 ** (3 * 4)  # 12 LambdaLR steps
    assert [g["lr"] for g in groups] == pytest.approx([0.1 * decay, 0.05 * decay] * 3, rel=1e-12)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0] * 3
    ids = {id(p): n for n, p in full_model.named_parameters()}
    assert [ids[id(p)] for p in groups[4]["params"] + groups[5]["params"]] == [
        "net.hidden2.linear.weight",
        "net.hidden2.linear.bias",
    ]
    expected = snapshot(full_model)
    for epoch in (0, 1):
        model = TwoGroups(make_bn_free_net())
        t = trainer(tmp_path / f"resume{epoch}", [freezer()], max_epochs=3)
        t.fit(model, loader(), loader(16, seed=1), ckpt_path=tmp_path / "ckpt" / f"epoch={epoch}.ckpt")
        got = snapshot(model)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (epoch, key)
        assert [(g.get("name"), g["lr"]) for g in t.optimizers[0].param_groups] == [
            (g.get("name"), g["lr"]) for g in groups
        ]


def make_bn_free_net() -> nn.Module:
    from tests.callbacks.test_freezing import make_net

    return make_net(bn=False)


def test_a_checkpoint_in_the_earlier_state_format_resumes(tmp_path: Path) -> None:
    from tests.callbacks.test_freezing import resume_setup

    make_model, make_freezer = resume_setup("lambda")
    ckpts = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full_model = make_model()
    full = trainer(tmp_path, [make_freezer(), ckpts], max_epochs=4, enable_checkpointing=True)
    full.fit(full_model, loader(), loader(16, seed=1))
    expected = snapshot(full_model)

    # before issue 15 a step was {"epoch", "modules", "group", "group_name"} and there was no metric state
    ckpt = torch.load(tmp_path / "ckpt" / "epoch=1.ckpt", weights_only=False)
    key = next(k for k in ckpt["callbacks"] if k.startswith("LayerFreezer"))
    state = ckpt["callbacks"][key]
    assert [len(r["groups"]) for r in state["unfrozen"]] == [1]
    ckpt["callbacks"][key] = {
        "frozen": state["frozen"],
        "unfrozen": [
            {
                "epoch": r["epoch"],
                "modules": r["modules"],
                "group": r["groups"][0]["params"],
                "group_name": r["groups"][0]["name"],
            }
            for r in state["unfrozen"]
        ],
    }
    torch.save(ckpt, tmp_path / "old.ckpt")
    model = make_model()
    t = trainer(tmp_path / "resume", [make_freezer()], max_epochs=4)
    t.fit(model, loader(), loader(16, seed=1), ckpt_path=tmp_path / "old.ckpt")
    got = snapshot(model)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_a_non_finite_metric_is_refused_rather_than_judged() -> None:
    from lightning_dnn.callbacks._phases import MetricPhases

    phases = MetricPhases("val_loss", "min", patience=1, min_delta=0.0, restore_best=False)
    assert phases.check(1.0, nn.Linear(1, 1)) is False
    with pytest.raises(ValueError, match="'val_loss' is nan; a plateau cannot be judged"):
        phases.check(float("nan"), nn.Linear(1, 1))


class LayerGroups(Net):
    """One param group per layer with its own lr (groups whose parameters are all frozen are left out)."""

    def __init__(self, scheduler: Callable[[torch.optim.Optimizer], Any] | None = None) -> None:
        super().__init__(make_bn_free_net())
        self.sched = scheduler

    def configure_optimizers(self) -> Any:
        lrs = {"hidden1": 0.01, "hidden2": 0.05, "hidden3": 0.1, "output": 0.1}
        groups = [
            {"params": [p for p in getattr(self.net, name).parameters() if p.requires_grad], "lr": lr}
            for name, lr in lrs.items()
        ]
        opt = torch.optim.SGD([g for g in groups if g["params"]], lr=0.1)
        return opt if self.sched is None else {"optimizer": opt, "lr_scheduler": self.sched(opt)}


def test_a_missing_user_group_is_rebuilt_at_its_lr_and_refused_with_a_scheduler_that_cannot_keep_it(
    tmp_path: Path,
) -> None:
    model = LayerGroups()
    t = trainer(tmp_path, [LayerFreezer("hidden1", unfreeze={1: "hidden1"})])
    t.fit(model, loader())
    groups = t.optimizers[0].param_groups
    assert [g.get("name") for g in groups] == [None, None, None, "unfrozen-epoch1"]
    assert [g["lr"] for g in groups] == pytest.approx([0.05, 0.1, 0.1, 0.01], rel=1e-12)

    def cosine(opt: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=0.001)

    snaps = EpochSnapshots()
    t = trainer(tmp_path, [LayerFreezer("hidden1", unfreeze={1: "hidden1"}), snaps])
    with pytest.raises(ValueError, match=r"`the user's param groups \(their lr ratios\)`: CosineAnnealingLR"):
        t.fit(LayerGroups(cosine), loader())
    assert not snaps.states  # refused at fit start, not at the step


def test_metric_phases_without_a_validation_loop_say_so(tmp_path: Path) -> None:
    freezer = LayerFreezer("hidden1", unfreeze=["hidden1"], milestones="metric", monitor="val_loss")
    model = Net()
    with pytest.warns(
        UserWarning, match=r"saw no validation run in this fit, so 'val_loss' was never checked"
    ):
        trainer(tmp_path, [freezer]).fit(model, loader())  # no val_dataloaders
    assert not model.net.hidden1.linear.weight.requires_grad
    # `trainer.validate` outside a fit leaves the phases alone
    before = freezer.state_dict()
    trainer(tmp_path, [freezer]).validate(model, loader(16, seed=1), verbose=False)
    assert freezer.state_dict()["metric"] == before["metric"]


class BackboneHeadGroups(Net):
    """Backbone (hidden1-3) at lr 0.01, head at 0.1; the backbone's group is empty while it is frozen."""

    def __init__(self) -> None:
        super().__init__(make_bn_free_net())

    def configure_optimizers(self) -> Any:
        def trainable(module: nn.Module) -> list[nn.Parameter]:
            return [p for p in module.parameters() if p.requires_grad]

        backbone = [p for name in ("hidden1", "hidden2", "hidden3") for p in trainable(getattr(self.net, name))]
        groups = [{"params": backbone, "lr": 0.01}, {"params": trainable(self.net.output), "lr": 0.1}]
        return torch.optim.SGD([g for g in groups if g["params"]], lr=0.1, momentum=0.9)


def test_a_user_group_emptied_by_freezing_keeps_its_lr_when_its_parameters_are_unfrozen(tmp_path: Path) -> None:
    # the live optimizer has ONE group (the head's, lr 0.1): the backbone's lr 0.01 exists only in the user's code
    t = trainer(tmp_path, [LayerFreezer("hidden[1-3]", unfreeze={1: "hidden[1-3]"})])
    model = BackboneHeadGroups()
    t.fit(model, loader())
    groups = t.optimizers[0].param_groups
    assert [(g.get("name"), g["lr"]) for g in groups] == [(None, 0.1), ("unfrozen-epoch1", 0.01)]
    assert groups[1]["momentum"] == 0.9
    backbone = {id(p) for name in ("hidden1", "hidden2", "hidden3") for p in getattr(model.net, name).parameters()}
    assert {id(p) for p in groups[1]["params"]} == backbone


def test_a_rebuilt_user_group_keeps_its_ratio_under_one_cycle(tmp_path: Path) -> None:
    # OneCycleLR writes max_lr/min_lr on every group, also in the probe's discarded optimizer: the rebuilt group
    # must take them from the group it follows at its ratio, or its lr ends where the others' does
    def one_cycle(opt: torch.optim.Optimizer) -> Any:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=8)
        return {"scheduler": sched, "interval": "step"}

    t = trainer(tmp_path, [LayerFreezer("hidden1", unfreeze={1: "hidden1"}, layer_decay=0.5)])
    t.fit(LayerGroups(one_cycle), loader())  # 4 steps per epoch, 8 in all
    groups = t.optimizers[0].param_groups
    assert [g.get("name") for g in groups] == [None, None, None, "unfrozen-epoch1"]
    first, rebuilt = groups[0], groups[3]  # hidden2 (user lr 0.05) and hidden1 (user lr 0.01), decay 0.5
    for key in ("lr", "max_lr", "min_lr", "initial_lr"):
        assert rebuilt[key] == pytest.approx(first[key] * 0.2 * 0.5, rel=1e-9), key
