"""SiamesePretrainer: shared weights, the head's input, learning above chance on digits, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_dnn.data import DigitsDataModule
from lightning_dnn.nn import MLP
from lightning_dnn.pretrain import PairDataModule, SiamesePretrainer
from tests.trainer_utils import quiet_trainer


def _net(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(64, (32, 16), 10)


@pytest.mark.parametrize("combine", ["absdiff", "concat"])
def test_both_inputs_share_the_encoder_and_the_head_sees_the_combination(combine: str) -> None:
    model = SiamesePretrainer(_net(), combine=combine, head_hidden=0)  # type: ignore[arg-type]
    x1, x2 = torch.rand(5, 64), torch.rand(5, 64)
    h1, h2 = model.encoder.forward_features(x1), model.encoder.forward_features(x2)
    z = (h1 - h2).abs() if combine == "absdiff" else torch.cat([h1, h2], dim=1)
    expected = model.head.output(z).squeeze(1)
    assert torch.allclose(model(x1, x2), expected, atol=1e-6)
    if combine == "absdiff":
        assert torch.allclose(model(x1, x2), model(x2, x1), atol=1e-6)  # symmetric
    # one set of encoder weights: the gradient of both branches lands in the same tensor
    model(x1, x2).sum().backward()
    assert model.encoder.hidden1.linear.weight.grad is not None
    assert sum(1 for n, _ in model.named_parameters() if n.startswith("encoder.hidden1")) == 2
    assert model.encoder.output.linear.weight.grad is None  # the MLP's head is not used


def test_loss_and_accuracy_follow_the_formulas() -> None:
    model = SiamesePretrainer(_net(), head_hidden=4)
    logged: dict[str, float] = {}
    model.log = lambda name, value, **_: logged.__setitem__(name, float(value.detach()))  # type: ignore[method-assign]
    x1, x2 = torch.rand(8, 64), torch.rand(8, 64)
    same = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    loss = model.training_step((x1, x2, same), 0)
    logits = model(x1, x2)
    assert loss.item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, same.float()).item(), rel=1e-6
    )
    assert logged["train_accuracy"] == pytest.approx(((logits > 0) == same).float().mean().item())


def test_learns_above_chance_on_digits(tmp_path: Path) -> None:
    data = PairDataModule(DigitsDataModule(batch_size=64, val_split=0.1), pairs_per_epoch=2000, seed=0)
    model = SiamesePretrainer(_net(), head_hidden=16, lr=3e-3)
    trainer = quiet_trainer(tmp_path, max_epochs=6)
    trainer.fit(model, datamodule=data)
    assert set(trainer.callback_metrics) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    # balanced test pairs: chance is 0.5
    assert result["test_accuracy"] > 0.8
    assert result["test_loss"] < 0.45  # well below log(2) = 0.693, the loss of a constant guess


def test_refusals() -> None:
    with pytest.raises(ValueError, match="`combine` must be one of"):
        SiamesePretrainer(_net(), combine="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`head_hidden` must be >= 0"):
        SiamesePretrainer(_net(), head_hidden=-1)
    with pytest.raises(ValueError, match="`feature_dim` is needed"):
        SiamesePretrainer(nn.Sequential(nn.Linear(4, 3)))
    assert SiamesePretrainer(nn.Sequential(nn.Linear(4, 3)), feature_dim=3)(
        torch.zeros(2, 4), torch.zeros(2, 4)
    ).shape == (2,)
    model = SiamesePretrainer(_net())
    with pytest.raises(ValueError, match=r"expects batches \(x1, x2, same\)"):
        model.training_step((torch.zeros(2, 64), torch.zeros(2)), 0)
    with pytest.raises(ValueError, match="0/1"):
        model.training_step((torch.zeros(2, 64), torch.zeros(2, 64), torch.tensor([0.0, 2.0])), 0)


def test_checkpoint_rebuilds_the_model(tmp_path: Path) -> None:
    data = PairDataModule(DigitsDataModule(batch_size=64), pairs_per_epoch=128)
    model = SiamesePretrainer(_net(), combine="concat", head_hidden=8)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(tmp_path / "siamese.ckpt")
    loaded = SiamesePretrainer.load_from_checkpoint(
        tmp_path / "siamese.ckpt"
    )  # the MLP comes from the hparams
    assert loaded.combine == "concat" and loaded.head_hidden == 8
    x1, x2 = torch.rand(4, 64), torch.rand(4, 64)
    model.eval()
    loaded.eval()
    assert torch.equal(model(x1, x2), loaded(x1, x2))
