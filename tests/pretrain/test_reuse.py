"""The pretrained encoder is saved as a zoo-format folder and its lower layers are reused by the selection rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_dnn.data import DigitsDataModule
from lightning_dnn.hub import load_pretrained, save_pretrained
from lightning_dnn.nn import MLP
from lightning_dnn.pretrain import Autoencoder, PairDataModule, SiamesePretrainer
from tests.trainer_utils import quiet_trainer


@pytest.mark.parametrize("kind", ["autoencoder", "tied", "siamese"])
def test_encoder_save_then_load_hidden_1_to_3(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    encoder = MLP(64, (32, 32, 16, 16, 8), 10)
    if kind == "siamese":
        model = SiamesePretrainer(encoder)
        data = PairDataModule(DigitsDataModule(batch_size=64), pairs_per_epoch=256)
    else:
        model = Autoencoder(encoder, tied=kind == "tied")  # type: ignore[assignment]
        data = DigitsDataModule(batch_size=64)  # type: ignore[assignment]
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3).fit(model, datamodule=data)
    assert not torch.equal(before["hidden1.linear.weight"], encoder.hidden1.linear.weight)  # it trained
    assert torch.equal(
        before["output.linear.weight"], encoder.output.linear.weight
    )  # the unused head did not

    folder = save_pretrained(model.encoder, tmp_path / "pretrained")
    torch.manual_seed(1)
    target = MLP(64, (32, 32, 16, 16, 8), 5)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    _, report = load_pretrained(folder, include="hidden[1-3]", into=target)
    for name, tensor in target.state_dict().items():
        if name.split(".")[0] in ("hidden1", "hidden2", "hidden3"):
            assert torch.equal(tensor, encoder.state_dict()[name]), name  # exactly the trained tensors
        else:
            assert torch.equal(tensor, fresh[name]), name  # hidden4-5 and the head untouched
    assert sorted(report.loaded) == sorted(
        k for k in encoder.state_dict() if k.startswith(("hidden1.", "hidden2.", "hidden3."))
    )
