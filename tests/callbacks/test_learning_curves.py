import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_dnn import DNNClassifier, LearningCurves
from tests.trainer_utils import quiet_trainer


class Recorder(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen.append(float(trainer.callback_metrics["train_loss"]))


def fit(tmp_path, curves, epochs=3):
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    recorder = Recorder()
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, callbacks=[curves, recorder])
    trainer.fit(DNNClassifier(nn.Linear(4, 2), lr=0.1), loader, loader)
    return recorder


def test_history_matches_logged_epoch_metrics_and_png_is_written(tmp_path):
    curves = LearningCurves(min_interval=0)
    recorder = fit(tmp_path, curves)
    assert [row["epoch"] for row in curves.history] == [0.0, 1.0, 2.0]
    assert [row["train_loss"] for row in curves.history] == pytest.approx(recorder.seen)
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(curves.history[-1])
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000


def test_throttled_writes_still_write_at_fit_end_and_state_round_trips(tmp_path):
    curves = LearningCurves(filename="c.png", min_interval=3600)
    fit(tmp_path, curves, epochs=2)
    assert (tmp_path / "c.png").exists()  # written by on_fit_end despite the throttle
    fresh = LearningCurves()
    fresh.load_state_dict(curves.state_dict())
    assert fresh.history == curves.history


@pytest.mark.parametrize("kwargs, match", [({"filename": "c.jpg"}, "ending in '.png'"), ({"min_interval": -1}, "min_interval")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LearningCurves(**kwargs)
