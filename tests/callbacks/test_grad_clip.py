"""GradientClipping: clipped gradients against torch's own clip functions, step skipping, logging, resume."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_dnn.callbacks.grad_clip import GradientClipping


def fit_and_record(callback, model, loader, trainer_kwargs, grad_recorder, **overrides):
    """Fit with recorders before and after ``callback``; return (trainer, grads before, grads after)."""
    before, after = grad_recorder(), grad_recorder()
    trainer = pl.Trainer(**{**trainer_kwargs, **overrides}, callbacks=[before, callback, after])
    trainer.fit(model, loader)
    assert len(before.grads) == len(after.grads) > 0
    return trainer, before.grads, after.grads


def reference_clip_norm(grads: dict[str, Tensor], names, max_norm, norm_type) -> dict[str, Tensor]:
    """torch.nn.utils.clip_grad_norm_ over clones of ``grads[names]`` (others returned unchanged)."""
    out = {n: g.clone() for n, g in grads.items()}
    params = []
    for n in names:
        p = nn.Parameter(torch.zeros_like(out[n]))
        p.grad = out[n]
        params.append(p)
    torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type, foreach=False)
    return out


@pytest.fixture
def loud_loader(tiny_loader):
    """Inputs large enough that gradients exceed the thresholds below."""
    return tiny_loader(scale=20.0)


def test_value_clipping_equals_clamp(tiny_mlp, tiny_module, loud_loader, trainer_kwargs, grad_recorder):
    _, before, after = fit_and_record(
        GradientClipping(value=0.05), tiny_module(tiny_mlp()), loud_loader, trainer_kwargs, grad_recorder
    )
    assert any((g.abs() > 0.05).any() for g in before[0].values())
    for b, a in zip(before, after, strict=True):
        for name, g in b.items():
            assert torch.equal(a[name], g.clamp(-0.05, 0.05)), name


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_global_norm_equals_clip_grad_norm(
    tiny_mlp, tiny_module, loud_loader, trainer_kwargs, grad_recorder, norm_type
):
    callback = GradientClipping(norm=0.5, norm_type=norm_type)
    _, before, after = fit_and_record(
        callback, tiny_module(tiny_mlp()), loud_loader, trainer_kwargs, grad_recorder, max_steps=2
    )
    for b, a in zip(before, after, strict=True):
        assert (
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g, norm_type) for g in b.values()]), norm_type
            )
            > 0.5
        )
        expected = reference_clip_norm(b, list(b), 0.5, norm_type)
        for name in b:
            torch.testing.assert_close(a[name], expected[name], rtol=1e-6, atol=1e-8)


def test_per_parameter_norms(tiny_mlp, tiny_module, loud_loader, trainer_kwargs, grad_recorder):
    callback = GradientClipping(norm=1.0, per_parameter=True)
    _, before, after = fit_and_record(
        callback, tiny_module(tiny_mlp()), loud_loader, trainer_kwargs, grad_recorder, max_steps=2
    )
    for b, a in zip(before, after, strict=True):
        assert any(g.norm() <= 1.0 for g in b.values()) and any(g.norm() > 1.0 for g in b.values())
        for name, g in b.items():
            expected = reference_clip_norm(b, [name], 1.0, 2.0)[name]
            torch.testing.assert_close(a[name], expected, rtol=1e-6, atol=1e-8)
            if g.norm() <= 1.0:
                assert torch.equal(a[name], g)


def test_pattern_clips_only_the_selected_layers(
    tiny_mlp, tiny_module, loud_loader, trainer_kwargs, grad_recorder
):
    callback = GradientClipping(norm=0.1, pattern="hidden[12]")
    _, before, after = fit_and_record(
        callback, tiny_module(tiny_mlp()), loud_loader, trainer_kwargs, grad_recorder, max_steps=2
    )
    for b, a in zip(before, after, strict=True):
        selected = [n for n in b if n.startswith(("net.hidden1.", "net.hidden2."))]
        assert len(selected) == 4
        expected = reference_clip_norm(b, selected, 0.1, 2.0)
        for name in b:
            if name in selected:
                torch.testing.assert_close(a[name], expected[name], rtol=1e-6, atol=1e-8)
                assert not torch.equal(a[name], b[name])
            else:
                assert torch.equal(a[name], b[name]), name


def test_value_and_norm_clip_the_norm_first(
    tiny_mlp, tiny_module, loud_loader, trainer_kwargs, grad_recorder
):
    callback = GradientClipping(value=0.01, norm=0.5)
    _, before, after = fit_and_record(
        callback, tiny_module(tiny_mlp()), loud_loader, trainer_kwargs, grad_recorder, max_steps=2
    )
    for b, a in zip(before, after, strict=True):
        expected = reference_clip_norm(b, list(b), 0.5, 2.0)
        for name in b:
            torch.testing.assert_close(a[name], expected[name].clamp(-0.01, 0.01), rtol=1e-6, atol=1e-8)


def test_gradient_accumulation_clips_the_accumulated_gradients_once_per_step(
    tiny_mlp, tiny_module, loud_loader, trainer_kwargs, grad_recorder
):
    callback = GradientClipping(norm=0.5)
    _, before, after = fit_and_record(
        callback,
        tiny_module(tiny_mlp()),
        loud_loader,
        trainer_kwargs,
        grad_recorder,
        accumulate_grad_batches=2,
    )
    assert len(before) == 2  # 4 micro-batches, 2 optimizer steps
    for b, a in zip(before, after, strict=True):
        expected = reference_clip_norm(b, list(b), 0.5, 2.0)
        for name in b:
            torch.testing.assert_close(a[name], expected[name], rtol=1e-6, atol=1e-8)


def test_logs_the_pre_clip_norm_on_logging_steps_only(
    tiny_mlp, tiny_module, loud_loader, trainer_kwargs, grad_recorder
):
    callback = GradientClipping(norm=0.5, pattern="output")
    trainer, before, _ = fit_and_record(
        callback, tiny_module(tiny_mlp()), loud_loader, trainer_kwargs, grad_recorder, log_every_n_steps=3
    )
    pre_clip = [
        torch.linalg.vector_norm(torch.stack([b["net.output.weight"].norm(), b["net.output.bias"].norm()]))
        for b in before
    ]
    assert len(pre_clip) == 4
    # steps 0..3 with log_every_n_steps=3: only step 2 is a logging step, so the value is step 2's, not step 3's
    torch.testing.assert_close(trainer.callback_metrics["grad_norm/output"], pre_clip[2])
    assert trainer.callback_metrics["skipped_steps/output"] == 0
    assert "grad_norm" not in trainer.callback_metrics


def test_log_norm_false_logs_nothing(tiny_mlp, tiny_module, loud_loader, trainer_kwargs):
    trainer = pl.Trainer(
        **trainer_kwargs, log_every_n_steps=1, callbacks=[GradientClipping(value=1.0, log_norm=False)]
    )
    trainer.fit(tiny_module(tiny_mlp()), loud_loader)
    assert not any(k.startswith(("grad_norm", "skipped_steps")) for k in trainer.callback_metrics)


@pytest.fixture
def nan_module(tiny_module):
    """Factory for a TinyModule whose loss is NaN at the given ``(epoch, batch_idx)`` (all ranks by default)."""

    class NanModule(tiny_module):
        def __init__(self, net, nan_at, **kwargs):
            super().__init__(net, **kwargs)
            self.nan_at = nan_at

        def compute_loss(self, batch, batch_idx):
            loss = super().compute_loss(batch, batch_idx)
            if (self.current_epoch, batch_idx) == self.nan_at:
                loss = loss * float("nan")
            return loss

    return NanModule


SGD_KW = {"momentum": 0.9, "weight_decay": 0.1}


def plain_fit_skipping(net, loader, *, epochs, skip):
    """Reference: SGD with momentum and weight decay, skipping the optimizer step of batches in ``skip``."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, **SGD_KW)
    for epoch in range(epochs):
        for i, (x, y) in enumerate(loader):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            if (epoch, i) not in skip:
                opt.step()
    return net


def test_nonfinite_gradients_skip_the_step(
    tiny_mlp, nan_module, tiny_loader, trainer_kwargs, weight_recorder
):
    net = tiny_mlp()
    reference = plain_fit_skipping(copy.deepcopy(net), tiny_loader(), epochs=1, skip={(0, 1)})
    model = nan_module(net, nan_at=(0, 1), optimizer_kwargs=SGD_KW)
    callback, recorder = GradientClipping(norm=1e3), weight_recorder()
    trainer = pl.Trainer(**trainer_kwargs, log_every_n_steps=1, callbacks=[callback, recorder])

    with pytest.warns(
        UserWarning, match=r"non-finite gradients at global step 1 .* skipping this optimizer step"
    ):
        trainer.fit(model, tiny_loader())

    assert callback.skipped_steps == 1
    assert trainer.callback_metrics["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for name, w in recorder.after_batch[0].items():  # momentum and weight decay did not move anything either
        assert torch.equal(recorder.after_batch[1][name], w), name
    for p, q in zip(model.net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_warns_once_and_counts_every_skip(tiny_mlp, nan_module, tiny_loader, trainer_kwargs):
    class NanTwice(nan_module):
        def compute_loss(self, batch, batch_idx):
            loss = super().compute_loss(batch, batch_idx)
            return loss * float("inf") if batch_idx in (1, 3) else loss

    callback = GradientClipping(value=1.0)  # the check also runs with value clipping only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pl.Trainer(**trainer_kwargs, callbacks=[callback]).fit(
            NanTwice(tiny_mlp(), nan_at=None), tiny_loader()
        )
    assert sum("non-finite gradients" in str(w.message) for w in caught) == 1
    assert callback.skipped_steps == 2


def test_skip_nonfinite_false_lets_nan_through(tiny_mlp, nan_module, tiny_loader, trainer_kwargs):
    model = nan_module(tiny_mlp(), nan_at=(0, 1))
    callback = GradientClipping(value=1.0, skip_nonfinite=False)
    pl.Trainer(**trainer_kwargs, callbacks=[callback]).fit(model, tiny_loader())
    assert callback.skipped_steps == 0
    assert not torch.isfinite(model.net.output.weight).all()


def test_resume_keeps_the_skip_count_and_equals_uninterrupted_run(
    tiny_mlp, nan_module, tiny_loader, trainer_kwargs, tmp_path
):
    net = tiny_mlp()
    kwargs = {**trainer_kwargs, "max_epochs": 2}

    def fresh():
        return nan_module(copy.deepcopy(net), nan_at=(0, 1), optimizer="adam", lr=0.05)

    def clip():
        return GradientClipping(norm=0.5, pattern="hidden1")

    uninterrupted, c0 = fresh(), clip()
    with pytest.warns(UserWarning, match="non-finite"):
        pl.Trainer(**kwargs, callbacks=[c0]).fit(uninterrupted, tiny_loader())

    first, c1 = fresh(), clip()
    trainer = pl.Trainer(**{**kwargs, "max_epochs": 1}, callbacks=[c1])
    with pytest.warns(UserWarning, match="non-finite"):
        trainer.fit(first, tiny_loader())
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed, c2 = fresh(), clip()
    pl.Trainer(**kwargs, callbacks=[c2]).fit(resumed, tiny_loader(), ckpt_path=tmp_path / "mid.ckpt")

    assert c0.skipped_steps == c1.skipped_steps == c2.skipped_steps == 1
    for p, q in zip(resumed.parameters(), uninterrupted.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


class SparseEmbedding(pl.LightningModule):
    """A sparse embedding (not clipped) feeding a dense head (clipped); the embedding's gradient is inf at step 1."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4, sparse=True)
        self.head = nn.Linear(4, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.head(self.embed(x)), y)
        if batch_idx == 1:
            self.embed.weight.register_hook(lambda g: g * float("inf"))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_sparse_gradient_outside_the_pattern_is_checked_not_refused(trainer_kwargs):
    data = torch.utils.data.TensorDataset(torch.arange(16) % 10, torch.arange(16) % 3)
    model, clip = SparseEmbedding(), GradientClipping(norm=1.0, pattern="head")
    trainer = pl.Trainer(**{**trainer_kwargs, "limit_train_batches": 2}, callbacks=[clip])
    with pytest.warns(UserWarning, match=r"non-finite gradients at global step 1 in embed\.weight"):
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    assert clip.skipped_steps == 1
    assert torch.isfinite(model.embed.weight).all()


def test_state_dict_round_trip_and_state_key():
    a = GradientClipping(norm=1.0)
    a.load_state_dict({"skipped_steps": 3})
    b = GradientClipping(norm=1.0)
    b.load_state_dict(a.state_dict())
    assert b.skipped_steps == 3
    b.load_state_dict({})
    assert b.skipped_steps == 0
    keys = {
        GradientClipping(norm=1.0).state_key,
        GradientClipping(norm=2.0).state_key,
        GradientClipping(value=1.0).state_key,
        GradientClipping(norm=1.0, pattern="hidden1").state_key,
        GradientClipping(norm=1.0, per_parameter=True).state_key,
        GradientClipping(norm=1.0, norm_type=1.0).state_key,
    }
    assert len(keys) == 6


def test_refuses_trainer_gradient_clip_val(tiny_mlp, tiny_module, tiny_loader, trainer_kwargs):
    trainer = pl.Trainer(**trainer_kwargs, gradient_clip_val=0.5, callbacks=[GradientClipping(norm=1.0)])
    with pytest.raises(ValueError, match=r"Trainer\(gradient_clip_val=0.5\).*Remove one of them"):
        trainer.fit(tiny_module(tiny_mlp()), tiny_loader())


def test_pattern_selecting_nothing_fails_at_fit_start(tiny_mlp, tiny_module, tiny_loader, trainer_kwargs):
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[GradientClipping(norm=1.0, pattern="hidden9")])
    with pytest.raises(ValueError, match=r"'hidden9' selects no module or parameter. Available modules: net, net.hidden1"):
        trainer.fit(tiny_module(tiny_mlp()), tiny_loader())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, r"needs `value` and/or `norm`, got neither"),
        ({"value": 0}, ValueError, r"`value` must be > 0.0, got 0"),
        ({"norm": -1.0}, ValueError, r"`norm` must be > 0.0, got -1.0"),
        ({"norm": "1"}, TypeError, r"`norm` must be a real number, got str"),
        ({"norm": 1.0, "norm_type": 0}, ValueError, r"`norm_type` must be > 0.0, got 0"),
        (
            {"norm": 1.0, "norm_type": float("nan")},
            ValueError,
            r"`norm_type` must be > 0 or math.inf, got nan",
        ),
        ({"norm": 1.0, "norm_type": -math.inf}, ValueError, r"`norm_type` must be > 0 or math.inf, got -inf"),
        (
            {"value": 1.0, "per_parameter": True},
            ValueError,
            r"`per_parameter=True` clips norms, so it needs `norm`",
        ),
        ({"norm": 1.0, "per_parameter": 1}, TypeError, r"`per_parameter` must be a bool, got int"),
        ({"norm": 1.0, "log_norm": None}, TypeError, r"`log_norm` must be a bool"),
        ({"norm": 1.0, "pattern": "["}, ValueError, r"`pattern` contains an invalid regex"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GradientClipping(**kwargs)


class RankNanModule(pl.LightningModule):
    """Module-level (picklable for ``ddp_spawn``): the forward pass overflows on rank 0 only, at batch 1.

    Rank 0's batch norm sees an inf input there (its running statistics turn NaN in the forward pass), and DDP
    broadcasts rank 0's buffers to every rank at the next forward pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        with torch.no_grad():
            self.net[0].weight.mul_(10.0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if (self.global_rank, batch_idx) == (0, 1):
            x = x.clone()
            x[0, 0] = float("inf")
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class ReportRanks(pl.Callback):
    """At the end of training, gather each rank's parameters and skip count and save them from rank 0."""

    def __init__(self, path) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module):
        clip = next(c for c in trainer.callbacks if isinstance(c, GradientClipping))
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = pl_module.all_gather(torch.cat([flat, torch.tensor([float(clip.skipped_steps)])]))
        buffers = torch.cat([b.detach().double().flatten() for b in pl_module.buffers()])
        buffers = pl_module.all_gather(buffers)
        if trainer.is_global_zero:
            row_norms = pl_module.net[0].weight.norm(dim=1)
            torch.save({"gathered": gathered, "buffers": buffers, "row_norms": row_norms}, self.path)


@pytest.mark.ddp
def test_ddp_ranks_agree_on_skipping(tiny_loader, trainer_kwargs, tmp_path):
    """NaN gradients on one rank become NaN on all after the all-reduce, so every rank skips the same step, and
    restores its batch-norm statistics (rank 0's NaN ones would otherwise reach every rank by DDP's broadcast)."""
    from lightning_dnn.callbacks.max_norm import MaxNorm

    report = tmp_path / "ranks.pt"
    trainer = pl.Trainer(
        **{**trainer_kwargs, "devices": 2},
        strategy="ddp_spawn",
        callbacks=[GradientClipping(norm=1.0), MaxNorm(1.0), ReportRanks(report)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer.fit(RankNanModule(), tiny_loader())
        except torch.multiprocessing.ProcessExitedException as err:
            # Rarely a spawned worker aborts in gloo's thread teardown at interpreter exit ("terminate called
            # without an active exception"), after training and the report are done. That is not what this
            # test is about; anything earlier (no report written) still fails it.
            if err.signal_name != "SIGABRT" or not report.exists():
                raise
    result = torch.load(report)
    gathered = result["gathered"]
    assert gathered.shape[0] == 2
    assert torch.equal(gathered[0], gathered[1])  # identical replicas, identical skip counts
    assert gathered[0, -1] == 1.0
    assert torch.isfinite(gathered).all()
    assert torch.isfinite(result["buffers"]).all()
    assert (result["row_norms"] <= 1.0 + 1e-6).all()


def amp_plugin():
    """16-bit AMP with a GradScaler, on CPU (what Trainer(precision="16-mixed") builds on a GPU)."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))


def test_amp_clips_unscaled_gradients(tiny_mlp, tiny_module, loud_loader, trainer_kwargs, grad_recorder):
    net = tiny_mlp()
    fp32 = copy.deepcopy(net)
    x, y = next(iter(loud_loader))
    nn.functional.cross_entropy(fp32(x), y).backward()

    callback = GradientClipping(norm=1.0)
    _, before, after = fit_and_record(
        callback,
        tiny_module(net),
        loud_loader,
        trainer_kwargs,
        grad_recorder,
        max_steps=1,
        plugins=[amp_plugin()],
    )
    for name, p in fp32.named_parameters():  # unscaled: within fp16 rounding of fp32, not 256 times larger
        torch.testing.assert_close(before[0][f"net.{name}"].norm(), p.grad.norm(), rtol=1e-2, atol=0)
    expected = reference_clip_norm(before[0], list(before[0]), 1.0, 2.0)
    for name in before[0]:
        torch.testing.assert_close(after[0][name], expected[name], rtol=1e-6, atol=1e-8)


def test_amp_leaves_nonfinite_steps_to_the_grad_scaler(
    tiny_mlp, nan_module, tiny_loader, trainer_kwargs, weight_recorder
):
    plugin = amp_plugin()
    callback, recorder = GradientClipping(norm=1.0), weight_recorder()
    trainer = pl.Trainer(**trainer_kwargs, plugins=[plugin], callbacks=[callback, recorder])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(nan_module(tiny_mlp(), nan_at=(0, 1)), tiny_loader())
    assert not any("non-finite gradients" in str(w.message) for w in caught)
    assert callback.skipped_steps == 0  # the scaler skipped the step, and lowered its scale
    assert plugin.scaler.get_scale() < 2.0**8
    for name, w in recorder.after_batch[0].items():
        assert torch.equal(recorder.after_batch[1][name], w), name
