"""The example configs run through the `lightning-dnn` CLI code path, with its defaults (loggers, learning curves)."""

import runpy
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_dnn.cli import DNNCLI, ThrottledRichProgressBar, main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))
FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_there_are_the_example_configs():
    transfer_study = {f"transfer_study_{v}" for v in ("pretrain", "scratch", "b", "c", "d", "e", "f")}
    assert {p.stem for p in CONFIGS} == {"tf1_notebook", "chapter_defaults", "sparse_ftrl", "fast_leaky",
                                         *transfer_study}


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST files not installed (apt-get install dataset-fashion-mnist)")
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_example_config_fits_and_writes_metrics_and_curves(config, tmp_path):
    cli = DNNCLI(
        args=[
            "--config", str(config),
            "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "3",
            "--trainer.limit_val_batches", "2",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    version = tmp_path / "lightning_logs" / "version_0"
    header = (version / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train_loss" in header and "train_acc" in header
    assert (version / "learning_curves.png").stat().st_size > 1000
    assert any(version.glob("events.out.tfevents.*"))  # TensorBoard next to the CSV


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], ["_DefaultModelCheckpoint"]),  # the Trainer's default checkpointing, key computed once
        (["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_last=true"], ["ModelCheckpoint"]),
        (["--trainer.enable_checkpointing=false"], []),
    ],
    ids=["default", "configured", "off"],
)
def test_checkpoint_callback_defaults(tmp_path, extra, expected):
    cli = DNNCLI(
        args=[
            "--model.net", "lightning_dnn.nn.MLP",
            "--model.net.in_features", "64", "--model.net.hidden", "[8]", "--model.net.out_features", "10",
            "--data", "lightning_dnn.data.DigitsDataModule",
            "--trainer.default_root_dir", str(tmp_path),
            *extra,
        ],
        run=False,
    )
    found = [type(c).__name__ for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert found == expected
    if expected == ["ModelCheckpoint"]:
        assert cli.trainer.checkpoint_callback.save_last is True  # the configured one, not a second default


def test_progress_bar_throttle_validates():
    with pytest.raises(ValueError, match="`updates_per_second` must be > 0"):
        ThrottledRichProgressBar(updates_per_second=0)


def test_bad_config_key_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  net:\n    class_path: lightning_dnn.nn.MLP\n    init_args: {in_features: 4}\n  lr: -1\n")
    with pytest.raises((SystemExit, ValueError)):
        main(["fit", "--config", str(bad)])


def test_console_script_and_python_m_reach_main(monkeypatch, capsys):
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "lightning-dnn"]
    assert script.value == "lightning_dnn.cli:main" and script.load() is main
    monkeypatch.setattr(sys, "argv", ["lightning-dnn", "zoo", "list"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("lightning_dnn.cli", run_name="__main__")  # python -m lightning_dnn.cli zoo list
    assert done.value.code == 0 and "digits-mlp-classes0-4" in capsys.readouterr().out


def test_main_passes_zoo_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        main(["zoo", "info", "digits-mlp-clases0-4"])
    assert done.value.code == 2 and "Did you mean 'digits-mlp-classes0-4'" in capsys.readouterr().err


def _fit_args(tmp_path: Path) -> list[str]:
    return [
        "--data", "lightning_dnn.data.DigitsDataModule",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ]


def test_cli_trains_a_users_own_module_by_class_path(tmp_path):
    from tests._user_module import MyModule

    cli = DNNCLI(args=["--model", "tests._user_module.MyModule", "--model.hidden", "8", *_fit_args(tmp_path)], run=False)
    assert type(cli.model) is MyModule
    assert cli.model.net[1].out_features == 8
    # its own default, not DNNClassifier's lr=1e-3 carried over by jsonargparse
    assert cli.model.hparams.lr == 0.1
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2 and "train_loss" in cli.trainer.callback_metrics


def test_cli_trains_a_users_own_module_from_a_config(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  class_path: tests._user_module.MyModule\n  init_args:\n    hidden: 4\n")
    cli = DNNCLI(args=["--config", str(config), *_fit_args(tmp_path)], run=False)
    assert type(cli.model).__name__ == "MyModule"
    assert (cli.model.hparams.hidden, cli.model.hparams.lr) == (4, 0.1)


def test_without_a_model_class_the_model_is_dnnclassifier(tmp_path):
    from lightning_dnn import DNNClassifier
    from lightning_dnn.cli.training import with_default_model

    args = ["--model.net", "torch.nn.Linear", "--model.net.in_features", "64", "--model.net.out_features", "10"]
    cli = DNNCLI(args=[*args, "--model.lr", "0.05", *_fit_args(tmp_path)], run=False)
    assert type(cli.model) is DNNClassifier and cli.model.hparams.lr == 0.05
    assert with_default_model(["fit", "--config", str(tmp_path / "absent.yaml")])[1] == "--model=lightning_dnn.DNNClassifier"
    assert with_default_model(["fit", "--model=x.Y"]) == ["fit", "--model=x.Y"]


def test_a_network_wider_than_the_data_stops_the_cli_with_a_clear_error(tmp_path):
    """`--model.net torchvision.models.resnet18` without num_classes used to train 1000 outputs on 10 classes."""
    args = ["--model.net", "torch.nn.Linear", "--model.net.in_features", "64", "--model.net.out_features", "1000"]
    cli = DNNCLI(args=[*args, *_fit_args(tmp_path)], run=False)
    with pytest.raises(ValueError, match=r"DigitsDataModule has 10 classes but the network outputs num_classes=1000"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
