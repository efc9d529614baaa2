"""lightning_dnn under both Lightning package names: ``pytorch_lightning`` and ``lightning.pytorch`` (issue 15.1).

The same fit (DNNClassifier, a data module, every public callback) gives bit-equal weights in either package's
Trainer; Lightning's ``is_overridden`` sees the module's own hooks whichever Trainer it is attached to; checkpoints
resume under ``lightning.pytorch``; with one package blocked, lightning_dnn imports and trains with the other and
never imports the blocked one; a Trainer of a package lightning_dnn was not set up for gets a message naming the
fix. See docs/LIGHTNING_PACKAGES.md.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lightning_dnn import DNNClassifier, _lightning
from lightning_dnn._lightning import PACKAGES, check_trainer, is_overridden, select_packages
from lightning_dnn.callbacks import (
    EarlyStopping,
    FeatureCache,
    GradientClipping,
    LayerFreezer,
    LearningCurves,
    MaxNorm,
)
from lightning_dnn.data import ArrayDataModule
from lightning_dnn.nn import MLP
from tests.ddp_utils import REPO, ddp_env
from tests.trainer_utils import quiet_trainer_kwargs

BOTH = pytest.mark.skipif(len(PACKAGES) < 2, reason="needs both pytorch_lightning and lightning installed")
API = {"pytorch_lightning": "pytorch_lightning", "lightning": "lightning.pytorch"}


def _api(package: str, path: str = "") -> Any:
    return importlib.import_module(API[package] + (f".{path}" if path else ""))


def _data(**kwargs: Any) -> ArrayDataModule:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return ArrayDataModule(x, y, batch_size=16, val_split=0.25, seed=0, **kwargs)


def _model() -> DNNClassifier:
    torch.manual_seed(0)
    return DNNClassifier(MLP(8, (16, 16), 3), optimizer="momentum", lr=0.05)


def _all_callbacks(tmp_path: Path) -> list[Any]:
    return [
        MaxNorm(1.0, pattern="hidden.*"),
        GradientClipping(norm=0.5),
        LayerFreezer("hidden1", unfreeze={1: "hidden1"}, unfrozen_lr=0.02),
        EarlyStopping(monitor="val_loss", patience=5),
        LearningCurves(dirpath=str(tmp_path), min_interval=0.0),
    ]


def _fit(package: str, tmp_path: Path, callbacks: list[Any], epochs: int = 3, **kwargs: Any) -> tuple[Any, Any]:
    model = _model()
    trainer = _api(package).Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=epochs, callbacks=callbacks, **kwargs))
    trainer.fit(model, datamodule=_data())
    return model, trainer


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"differ: {unequal}"


# ----------------------------------------------------------------------------------------------------- selection


def test_select_packages_follows_the_environment_variable() -> None:
    assert select_packages(None, lambda n: True) == ("pytorch_lightning", "lightning")
    assert select_packages("", lambda n: n == "pytorch_lightning") == ("pytorch_lightning",)
    assert select_packages(" lightning ", lambda n: True) == ("lightning",)
    with pytest.raises(ValueError, match=r"LIGHTNING_DNN_PACKAGE must be 'pytorch_lightning' or 'lightning'.*'pl'"):
        select_packages("pl", lambda n: True)
    with pytest.raises(ImportError, match=r"LIGHTNING_DNN_PACKAGE=lightning, but lightning is not installed"):
        select_packages("lightning", lambda n: n == "pytorch_lightning")
    with pytest.raises(ImportError, match="needs PyTorch Lightning"):
        select_packages(None, lambda n: False)


@BOTH
def test_public_classes_belong_to_both_packages() -> None:
    for package in PACKAGES:
        api = _api(package)
        assert isinstance(_model(), api.LightningModule)
        assert isinstance(_data(), api.LightningDataModule)
        for callback in [*_all_callbacks(Path(".")), FeatureCache()]:
            assert isinstance(callback, api.Callback), (package, type(callback).__name__)


# ----------------------------------------------------------------------------------- same numbers in both Trainers


@BOTH
def test_every_callback_gives_bit_equal_weights_in_either_trainer(tmp_path: Path) -> None:
    runs = {p: _fit(p, tmp_path / p, _all_callbacks(tmp_path / p)) for p in PACKAGES}
    (pl_model, pl_trainer), (l_model, l_trainer) = runs["pytorch_lightning"], runs["lightning"]
    assert type(l_trainer).__module__.startswith("lightning.pytorch")
    assert pl_trainer.current_epoch == l_trainer.current_epoch == 3
    _assert_equal(_weights(pl_model), _weights(l_model))
    assert pl_trainer.callback_metrics.keys() == l_trainer.callback_metrics.keys()
    for key, value in pl_trainer.callback_metrics.items():
        assert torch.equal(value, l_trainer.callback_metrics[key]), key
    # the unfrozen layer joined the optimizer as a named group in both, and the curves were drawn in both
    for trainer in (pl_trainer, l_trainer):
        assert [g.get("name") for g in trainer.optimizers[0].param_groups][-1] is not None
    assert (tmp_path / "pytorch_lightning" / "learning_curves.png").is_file()
    assert (tmp_path / "lightning" / "learning_curves.png").is_file()


@BOTH
def test_feature_cache_gives_bit_equal_weights_in_either_trainer(tmp_path: Path) -> None:
    models = {p: _fit(p, tmp_path / p, [LayerFreezer("hidden[12]"), FeatureCache()])[0] for p in PACKAGES}
    _assert_equal(_weights(models["pytorch_lightning"]), _weights(models["lightning"]))
    # and the cache changed nothing: the same fit without it
    plain, _ = _fit("lightning", tmp_path / "plain", [LayerFreezer("hidden[12]")])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_weights(plain).values(), _weights(models["lightning"]).values(), strict=True))


# ------------------------------------------------------------------------------------------------ is_overridden


def _own_hooks(obj: object, base: type) -> set[str]:
    """The names the classes below ``base`` (ours and the user's) define."""
    mro = type(obj).__mro__
    return {name for klass in mro[: mro.index(base)] for name in vars(klass)}


@BOTH
@pytest.mark.parametrize("package", ["pytorch_lightning", "lightning"])
def test_lightning_sees_exactly_the_hooks_a_module_overrides(package: str, tmp_path: Path) -> None:
    model, data = _model(), _data()
    trainer = _api(package).Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=0))
    trainer.fit(model, datamodule=data)  # attaches both
    helper = _api(package, "utilities.model_helpers").is_overridden
    api = _api(package)
    for obj, base, ours in (
        (model, api.LightningModule, _lightning.LightningModule),
        (data, api.LightningDataModule, _lightning.LightningDataModule),
    ):
        hooks = [n for n in dir(base) if not n.startswith("_") and inspect.isfunction(inspect.getattr_static(base, n))]
        own = _own_hooks(obj, ours)
        wrong = [n for n in hooks if helper(n, obj) != (n in own)]
        assert not wrong, f"{type(obj).__name__} in a {package} Trainer: is_overridden is wrong for {wrong}"
        assert is_overridden("configure_model", obj) is False
    assert is_overridden("training_step", model) and is_overridden("train_dataloader", data)
    # a stateful callback is detected as stateful, a stateless one not (Lightning refuses duplicates of the former)
    callback_base = api.Callback
    assert helper("state_dict", LayerFreezer("hidden1"), callback_base)
    assert not helper("state_dict", MaxNorm(1.0), callback_base)


@BOTH
def test_a_user_subclass_overriding_configure_model_trains_under_lightning(tmp_path: Path) -> None:
    built: list[str] = []

    class Late(DNNClassifier):
        def configure_model(self) -> None:
            built.append(type(self.trainer).__module__.split(".")[0])

    for package in PACKAGES:
        torch.manual_seed(0)
        model = Late(MLP(8, (16,), 3))
        _api(package).Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1)).fit(model, datamodule=_data())
    assert built == ["pytorch_lightning", "lightning"]


# ------------------------------------------------------------------------------ checkpoints, copies, pickling


@BOTH
def test_checkpoint_resume_under_lightning_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    checkpoint = _api("lightning", "callbacks").ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    full, _ = _fit("lightning", tmp_path / "full", _all_callbacks(tmp_path / "full"))
    first, _ = _fit(
        "lightning", tmp_path / "first", [*_all_callbacks(tmp_path / "first"), checkpoint], epochs=1,
        enable_checkpointing=True,
    )
    path = next((tmp_path / "ckpt").glob("epoch=0*.ckpt"))
    resumed = _model()
    trainer = _api("lightning").Trainer(
        **quiet_trainer_kwargs(tmp_path / "resumed", max_epochs=3, callbacks=_all_callbacks(tmp_path / "resumed"))
    )
    trainer.fit(resumed, datamodule=_data(), ckpt_path=path)
    _assert_equal(_weights(full), _weights(resumed))
    # the checkpoint a lightning.pytorch Trainer wrote rebuilds the model with the weights of epoch 0
    loaded = DNNClassifier.load_from_checkpoint(path)
    _assert_equal(_weights(first), _weights(loaded))


@BOTH
def test_copies_and_pickles_of_an_attached_module_keep_working(tmp_path: Path) -> None:
    model, _ = _fit("lightning", tmp_path, [], epochs=1)
    clone, restored = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
    assert restored._trainer is None and clone._trainer is None  # Lightning drops the Trainer from copies
    for other in (clone, restored):
        _assert_equal(_weights(model), _weights(other))
        trainer = _api("pytorch_lightning").Trainer(**quiet_trainer_kwargs(tmp_path / "again", max_epochs=2))
        trainer.fit(other, datamodule=_data())
        assert trainer.current_epoch == 2


# ------------------------------------------------------------------------------------------- the wrong package


def test_a_trainer_of_a_package_not_set_up_for_gets_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    other = "lightning" if PACKAGES[0] == "pytorch_lightning" else "pytorch_lightning"
    pytest.importorskip(API[other])
    monkeypatch.setenv("LIGHTNING_DNN_PACKAGE", PACKAGES[0])
    monkeypatch.setattr(_lightning, "PACKAGES", (PACKAGES[0],))
    trainer = _api(other).Trainer(logger=False)
    with pytest.raises(TypeError, match=rf"ArrayDataModule: the Trainer comes from `{API[other]}`.*{API[PACKAGES[0]]}.*only"):
        _data().trainer = trainer
    with pytest.raises(TypeError, match=rf"set LIGHTNING_DNN_PACKAGE={other} or unset it"):
        check_trainer(trainer, "MaxNorm")
    with pytest.raises(TypeError, match="needs a Lightning Trainer"):
        check_trainer(object(), "MaxNorm")


# -------------------------------------------------------------------------------------- one package blocked

_BLOCKED_SCRIPT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` raises ImportError, find_spec finds nothing
import numpy as np, torch
import lightning_dnn
from lightning_dnn import DNNClassifier
from lightning_dnn._lightning import PACKAGES
from lightning_dnn.callbacks import EarlyStopping, MaxNorm
from lightning_dnn.data import ArrayDataModule
from lightning_dnn.nn import MLP
import {api} as api
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int64)
torch.manual_seed(0)
model = DNNClassifier(MLP(8, (16,), 2), optimizer="momentum", lr=0.05)
trainer = api.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, callbacks=[MaxNorm(1.0), EarlyStopping(monitor="val_loss")])
trainer.fit(model, datamodule=ArrayDataModule(x, y, batch_size=16, val_split=0.25, seed=0))
loaded = sorted({{m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}} & {{"pytorch_lightning", "lightning", "lightning_fabric"}})
print("PACKAGES", PACKAGES, "LOADED", loaded, "EPOCH", trainer.current_epoch)
torch.save(model.state_dict(), sys.argv[1])
"""


@pytest.mark.parametrize(
    ("blocked", "api", "expected"),
    [
        (("pytorch_lightning", "lightning_fabric"), "lightning.pytorch", "('lightning',) LOADED ['lightning']"),
        (("lightning",), "pytorch_lightning", "('pytorch_lightning',) LOADED ['lightning_fabric', 'pytorch_lightning']"),
    ],
)
def test_with_one_package_blocked_lightning_dnn_trains_with_the_other(
    blocked: tuple[str, ...], api: str, expected: str, tmp_path: Path
) -> None:
    pytest.importorskip(api)
    env = {k: v for k, v in ddp_env().items() if k not in ("LIGHTNING_DNN_PACKAGE", "LIGHTNING_DNN_TEST_PACKAGE")}
    out = tmp_path / "weights.pt"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_BLOCKED_SCRIPT.format(blocked=blocked, api=api)), str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"PACKAGES {expected} EPOCH 2" in proc.stdout, proc.stdout
    torch.manual_seed(0)
    # the same fit in this process (either package) gives the same weights
    reference = DNNClassifier(MLP(8, (16,), 2), optimizer="momentum", lr=0.05)
    package = "lightning" if api == "lightning.pytorch" else "pytorch_lightning"
    if package in PACKAGES:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 8)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        trainer = _api(package).Trainer(
            **quiet_trainer_kwargs(tmp_path, max_epochs=2, callbacks=[MaxNorm(1.0), EarlyStopping(monitor="val_loss")])
        )
        trainer.fit(reference, datamodule=ArrayDataModule(x, y, batch_size=16, val_split=0.25, seed=0))
        _assert_equal(_weights(reference), torch.load(out))


# ---------------------------------------------------------------------------------------------- CLI and DDP


@BOTH
def test_lightning_cli_of_either_package_takes_our_classes(tmp_path: Path) -> None:
    args = [
        "--model=lightning_dnn.DNNClassifier",
        "--model.net=lightning_dnn.nn.MLP",
        "--model.net.in_features=8",
        "--model.net.hidden=[4]",
        "--model.net.out_features=3",
        "--data=lightning_dnn.data.DigitsDataModule",
        "--trainer.callbacks+=lightning_dnn.callbacks.MaxNorm",
        "--trainer.callbacks.max_norm=2.0",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    for package in PACKAGES:
        api = _api(package)
        cli = _api(package, "cli").LightningCLI(
            api.LightningModule, api.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            args=args, run=False,
        )
        assert type(cli.trainer).__module__.startswith(API[package])
        assert isinstance(cli.model, DNNClassifier)
        assert [c.max_norm for c in cli.trainer.callbacks if isinstance(c, MaxNorm)] == [2.0]


@pytest.mark.ddp
@BOTH
def test_ddp_on_two_processes_under_lightning(tmp_path: Path) -> None:
    script = REPO / "tests" / "_lightning_ddp_script.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "2"], env=ddp_env(), cwd=tmp_path,
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sys.path.insert(0, str(script.parent))
    try:
        reference = importlib.import_module("_lightning_ddp_script")
    finally:
        sys.path.remove(str(script.parent))
    reference.run(tmp_path / "single", devices=1)
    single = torch.load(tmp_path / "single" / "rank0.pt")
    for rank in (0, 1):
        ranked = torch.load(tmp_path / f"rank{rank}.pt")
        assert ranked["trainer"] == "lightning.pytorch.trainer.trainer"
        assert ranked.keys() == single.keys()
        for key in ranked["weights"]:
            torch.testing.assert_close(ranked["weights"][key], single["weights"][key], rtol=1e-5, atol=1e-6)


_CLI_SCRIPT = """
import sys
from lightning_dnn.cli.training import DNNCLI
cli = DNNCLI(args=["fit", "--model.net=lightning_dnn.nn.MLP", "--model.net.in_features=64", "--model.net.hidden=[8]",
                   "--model.net.out_features=10", "--data=lightning_dnn.data.DigitsDataModule", "--trainer.max_epochs=1",
                   "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
                   "--trainer.callbacks+=lightning_dnn.callbacks.MaxNorm", "--trainer.default_root_dir=" + sys.argv[1]])
names = {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
loaded = sorted(names & {"pytorch_lightning", "lightning", "lightning_fabric"})
print("TRAINER", type(cli.trainer).__module__, "EPOCHS", cli.trainer.current_epoch, "LOADED", loaded)
"""


@pytest.mark.slow  # a subprocess CLI fit: ~15 s on an idle 2-core machine; the in-process CLI test above is fast
def test_cli_trains_with_the_package_the_environment_variable_names(tmp_path: Path) -> None:
    pytest.importorskip("lightning.pytorch")
    env = {**ddp_env(), "LIGHTNING_DNN_PACKAGE": "lightning"}
    env.pop("LIGHTNING_DNN_TEST_PACKAGE", None)
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_SCRIPT, str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # (LightningCLI's annotation resolver runs our `if TYPE_CHECKING:` imports, so pytorch_lightning may be loaded)
    assert "TRAINER lightning.pytorch.trainer.trainer EPOCHS 1 LOADED" in proc.stdout, proc.stdout
    assert next(tmp_path.glob("lightning_logs/version_0/metrics.csv")).read_text().startswith(("epoch", "step", "lr"))
