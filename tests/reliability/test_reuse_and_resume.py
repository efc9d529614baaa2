"""Reuse across fits and resume at every batch: nothing a previous fit did may leak into the next one.

Issue 12, items 1-4: a network reused in a second fit keeps the first fit's freezing; an EarlyStopping reused
across fits restores the previous model's weights; ``EarlyStopping(store="disk")`` shares its file between runs;
an unfreeze milestone is applied one epoch late after a resume from the last batch of the epoch before it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn import DNNClassifier
from lightning_dnn.callbacks import EarlyStopping, LayerFreezer
from lightning_dnn.nn import MLP
from tests.callbacks.test_early_stopping import Scripted as EarlyStoppingScripted
from tests.reliability import _sigkill_worker as worker
from tests.trainer_utils import quiet_trainer

STEPS_PER_EPOCH = 4


# ------------------------------------------------------------------------------------------------- helpers --
def loader(n: int = 32, seed: int = 0, features: int = 6) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, features, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_bit_identical(got: dict[str, Tensor], expected: dict[str, Tensor], context: object = "") -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), (context, key)


def fit(
    root: Path, model: pl.LightningModule, callbacks: list[Callback], *, max_epochs: int = 1, **kwargs: Any
) -> pl.Trainer:
    trainer = quiet_trainer(
        root, max_epochs=max_epochs, num_sanity_val_steps=0, callbacks=callbacks, **kwargs
    )
    trainer.fit(model, loader())
    return trainer


@pytest.fixture
def rank_zero_log() -> Iterator[list[str]]:
    """The messages of ``rank_zero_info``/``rank_zero_warn`` (Lightning's logger does not propagate to root)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    # both packages' loggers: lightning_utilities logs to the one the last imported Lightning package installed
    loggers = [logging.getLogger(f"{p}.utilities.rank_zero") for p in ("pytorch_lightning", "lightning.pytorch")]
    handler, levels = Collect(level=logging.INFO), [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield messages
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


class NormModes(Callback):
    """The training flag of every batch-norm layer at each training step."""

    def __init__(self) -> None:
        self.modes: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.modes.append(
            {n: m.training for n, m in pl_module.named_modules() if isinstance(m, nn.BatchNorm1d)}
        )


class EpochSnapshots(Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, Tensor]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.states.append(snapshot(pl_module))


# ------------------------------------------------------------ 1. a network reused with a new LayerFreezer --
def deep_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(6, (8, 8, 8, 8, 8), 3, norm="batch")


def test_a_new_freezer_on_a_reused_network_defines_its_frozen_set(
    tmp_path: Path, rank_zero_log: list[str]
) -> None:
    net = deep_mlp()
    fit(tmp_path / "pretrain", DNNClassifier(net, lr=0.01), [])
    fit(tmp_path / "head", DNNClassifier(net, lr=0.01), [LayerFreezer("hidden[1-5]")])
    # "unfreeze the top two": a new classifier and a new freezer on the same network
    before = snapshot(net)
    modes = NormModes()
    rank_zero_log.clear()
    fit(tmp_path / "top2", DNNClassifier(net, lr=0.01), [LayerFreezer("hidden[1-3]"), modes], max_epochs=2)
    after = snapshot(net)

    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen == [f"hidden{i}.{t}" for i in (1, 2, 3) for t in ("linear.weight", "bn.weight", "bn.bias")]
    for key in before:
        moved = not torch.equal(before[key], after[key])
        assert moved == (not key.startswith(("hidden1.", "hidden2.", "hidden3."))), key
    # the batch norm the first fit put in eval mode follows the model again (its statistics moved above)
    assert modes.modes and all(m["net.hidden4.bn"] and m["net.hidden5.bn"] for m in modes.modes)
    assert not any(m["net.hidden3.bn"] for m in modes.modes)
    unfroze = [m for m in rank_zero_log if "unfroze" in m]
    assert len(unfroze) == 1 and "an earlier LayerFreezer" in unfroze[0]
    assert "net.hidden4" in unfroze[0] and "net.hidden5" in unfroze[0] and "net.hidden3" not in unfroze[0]


def test_the_same_freezer_on_a_new_model_starts_its_schedule_again(tmp_path: Path) -> None:
    freezer = LayerFreezer("hidden[12]", unfreeze={1: "hidden2"})
    fit(tmp_path / "a", DNNClassifier(MLP(6, (8, 8), 3), lr=0.01), [freezer], max_epochs=2)
    model = DNNClassifier(MLP(6, (8, 8), 3), lr=0.01)
    init, snaps = snapshot(model), EpochSnapshots()
    trainer = fit(tmp_path / "b", model, [freezer, snaps], max_epochs=2)
    e0, e1 = snaps.states
    assert torch.equal(
        e0["net.hidden2.linear.weight"], init["net.hidden2.linear.weight"]
    )  # frozen in epoch 0
    assert not torch.equal(e1["net.hidden2.linear.weight"], e0["net.hidden2.linear.weight"])
    assert [g.get("name") for g in trainer.optimizers[0].param_groups] == [None, "unfrozen-epoch1"]


def test_parameters_frozen_by_the_user_stay_frozen_and_are_named(tmp_path: Path) -> None:
    net = MLP(6, (8, 8), 3)
    net.hidden1.requires_grad_(False)  # the user's own frozen "embedding"
    model = DNNClassifier(net, lr=0.01)
    init = snapshot(net)
    freezer = LayerFreezer.freeze_all_but_head("output", epochs=1)  # "then unfreeze everything"
    with pytest.warns(UserWarning, match=r"frozen before this fit.*hidden1\.linear\.weight.*stay frozen"):
        fit(tmp_path, model, [freezer], max_epochs=2)
    after = snapshot(net)
    trainable = {n: p.requires_grad for n, p in net.named_parameters()}
    assert not trainable["hidden1.linear.weight"] and trainable["hidden2.linear.weight"]
    assert torch.equal(after["hidden1.linear.weight"], init["hidden1.linear.weight"])
    assert not torch.equal(after["hidden2.linear.weight"], init["hidden2.linear.weight"])


def test_a_milestone_that_selects_only_user_frozen_parameters_says_why(tmp_path: Path) -> None:
    net = MLP(6, (8, 8), 3)
    net.hidden1.requires_grad_(False)
    freezer = LayerFreezer("hidden[12]", unfreeze={1: "hidden1"})
    with pytest.raises(ValueError, match=r"unfreeze\[1\].*frozen before this fit.*requires_grad_\(True\)"):
        fit(tmp_path, DNNClassifier(net, lr=0.01), [freezer], max_epochs=2)


# -------------------------------------------------------------------- 2. EarlyStopping reused across fits --
class Scripted(EarlyStoppingScripted):
    """The EarlyStopping tests' scripted module on this file's data: 6 features, 8 hidden units, 3 classes."""

    def __init__(self, script: Sequence[float], seed: int = 0) -> None:
        super().__init__(script, seed=seed, features=6, hidden=8, classes=3)


def fit_scripted(
    root: Path,
    model: Scripted,
    stopper: EarlyStopping,
    *,
    checkpoint: ModelCheckpoint | None = None,
    ckpt_path: Path | None = None,
) -> EpochSnapshots:
    snaps = EpochSnapshots()  # before EarlyStopping: the state its check sees
    callbacks: list[Callback] = [snaps, stopper, *([checkpoint] if checkpoint else [])]
    trainer = quiet_trainer(
        root,
        max_epochs=len(model.script),
        num_sanity_val_steps=0,
        callbacks=callbacks,
        enable_checkpointing=checkpoint is not None,
    )
    trainer.fit(model, loader(), loader(8, seed=1), ckpt_path=ckpt_path)
    return snaps


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_early_stopping_reused_across_models_starts_afresh(tmp_path: Path, store: str) -> None:
    # Keras' test_early_stopping_reuse_across_models (keras #20256)
    stopper = EarlyStopping("score", patience=2, store=store)  # type: ignore[arg-type]
    first = Scripted([0.1, 0.5, 0.6, 0.7])
    fit_scripted(tmp_path, first, stopper)
    assert (stopper.best_epoch, stopper.stopped_epoch) == (0, 2)

    second = Scripted([0.9, 0.8, 0.7, 0.6, 0.5], seed=1)  # never as good as the first model's 0.1
    snaps = fit_scripted(tmp_path, second, stopper)
    assert len(snaps.states) == 5 and stopper.stopped_epoch == 0 and stopper.wait_count == 0
    assert stopper.best_epoch == 4 and float(stopper.best_score) == pytest.approx(0.5)
    assert_bit_identical(snapshot(second), snaps.states[4])


def test_a_reused_early_stopping_decides_where_to_check_for_the_new_trainer(tmp_path: Path) -> None:
    # check_on_train_epoch_end=None: after validation when validation runs twice an epoch (so twice an epoch), at
    # the end of the training epoch otherwise; the second trainer's setting decides, not the first one's
    script = [0.1, 0.5, 0.6, 0.7]

    def twice_an_epoch(stopper: EarlyStopping) -> int:
        trainer = quiet_trainer(
            tmp_path, max_epochs=4, num_sanity_val_steps=0, val_check_interval=0.5, callbacks=[stopper]
        )
        trainer.fit(Scripted(script), loader(), loader(8, seed=1))
        return stopper.stopped_epoch

    fresh = twice_an_epoch(EarlyStopping("score", patience=2))
    reused = EarlyStopping("score", patience=2)
    fit_scripted(tmp_path, Scripted(script), reused)  # validation once an epoch: checks at the epoch's end
    assert (fresh, twice_an_epoch(reused)) == (1, 1)  # two checks without improvement by epoch 1's first half


def test_a_reused_early_stopping_resumed_from_a_checkpoint_keeps_the_checkpoints_state(
    tmp_path: Path,
) -> None:
    script = [0.9, 0.3, 0.5, 0.6, 0.7]  # best at epoch 1
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full = Scripted(script)
    full_snaps = fit_scripted(tmp_path / "full", full, EarlyStopping("score", patience=10), checkpoint=ckpt)

    stopper = EarlyStopping("score", patience=10)
    fit_scripted(tmp_path / "other", Scripted([0.05, 0.04], seed=3), stopper)  # leaves its own best behind
    resumed = Scripted(script)
    fit_scripted(tmp_path / "resumed", resumed, stopper, ckpt_path=tmp_path / "ckpt" / "epoch=2.ckpt")
    assert stopper.best_epoch == 1 and float(stopper.best_score) == pytest.approx(0.3)
    assert_bit_identical(snapshot(resumed), full_snaps.states[1])


# ------------------------------------------------------------ 3. EarlyStopping(store="disk") across runs --
DISK_SCRIPT = [0.9, 0.3, 0.5, 0.6, 0.7]  # best at epoch 1, never stops (patience 10)


def disk_run(root: Path, name: str, seed: int) -> tuple[EarlyStopping, EpochSnapshots]:
    """A full run in the shared ``root`` that keeps a checkpoint per epoch in ``root/name``."""
    stopper = EarlyStopping("score", patience=10, store="disk")
    ckpt = ModelCheckpoint(dirpath=root / name, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    return stopper, fit_scripted(root, Scripted(DISK_SCRIPT, seed=seed), stopper, checkpoint=ckpt)


def test_two_disk_runs_in_one_directory_never_mix_their_weights(tmp_path: Path) -> None:
    _, run_a = disk_run(tmp_path, "a", seed=0)
    _, run_b = disk_run(tmp_path, "b", seed=1)  # same directory, same monitor, same best epoch and step
    resumed = Scripted(DISK_SCRIPT, seed=0)
    stopper = EarlyStopping("score", patience=10, store="disk")
    fit_scripted(tmp_path, resumed, stopper, ckpt_path=tmp_path / "a" / "epoch=2.ckpt")
    assert stopper.best_epoch == 1
    assert_bit_identical(snapshot(resumed), run_a.states[1])  # run a's best, not run b's
    assert any(not torch.equal(run_a.states[1][k], run_b.states[1][k]) for k in run_a.states[1])
    assert len(list(tmp_path.glob("best-weights-score-min-*.safetensors"))) == 2  # one file per run


def test_the_disk_file_is_tied_to_its_run_and_verified_on_restore(tmp_path: Path) -> None:
    stopper_a, _ = disk_run(tmp_path, "a", seed=0)
    stopper_b, _ = disk_run(tmp_path, "b", seed=1)
    path_a, path_b = (
        Path(stopper_a.state_dict()["best_weights_path"]),
        Path(stopper_b.state_dict()["best_weights_path"]),
    )
    with safe_open(str(path_a), framework="pt") as f:
        meta = f.metadata()
    assert meta["run_id"] == stopper_a.state_dict()["run_id"] != stopper_b.state_dict()["run_id"]
    assert meta["sha256"] == stopper_a.state_dict()["best_weights_sha256"] and len(meta["sha256"]) == 64

    # another run's file in this run's place: refused, naming the file; never loaded
    path_a.write_bytes(path_b.read_bytes())
    resumed = Scripted(DISK_SCRIPT, seed=0)
    with pytest.raises(RuntimeError, match=r"best-weights.*another run"):
        fit_scripted(
            tmp_path,
            resumed,
            EarlyStopping("score", patience=10, store="disk"),
            ckpt_path=tmp_path / "a" / "epoch=2.ckpt",
        )
    # this run's metadata over other weights (edited in place, same size): refused by the content hash
    tensors = load_file(path_b)
    save_file(tensors, str(path_a), metadata=meta)
    with pytest.raises(RuntimeError, match=r"best-weights.*content hash"):
        fit_scripted(
            tmp_path,
            Scripted(DISK_SCRIPT, seed=0),
            EarlyStopping("score", patience=10, store="disk"),
            ckpt_path=tmp_path / "a" / "epoch=2.ckpt",
        )


# ----------------------------------------------------------- 4. an unfreeze milestone after a resume --
RunResult = tuple[Path, dict[str, Tensor], list[Any]]


@pytest.fixture(scope="module")
def per_step_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunResult]:
    """An uninterrupted run (LayerFreezer with a milestone at epoch ``MILESTONE``) that checkpoints after every
    training batch (``step=N.ckpt``), with a resumable loader so that a mid-epoch resume sees the same batches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in every test (tests/conftest.py): the same reductions, bit for bit
    root = tmp_path_factory.mktemp("per-step")
    every_step = ModelCheckpoint(
        dirpath=root / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1
    )
    model = worker.Classifier()
    trainer = quiet_trainer(
        root,
        max_epochs=worker.EPOCHS,
        callbacks=[worker.make_freezer(), every_step],
        enable_checkpointing=True,
    )
    trainer.fit(model, worker.make_loader())
    groups = [(g.get("name"), g["lr"]) for g in trainer.optimizers[0].param_groups]
    assert [name for name, _ in groups] == [None, f"unfrozen-epoch{worker.MILESTONE}"]
    yield root / "ckpt", worker.snapshot(model), groups
    torch.set_num_threads(threads)


def resume_matches(root: Path, per_step_run: RunResult, step: int) -> None:
    ckpt_dir, expected, groups = per_step_run
    model = worker.Classifier()
    trainer = quiet_trainer(root, max_epochs=worker.EPOCHS, callbacks=[worker.make_freezer()])
    trainer.fit(model, worker.make_loader(), ckpt_path=ckpt_dir / f"step={step}.ckpt")
    assert_bit_identical(worker.snapshot(model), expected, f"resumed from step {step}")
    assert [(g.get("name"), g["lr"]) for g in trainer.optimizers[0].param_groups] == groups


BEFORE = (worker.MILESTONE - 1) * worker.STEPS_PER_EPOCH  # global step at the end of the epoch before that


@pytest.mark.parametrize(
    "step",
    [
        BEFORE + 2,  # mid-epoch, the epoch before the milestone
        BEFORE
        + worker.STEPS_PER_EPOCH,  # the last batch of the epoch before the milestone (issue 12, item 4)
        BEFORE + worker.STEPS_PER_EPOCH + 1,  # the first batch of the milestone's epoch
        BEFORE + 2 * worker.STEPS_PER_EPOCH,  # the last batch of the milestone's epoch
    ],
)
def test_resume_around_a_milestone_is_bit_identical(
    tmp_path: Path, per_step_run: RunResult, step: int
) -> None:
    resume_matches(tmp_path, per_step_run, step)


@pytest.mark.slow
def test_resume_at_every_batch_around_a_milestone_is_bit_identical(
    tmp_path: Path, per_step_run: RunResult
) -> None:
    # every batch of the epochs before, at and after the milestone
    for step in range(BEFORE + 1, BEFORE + 3 * worker.STEPS_PER_EPOCH + 1):
        resume_matches(tmp_path / str(step), per_step_run, step)
