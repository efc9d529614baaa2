"""LayerFreezer, MaxNorm and GradientClipping on layers that the LightningModule creates in ``configure_model``.

Lightning calls the callbacks' ``setup`` before ``configure_model`` and wraps the model (DDP, FSDP) right after it;
the layers must be found all the same, and LayerFreezer must freeze them before the wrap.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import Tensor, nn

from lightning_dnn.callbacks._configure_model import after_configure_model
from lightning_dnn.callbacks.freezing import LayerFreezer
from lightning_dnn.callbacks.grad_clip import GradientClipping
from lightning_dnn.callbacks.max_norm import MaxNorm
from tests.callbacks._configure_model_ddp_script import LazyNet, Record, loader
from tests.ddp_utils import run_ddp_script
from tests.trainer_utils import quiet_trainer

HERE = Path(__file__).resolve().parent


class OptimizerAtFitStart(Callback):
    """The names of the parameters the optimizer holds at fit start (``configure_optimizers`` ran after the wrap)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        held = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        self.names = [n for n, p in pl_module.named_parameters() if id(p) in held]


class Grads(Callback):
    """Clones of the gradients at ``on_before_optimizer_step`` (before or after the callbacks listed ahead of it)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Tensor]] = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.steps.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})


def test_layer_freezer_freezes_layers_built_in_configure_model_before_the_optimizer(tmp_path: Path) -> None:
    model, record, held = LazyNet(), Record(), OptimizerAtFitStart()
    freezer = LayerFreezer("backbone", unfreeze={1: "backbone.fc2"}, unfrozen_lr=0.05)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[freezer, record, held])
    trainer.fit(model, loader(32))

    names = [n for n, _ in model.named_parameters()]
    assert record.requires_grad == {n: not n.startswith("backbone.") for n in names}
    assert held.names == ["head.weight", "head.bias"]  # `configure_optimizers` saw the frozen flags
    assert [g.get("name") for g in trainer.optimizers[0].param_groups] == [None, "unfrozen-epoch1"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        n: not n.startswith(("backbone.fc1.", "backbone.bn.")) for n in names
    }
    epoch0, epoch1 = record.epochs
    fresh = LazyNet()
    fresh.configure_model()
    initial = fresh.state_dict()
    for key in initial:  # the backbone (batch-norm statistics included) holds still in epoch 0
        if key.startswith("backbone."):
            assert torch.equal(epoch0[key], initial[key]), key
    assert not torch.equal(epoch0["head.weight"], initial["head.weight"])
    assert not torch.equal(epoch1["backbone.fc2.weight"], epoch0["backbone.fc2.weight"])
    assert torch.equal(epoch1["backbone.fc1.weight"], initial["backbone.fc1.weight"])
    assert torch.equal(epoch1["backbone.bn.running_mean"], initial["backbone.bn.running_mean"])
    assert "configure_model" not in model.__dict__  # the module's own method is back
    assert model.configure_calls == 1


def test_layer_freezer_with_configure_model_across_fits_and_validation(tmp_path: Path) -> None:
    model = LazyNet()
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=1, callbacks=[LayerFreezer("backbone")])
    trainer.fit(model, loader(16), loader(8))
    trainer.validate(model, loader(8))  # calls `configure_model` again: the guard returns, nothing re-freezes
    assert all(not p.requires_grad for p in model.backbone.parameters())  # type: ignore[union-attr]

    # a new fit of the same (already built) module with another pattern: the backbone's first layer only
    record = Record()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[LayerFreezer("backbone.fc1"), record])
    trainer.fit(model, loader(16))
    assert record.requires_grad == {n: not n.startswith("backbone.fc1.") for n, _ in model.named_parameters()}
    assert model.configure_calls == 3
    assert "configure_model" not in model.__dict__


def test_resume_of_layers_built_in_configure_model_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    def freezer() -> LayerFreezer:
        return LayerFreezer("backbone", unfreeze={1: "backbone.fc2", 2: "backbone.fc1"}, unfrozen_lr=0.05)

    ckpts = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full_model = LazyNet()
    full = quiet_trainer(tmp_path, max_epochs=3, callbacks=[freezer(), ckpts], enable_checkpointing=True)
    full.fit(full_model, loader(32))
    expected = full_model.state_dict()
    groups = [g.get("name") for g in full.optimizers[0].param_groups]
    assert groups == [None, "unfrozen-epoch1", "unfrozen-epoch2"]

    for epoch in (0, 1):  # before the first milestone; between the two
        model = LazyNet()  # no layers until `configure_model`; Lightning loads the checkpoint after it
        trainer = quiet_trainer(tmp_path / f"resume{epoch}", max_epochs=3, callbacks=[freezer()])
        trainer.fit(model, loader(32), ckpt_path=tmp_path / "ckpt" / f"epoch={epoch}.ckpt")
        got = model.state_dict()
        for key, value in expected.items():
            assert torch.equal(got[key], value), (epoch, key)
        assert [g.get("name") for g in trainer.optimizers[0].param_groups] == groups


def test_layer_freezer_falls_back_to_fit_start_when_configure_model_is_replaced(tmp_path: Path) -> None:
    class Replacing(LazyNet):
        def setup(self, stage: str) -> None:  # after the callbacks' `setup`: hides LayerFreezer's wrapper
            self.__dict__["configure_model"] = LazyNet.configure_model.__get__(self)

    model, record = Replacing(), Record()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[LayerFreezer("backbone"), record])
    with pytest.warns(UserWarning, match="froze its modules only at fit start"):
        trainer.fit(model, loader(16))
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone."))


def test_layer_freezer_error_lists_the_layers_built_in_configure_model(tmp_path: Path) -> None:
    model = LazyNet()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[LayerFreezer("trunk")])
    with pytest.raises(ValueError, match=r"(?s)`freeze`.*backbone\.fc1"):
        trainer.fit(model, loader(16))
    assert "configure_model" not in model.__dict__


def test_max_norm_constrains_a_layer_built_in_configure_model(tmp_path: Path) -> None:
    model = LazyNet(scale=2.0)  # rows far above the limit
    max_norm = MaxNorm(0.5, pattern="backbone.fc1")
    quiet_trainer(tmp_path, max_steps=3, callbacks=[max_norm]).fit(model, loader(32))

    assert max_norm.constrained_names == ["backbone.fc1.weight"]
    weights = dict(model.named_parameters())
    rows = torch.linalg.vector_norm(weights["backbone.fc1.weight"].detach(), dim=1)
    assert bool((rows <= 0.5 + 1e-6).all()), rows
    others = torch.linalg.vector_norm(weights["backbone.fc2.weight"].detach(), dim=1)
    assert bool((others > 0.5).any())  # not selected: left alone


def test_gradient_clipping_clips_layers_built_in_configure_model(tmp_path: Path) -> None:
    before, after = Grads(), Grads()
    clip = GradientClipping(norm=0.01, pattern="backbone")
    trainer = quiet_trainer(tmp_path, max_steps=2, log_every_n_steps=1, callbacks=[before, clip, after])
    trainer.fit(LazyNet(), loader(32))

    assert len(before.steps) == len(after.steps) == 2
    for raw, clipped in zip(before.steps, after.steps, strict=True):
        selected = [n for n in raw if n.startswith("backbone.")]
        copies = [nn.Parameter(torch.zeros_like(raw[n])) for n in selected]
        for name, copy in zip(selected, copies, strict=True):
            copy.grad = raw[name].clone()
        total = torch.nn.utils.clip_grad_norm_(copies, max_norm=0.01)  # the reference, on copies
        assert float(total) > 0.01
        for name, copy in zip(selected, copies, strict=True):
            torch.testing.assert_close(clipped[name], copy.grad, rtol=1e-6, atol=0)
        for name in raw:
            if not name.startswith("backbone."):
                assert torch.equal(clipped[name], raw[name]), name  # the head is not clipped
    assert "grad_norm/backbone" in trainer.callback_metrics


@pytest.mark.ddp
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_without_find_unused_parameters_and_a_backbone_frozen_in_configure_model(tmp_path: Path) -> None:
    script = run_ddp_script(HERE / "_configure_model_ddp_script.py", tmp_path)
    script.run(tmp_path, devices=1)
    rank0, rank1, single = (
        torch.load(tmp_path / name, weights_only=False)
        for name in ("devices2-rank0.pt", "devices2-rank1.pt", "devices1-rank0.pt")
    )
    assert (rank0["world_size"], rank1["world_size"], single["world_size"]) == (2, 2, 1)
    frozen_at_wrap = {n: not n.startswith("backbone.") for n in rank0["requires_grad"]}
    assert rank0["requires_grad"] == rank1["requires_grad"] == frozen_at_wrap
    assert rank0["groups"] == rank1["groups"] == single["groups"] == [None, "unfrozen-epoch1"]
    fresh = LazyNet()
    fresh.configure_model()
    initial = fresh.state_dict()
    for epoch, (a, b, ref) in enumerate(zip(rank0["epochs"], rank1["epochs"], single["epochs"], strict=True)):
        for key in ref:
            assert torch.equal(a[key], b[key]), f"replicas differ at epoch {epoch}: {key}"
            torch.testing.assert_close(a[key], ref[key], rtol=0, atol=1e-6, msg=f"epoch {epoch}: {key}")
    e0, e1 = rank0["epochs"]
    assert torch.equal(e0["backbone.fc1.weight"], initial["backbone.fc1.weight"])  # frozen in epoch 0
    changed = not torch.equal(e1["backbone.fc1.weight"], e0["backbone.fc1.weight"])
    assert changed  # trained after the milestone


def test_after_configure_model_shares_one_wrapper_and_restores_the_method() -> None:
    model, calls = LazyNet(), []
    first = after_configure_model(model, lambda: calls.append(("first", model.backbone is not None)))
    second = after_configure_model(model, lambda: calls.append(("second", model.backbone is not None)))
    assert is_overridden("configure_model", model)  # Lightning still sees (and calls) the user's method
    model.configure_model()
    model.configure_model()
    assert calls == [("first", True), ("second", True)]  # once each, after the layers exist, in order
    assert first.done and second.done and "configure_model" not in model.__dict__

    pending = after_configure_model(model, lambda: calls.append(("never", True)))
    pending.detach()  # the fit failed before `configure_model`
    model.configure_model()
    assert len(calls) == 2 and "configure_model" not in model.__dict__

    plain = pl.LightningModule()  # does not override `configure_model`: runs at once
    assert after_configure_model(plain, lambda: calls.append(("plain", True))).done
    assert calls[-1] == ("plain", True) and "configure_model" not in plain.__dict__
