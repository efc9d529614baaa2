"""Autoencoder: reconstruction on real data, tied weights, noise, greedy layer-wise phases, resume, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from lightning_dnn.data import ArrayDataModule, DigitsDataModule
from lightning_dnn.nn import MLP, ConvNet
from lightning_dnn.pretrain import Autoencoder
from tests.trainer_utils import quiet_trainer


def _digits(**kwargs: object) -> DigitsDataModule:
    options: dict[str, object] = {"batch_size": 64, "val_split": 0.1}
    options.update(kwargs)
    return DigitsDataModule(**options)  # type: ignore[arg-type]


def _net(hidden: tuple[int, ...] = (32, 16, 8), seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(64, hidden, 10)


def test_reconstruction_improves_on_real_data(tmp_path: Path) -> None:
    """Training lowers the test reconstruction error of digits well below its value at initialization."""
    data = _digits()
    ae = Autoencoder(_net((32, 16)), lr=3e-3)
    before = quiet_trainer(tmp_path).test(ae, datamodule=data, verbose=False)[0]["test_mse"]
    quiet_trainer(tmp_path, max_epochs=15).fit(ae, datamodule=data)
    after = quiet_trainer(tmp_path).test(ae, datamodule=data, verbose=False)[0]["test_mse"]
    x, _ = data.tensors("test")
    ae.eval()
    with torch.no_grad():  # the logged value is the plain MSE of the reconstruction
        assert after == pytest.approx(F.mse_loss(ae(x), x).item(), rel=1e-4)
    assert after < 0.5 * before
    baseline = ((x - data.tensors("train")[0].mean(0)) ** 2).mean().item()  # predicting the mean image
    assert after < 0.6 * baseline


def test_tied_weights_are_one_tensor() -> None:
    net = _net()
    ae = Autoencoder(net, tied=True)
    for k, block in enumerate(net.hidden_blocks, start=1):
        mirror = ae.decoder.mirror(k).linear
        assert torch.equal(mirror.weight, block.linear.weight.t())
        assert mirror.weight.data_ptr() == block.linear.weight.data_ptr()  # a view, not a copy
    untied = Autoencoder(_net(), tied=False)
    encoder_params = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("output"))
    weights = sum(b.linear.weight.numel() for b in net.hidden_blocks)
    decoder_biases = 64 + 32 + 16
    head = sum(p.numel() for p in net.output.parameters())
    assert sum(p.numel() for p in ae.parameters()) == encoder_params + head + decoder_biases
    assert sum(p.numel() for p in untied.parameters()) == encoder_params + head + decoder_biases + weights
    assert all(not n.endswith("weight") for n, _ in ae.decoder.named_parameters())

    ae(torch.rand(4, 64)).pow(2).sum().backward()
    grad = net.hidden1.linear.weight.grad
    assert grad is not None
    # the gradient reaches the one tensor from both uses: encoder and decoder; compare with an explicit graph
    w = net.hidden1.linear.weight.detach().clone().requires_grad_(True)
    x = torch.rand(4, 64)
    net.zero_grad()
    ae(x).pow(2).sum().backward()
    h1 = F.elu(F.linear(x, w, net.hidden1.linear.bias))
    h = net.hidden3(net.hidden2(h1))
    d = ae.decoder.mirror3(h)
    d = ae.decoder.mirror2(d)
    out = F.linear(d, w.t(), ae.decoder.mirror1.linear.bias)
    out.pow(2).sum().backward()
    assert torch.allclose(net.hidden1.linear.weight.grad, w.grad, atol=1e-6)  # type: ignore[arg-type]


def test_tied_checkpoint_round_trip(tmp_path: Path) -> None:
    ae = Autoencoder(_net(), tied=True, noise="gaussian")
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(ae, datamodule=_digits())
    trainer.save_checkpoint(tmp_path / "ae.ckpt")
    loaded = Autoencoder.load_from_checkpoint(tmp_path / "ae.ckpt")  # rebuilds the MLP from the hparams
    assert loaded.tied and loaded.noise == "gaussian"
    assert loaded.decoder.mirror2.linear.weight.data_ptr() == loaded.encoder.hidden2.linear.weight.data_ptr()
    x = torch.rand(3, 64)
    ae.eval()
    loaded.eval()
    assert torch.equal(ae(x), loaded(x))


@pytest.mark.parametrize("noise", ["gaussian", "mask"])
def test_noise_changes_the_input_only_in_training(noise: str) -> None:
    ae = Autoencoder(_net(), noise=noise, noise_std=0.5, mask_prob=0.5)
    seen: list[torch.Tensor] = []
    ae.encoder.hidden1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    x = torch.rand(16, 64) + 0.1
    ae.train()
    ae.training_step(x, 0)
    corrupted = seen[-1]
    if noise == "mask":
        zeroed = (corrupted == 0).float().mean().item()
        assert 0.35 < zeroed < 0.65 and torch.equal(corrupted[corrupted != 0], x[corrupted != 0])
    else:
        assert 0.4 < (corrupted - x).std().item() < 0.6
    ae.eval()
    ae.validation_step(x, 0)
    assert torch.equal(seen[-1], x)  # clean in evaluation
    plain = Autoencoder(_net(), noise="none")
    plain.encoder.hidden1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    plain.train()
    plain.training_step(x, 0)
    assert torch.equal(seen[-1], x)


class _Snapshots(Callback):
    """The network's state at the end of every training epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    """The layer names (``encoder.hidden2``, ``decoder.mirror1``) with a tensor that differs."""
    return {".".join(k.split(".")[:2]) for k in a if not torch.equal(a[k], b[k])}


@pytest.mark.parametrize("tied", [False, True])
def test_layerwise_trains_one_layer_at_a_time_on_schedule(tmp_path: Path, tied: bool) -> None:
    net = MLP(64, (32, 16, 8), 10, norm="batch")  # batch-norm buffers of frozen layers must not move either
    ae = Autoencoder(net, layerwise=True, epochs_per_layer=2, tied=tied, lr=1e-2)
    snaps = _Snapshots()
    start = {k: v.detach().clone() for k, v in ae.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_epochs=7, limit_train_batches=3, callbacks=[snaps])
    trainer.fit(ae, datamodule=_digits())
    states = [start, *snaps.states]
    expected = [1, 1, 2, 2, 3, 3, None]  # the phase of each epoch; epoch 6: the whole stack
    for epoch, phase in enumerate(expected):
        changed = _changed(states[epoch], states[epoch + 1])
        if phase is None:
            assert {"encoder.hidden1", "encoder.hidden2", "encoder.hidden3"} <= changed
        else:
            assert changed == {f"encoder.hidden{phase}", f"decoder.mirror{phase}"}, (epoch, changed)
    assert ae.phase is None


def test_layerwise_phase_k_reconstructs_the_frozen_codes() -> None:
    """Phase 2's loss is the MSE between hidden1's codes (eval mode) and mirror2(hidden2(codes))."""
    torch.manual_seed(0)
    net = MLP(64, (32, 16), 10, dropout=0.5)
    ae = Autoencoder(net, layerwise=True, loss="bce")

    class _Trainer:  # the phase follows current_epoch
        current_epoch = 1
        global_rank = 0
        world_size = 1

    ae._trainer = _Trainer()  # type: ignore[assignment]
    ae.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    ae.train()
    x = torch.rand(8, 64)
    torch.manual_seed(1)
    loss = ae.training_step(x, 0)
    assert net.hidden1.training and net.hidden1.dropout.training  # the frozen prefix's modes are restored
    net.hidden1.eval()
    codes = net.hidden1(x).detach()
    torch.manual_seed(1)  # the same dropout mask in hidden2
    expected = F.mse_loss(ae.decoder.mirror2(net.hidden2(codes)), codes)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert net.hidden1.linear.weight.grad is None and net.hidden2.linear.weight.grad is not None


def test_resume_mid_phase_equals_uninterrupted(tmp_path: Path) -> None:
    def run(max_epochs: int, ckpt: Path | None = None, save: Path | None = None) -> Autoencoder:
        pl.seed_everything(3)
        ae = Autoencoder(_net(seed=3), layerwise=True, epochs_per_layer=2, noise="gaussian", lr=1e-2)
        trainer = quiet_trainer(tmp_path, max_epochs=max_epochs, limit_train_batches=4, deterministic=True)
        trainer.fit(ae, datamodule=_digits(), ckpt_path=ckpt)
        if save is not None:
            trainer.save_checkpoint(save)
        return ae

    full = run(5)
    run(3, save=tmp_path / "mid.ckpt")  # stops after epoch 2, the middle of phase 2 (epochs 2-3)
    resumed = run(5, ckpt=tmp_path / "mid.ckpt")
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_bce_refuses_inputs_outside_unit_range(tmp_path: Path) -> None:
    data = _digits(scaling="standardize")
    ae = Autoencoder(_net(), loss="bce")
    with pytest.raises(ValueError, match=r"loss='bce' needs inputs in \[0, 1\].*scaling='unit'"):
        quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(ae, datamodule=data)
    ok = Autoencoder(_net(), loss="bce")
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2).fit(ok, datamodule=_digits())
    x = torch.rand(5, 64)
    ok.eval()
    out = ok(x)
    assert bool(((out > 0) & (out < 1)).all())  # the reconstruction is a sigmoid
    logits = ok.decoder(ok.encode(x))
    loss = ok._loss(logits, x, "bce")
    assert loss.item() == pytest.approx(F.binary_cross_entropy(out, x).item(), rel=1e-5)


def test_png_grid_is_written_after_validation(tmp_path: Path) -> None:
    ae = Autoencoder(_net(), grid_samples=4)
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, limit_train_batches=2, logger=CSVLogger(tmp_path), num_sanity_val_steps=0
    )
    trainer.fit(ae, datamodule=_digits())
    assert trainer.log_dir is not None
    pngs = sorted((Path(trainer.log_dir) / "reconstructions").glob("*.png"))
    assert [p.name for p in pngs] == ["epoch_000.png", "epoch_001.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inputs_are_flattened_as_the_mlp_does(tmp_path: Path) -> None:
    images = DigitsDataModule(flatten=False, batch_size=64)
    ae = Autoencoder(_net())
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2).fit(ae, datamodule=images)
    x = torch.rand(2, 1, 8, 8)
    ae.eval()
    assert torch.equal(ae(x), ae(x.reshape(2, 64)))
    assert torch.equal(ae.encode(x), ae.encoder.forward_features(x))  # the codings are the MLP's features


def test_unlabelled_batches_are_accepted(tmp_path: Path) -> None:
    x = torch.rand(40, 64)
    data = ArrayDataModule(x.numpy(), torch.zeros(40, dtype=torch.long).numpy(), batch_size=10)
    ae = Autoencoder(_net())
    assert ae.training_step(x[:10], 0).ndim == 0  # a bare x
    quiet_trainer(tmp_path, max_epochs=1).fit(ae, datamodule=data)  # (x, y): labels ignored


def test_refusals() -> None:
    with pytest.raises(TypeError, match=r"hidden1\.\.hiddenN.*ConvNet"):
        Autoencoder(ConvNet(1, (4, 8), 10))
    with pytest.raises(TypeError, match=r"hidden1\.\.hiddenN"):
        Autoencoder(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="`noise` must be one of"):
        Autoencoder(_net(), noise="salt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`loss` must be one of"):
        Autoencoder(_net(), loss="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`mask_prob` must be < 1\.0"):
        Autoencoder(_net(), mask_prob=1.0)
    with pytest.raises(ValueError, match="`epochs_per_layer` must be >= 1"):
        Autoencoder(_net(), epochs_per_layer=0)
    with pytest.raises(TypeError, match="`tied` must be a bool"):
        Autoencoder(_net(), tied=1)  # type: ignore[arg-type]
    ae = Autoencoder(_net())
    with pytest.raises(ValueError, match=r"takes 64 input features.*\[3, 10\]"):
        ae.training_step(torch.rand(3, 10), 0)


def test_checkpointing_callback_does_not_break_layerwise(tmp_path: Path) -> None:
    """ModelCheckpoint on val_loss works across phases (the logged metrics exist every epoch)."""
    ae = Autoencoder(_net(), layerwise=True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss")
    trainer = quiet_trainer(
        tmp_path, max_epochs=3, limit_train_batches=2, enable_checkpointing=True, callbacks=[checkpoint]
    )
    trainer.fit(ae, datamodule=_digits())
    assert checkpoint.best_model_path and set(trainer.callback_metrics) >= {
        "train_loss",
        "val_loss",
        "val_mse",
    }


def test_layerwise_under_ddp_needs_find_unused_parameters() -> None:
    from types import SimpleNamespace

    from pytorch_lightning.strategies import DDPStrategy

    ae = Autoencoder(_net(), layerwise=True)
    ae._trainer = SimpleNamespace(world_size=2, strategy=DDPStrategy())  # type: ignore[assignment]
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        ae.setup("fit")
    ae._trainer = SimpleNamespace(  # type: ignore[assignment]
        world_size=2, strategy=DDPStrategy(find_unused_parameters=True)
    )
    ae.setup("fit")
    Autoencoder(_net()).setup("fit")  # the whole stack uses every parameter it trains


class NoiseRecorder(Autoencoder):
    """Records the noise (corrupted minus clean input) of every training batch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.noises: list[torch.Tensor] = []

    def _corrupt(self, x: torch.Tensor, *args: int) -> torch.Tensor:
        out = super()._corrupt(x, *args)
        self.noises.append((out - x).detach().clone())
        return out


@pytest.mark.parametrize("accumulate", [1, 2])
def test_every_batch_draws_its_own_noise_also_within_an_accumulated_step(tmp_path: Path, accumulate: int) -> None:
    ae = NoiseRecorder(_net(), noise="gaussian", noise_std=0.5)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0,
                            accumulate_grad_batches=accumulate)
    trainer.fit(ae, datamodule=_digits())
    assert len(ae.noises) == 4 and trainer.global_step == 4 // accumulate
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(ae.noises[i], ae.noises[j], atol=1e-4), (i, j)  # float rounding of x
    spread = torch.cat([n.flatten() for n in ae.noises]).std().item()
    assert spread == pytest.approx(0.5, rel=0.05)
