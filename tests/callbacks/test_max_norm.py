"""MaxNorm: rescaled weights against a plain-loop reference of the formula, on plain LightningModules."""

from __future__ import annotations

import copy
import re

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_dnn.callbacks.max_norm import MaxNorm

C = 1.0  # the max norm used throughout


def clip_slices(weight: Tensor, max_norm: float, keep_dim: int) -> Tensor:
    """Reference: rescale, one slice at a time, each slice along ``keep_dim`` whose L2 norm exceeds ``max_norm``."""
    out = weight.detach().clone()
    slices = out.transpose(0, keep_dim)  # a view: writing a slice writes `out`
    for i in range(slices.shape[0]):
        n = float(slices[i].norm())
        if n > max_norm:
            slices[i] *= max_norm / n
    return out


def spread_rows(net: nn.Module, dim: int = 0) -> None:
    """Put half of the slices of every Linear/Conv weight far above the limit and half far below."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose1d):
                w = m.weight.transpose(0, dim)
                half = w.shape[0] // 2
                w[:half] *= 4.0 / w[:half].flatten(1).norm(dim=1).view(-1, *[1] * (w.dim() - 1))
                w[half:] *= 0.3 / w[half:].flatten(1).norm(dim=1).view(-1, *[1] * (w.dim() - 1))


def plain_fit(net, loader, *, steps, accumulate=1, lr=0.1, constrain=None, make_opt=None):
    """Reference training loop: SGD on cross-entropy, ``constrain(net)`` after each optimizer step."""
    opt = make_opt(net.parameters()) if make_opt else torch.optim.SGD(net.parameters(), lr=lr)
    batches = iter(list(loader) * steps * accumulate)
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            x, y = next(batches)
            (nn.functional.cross_entropy(net(x), y) / accumulate).backward()
        opt.step()
        if constrain is not None:
            constrain(net)
    return net


def constrain_linear_rows(net: nn.Module, keep_dim: int = 0) -> None:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(clip_slices(m.weight, C, keep_dim))


def test_training_matches_plain_loop_reference(tiny_mlp, tiny_module, tiny_loader, trainer_kwargs):
    net = tiny_mlp(batch_norm=True)
    spread_rows(net)
    reference = plain_fit(copy.deepcopy(net), tiny_loader(), steps=4, constrain=constrain_linear_rows)

    model = tiny_module(net)
    pl.Trainer(**trainer_kwargs, callbacks=[MaxNorm(C)]).fit(model, tiny_loader())

    for (name, p), q in zip(model.net.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    for m in model.net.modules():
        if isinstance(m, nn.Linear):
            assert (m.weight.norm(dim=1) <= C + 1e-6).all()


def test_one_step_rows_under_the_limit_biases_and_norm_layers_untouched(
    tiny_mlp, tiny_module, tiny_loader, trainer_kwargs
):
    net = tiny_mlp(batch_norm=True)
    spread_rows(net)
    unconstrained = plain_fit(copy.deepcopy(net), tiny_loader(), steps=1)

    model = tiny_module(net)
    pl.Trainer(**{**trainer_kwargs, "max_steps": 1}, callbacks=[MaxNorm(C)]).fit(model, tiny_loader())

    got = dict(model.net.named_parameters())
    for name, ref in unconstrained.named_parameters():
        if name.endswith("weight") and ref.dim() == 2:
            under = ref.norm(dim=1) <= C
            assert under.any() and (~under).any()
            assert torch.equal(got[name][under], ref[under]), name  # bit for bit
            torch.testing.assert_close(got[name][~under], clip_slices(ref, C, 0)[~under])  # tf.clip_by_norm
            torch.testing.assert_close(got[name][~under].norm(dim=1), torch.full(((~under).sum(),), C))
            with torch.no_grad():  # the documented formula exactly: w * C / (||w|| + 1e-7), torch.renorm's
                row_norms = ref.norm(dim=1, keepdim=True)
                expected = ref * (C / (row_norms + 1e-7))
            assert (got[name][~under] - expected[~under]).abs().max() <= 1e-7, name
        else:  # biases, batch-norm weights and biases
            assert torch.equal(got[name], ref), name


def test_axis_input_clips_columns(tiny_mlp, tiny_module, tiny_loader, trainer_kwargs):
    net = tiny_mlp()
    spread_rows(net, dim=1)
    reference = plain_fit(
        copy.deepcopy(net), tiny_loader(), steps=4, constrain=lambda n: constrain_linear_rows(n, keep_dim=1)
    )

    model = tiny_module(net)
    pl.Trainer(**trainer_kwargs, callbacks=[MaxNorm(C, axis="input")]).fit(model, tiny_loader())

    for p, q in zip(model.net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    weight = model.net.output.weight  # [3, 8]
    assert (weight.norm(dim=0) <= C + 1e-6).all()
    assert (weight.norm(dim=1) > C + 1e-3).any()  # rows are not what is constrained


def test_pattern_narrows_the_selection(tiny_mlp, tiny_module, tiny_loader, trainer_kwargs):
    net = tiny_mlp(hidden=(8, 8))
    spread_rows(net)
    unconstrained = plain_fit(copy.deepcopy(net), tiny_loader(), steps=1)

    model = tiny_module(net)
    callback = MaxNorm(C, pattern="hidden1")
    pl.Trainer(**{**trainer_kwargs, "max_steps": 1}, callbacks=[callback]).fit(model, tiny_loader())

    assert callback.constrained_names == ["net.hidden1.linear.weight"]
    torch.testing.assert_close(
        model.net.hidden1.linear.weight, clip_slices(unconstrained.hidden1.linear.weight, C, 0)
    )
    for name in ("hidden2.linear.weight", "output.weight"):
        assert torch.equal(model.net.get_parameter(name), unconstrained.get_parameter(name))
        assert (unconstrained.get_parameter(name).norm(dim=1) > C).any()


def test_conv_filters(tiny_convnet, tiny_module, tiny_loader, trainer_kwargs):
    net = tiny_convnet()
    spread_rows(net)
    loader = tiny_loader(input_shape=(2, 6, 6))

    def constrain(n: nn.Module) -> None:
        with torch.no_grad():
            n.conv.weight.copy_(clip_slices(n.conv.weight, C, 0))
            n.output.weight.copy_(clip_slices(n.output.weight, C, 0))

    reference = plain_fit(copy.deepcopy(net), loader, steps=4, constrain=constrain)
    model = tiny_module(net)
    pl.Trainer(**trainer_kwargs, callbacks=[MaxNorm(C)]).fit(model, loader)

    for p, q in zip(model.net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert (model.net.conv.weight.flatten(1).norm(dim=1) <= C + 1e-6).all()


def test_transposed_conv_units_are_dim_1(tiny_module, tiny_loader, trainer_kwargs):
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose1d(2, 4, kernel_size=3), nn.Flatten(), nn.Linear(4 * 7, 3))
    spread_rows(net, dim=1)  # ConvTranspose1d.weight is [in, out, k]: units along dim 1
    spread_rows(net[2])
    unconstrained = plain_fit(copy.deepcopy(net), tiny_loader(input_shape=(2, 5)), steps=1)

    model = tiny_module(net)
    trainer = pl.Trainer(**{**trainer_kwargs, "max_steps": 1}, callbacks=[MaxNorm(C, pattern="0")])
    trainer.fit(model, tiny_loader(input_shape=(2, 5)))

    torch.testing.assert_close(model.net[0].weight, clip_slices(unconstrained[0].weight, C, 1))


def test_gradient_accumulation_constrains_after_real_steps_only(
    tiny_mlp, tiny_module, tiny_loader, trainer_kwargs, weight_recorder
):
    net = tiny_mlp()
    spread_rows(net)
    after_one = plain_fit(
        copy.deepcopy(net), tiny_loader(), steps=1, accumulate=2, constrain=constrain_linear_rows
    )
    after_two = plain_fit(
        copy.deepcopy(net), tiny_loader(), steps=2, accumulate=2, constrain=constrain_linear_rows
    )

    model = tiny_module(net)
    recorder = weight_recorder()
    trainer = pl.Trainer(**trainer_kwargs, accumulate_grad_batches=2, callbacks=[MaxNorm(C), recorder])
    trainer.fit(model, tiny_loader())

    assert len(recorder.after_batch) == 4
    # micro-batch 0: no optimizer step, so no rescaling of the rows initialised above the limit
    for name, w in recorder.initial.items():
        assert torch.equal(recorder.after_batch[0][name], w), name
    assert (recorder.initial["net.hidden1.linear.weight"].norm(dim=1) > C).any()
    for i, reference in ((1, after_one), (3, after_two)):
        for name, q in reference.named_parameters():
            torch.testing.assert_close(recorder.after_batch[i][f"net.{name}"], q, rtol=1e-5, atol=1e-6)
    for name, w in recorder.after_batch[1].items():
        assert torch.equal(recorder.after_batch[2][name], w), name


def test_only_weights_the_step_can_change(tiny_mlp, tiny_module, tiny_loader, trainer_kwargs):
    """A frozen layer (no gradient) keeps its over-the-limit rows even though the optimizer holds it."""
    net = tiny_mlp()
    spread_rows(net)
    net.hidden1.requires_grad_(False)
    frozen = net.hidden1.linear.weight.detach().clone()

    model = tiny_module(net)
    pl.Trainer(**trainer_kwargs, callbacks=[MaxNorm(C)]).fit(model, tiny_loader())

    assert torch.equal(model.net.hidden1.linear.weight, frozen)
    assert (model.net.hidden2.linear.weight.norm(dim=1) <= C + 1e-6).all()


class TwoOptimizers(pl.LightningModule):
    """Manual optimization with two optimizers, of which only the first one steps."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(6, 3)
        with torch.no_grad():
            self.a.weight.mul_(20.0)
            self.b.weight.mul_(20.0)

    def training_step(self, batch, batch_idx):
        opt_a, _ = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self.a(x) + self.b(x), y)
        opt_a.zero_grad()
        self.manual_backward(loss)
        opt_a.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)


def test_manual_optimization_each_optimizer_constrains_its_own_weights(tiny_loader, trainer_kwargs):
    model = TwoOptimizers()
    b_before = model.b.weight.detach().clone()
    pl.Trainer(**trainer_kwargs, callbacks=[MaxNorm(C)]).fit(model, tiny_loader())
    assert (model.a.weight.norm(dim=1) <= C + 1e-6).all()
    assert torch.equal(model.b.weight, b_before)  # has a gradient, but its optimizer never stepped


def test_resume_equals_uninterrupted_run(tiny_mlp, tiny_module, tiny_loader, trainer_kwargs, tmp_path):
    net = tiny_mlp()
    spread_rows(net)
    kwargs = {**trainer_kwargs, "max_epochs": 2}

    def fresh():
        return tiny_module(copy.deepcopy(net), optimizer="adam", lr=0.05)

    uninterrupted = fresh()
    pl.Trainer(**kwargs, callbacks=[MaxNorm(C)]).fit(uninterrupted, tiny_loader())

    first = fresh()
    trainer = pl.Trainer(**{**kwargs, "max_epochs": 1}, callbacks=[MaxNorm(C)])
    trainer.fit(first, tiny_loader())
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = fresh()
    pl.Trainer(**kwargs, callbacks=[MaxNorm(C)]).fit(resumed, tiny_loader(), ckpt_path=tmp_path / "mid.ckpt")

    for p, q in zip(resumed.parameters(), uninterrupted.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_state_key_distinguishes_instances():
    keys = {MaxNorm(1.0).state_key, MaxNorm(2.0).state_key, MaxNorm(1.0, axis="input").state_key}
    keys.add(MaxNorm(1.0, pattern="hidden1").state_key)
    assert len(keys) == 4
    assert MaxNorm(1.0, pattern="a").state_key == MaxNorm(1.0, pattern=re.compile("a")).state_key


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_norm": 0.0}, ValueError, r"`max_norm` must be > 0.0, got 0.0"),
        ({"max_norm": -1}, ValueError, r"`max_norm` must be > 0.0, got -1"),
        ({"max_norm": float("inf")}, ValueError, r"`max_norm` must be finite"),
        ({"max_norm": "1"}, TypeError, r"`max_norm` must be a real number, got str"),
        ({"axis": "rows"}, ValueError, r"`axis` must be one of \['unit', 'input'\], got 'rows'"),
        ({"axis": 0}, TypeError, r"`axis` must be a string"),
        ({"pattern": "("}, ValueError, r"`pattern` contains an invalid regex"),
        ({"pattern": 3}, TypeError, r"`pattern` must be a regex string"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MaxNorm(**kwargs)


@pytest.mark.parametrize(
    ("pattern", "match"),
    [
        ("hidden9", r"`pattern` pattern 'hidden9' selects no module. Available modules: net, net.hidden1"),
        (r"hidden1\.bn", r"found no nn.Linear or ConvNd weight in the modules selected by `pattern`"),
    ],
)
def test_pattern_errors_at_fit_start(tiny_mlp, tiny_module, tiny_loader, trainer_kwargs, pattern, match):
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[MaxNorm(C, pattern=pattern)])
    with pytest.raises(ValueError, match=match):
        trainer.fit(tiny_module(tiny_mlp(batch_norm=True)), tiny_loader())


class ReplaceOptimizer(pl.Callback):
    """Swaps in a new optimizer object at the start of epoch 1 (as a callback rebuilding optimizers would)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            trainer.optimizers = [torch.optim.SGD(pl_module.parameters(), lr=0.1)]
            with torch.no_grad():
                pl_module.net.output.weight.mul_(20.0)  # far above the limit again


def test_follows_optimizers_replaced_during_fit(tiny_mlp, tiny_module, tiny_loader, trainer_kwargs):
    model = tiny_module(tiny_mlp())
    pl.Trainer(**{**trainer_kwargs, "max_epochs": 2}, callbacks=[ReplaceOptimizer(), MaxNorm(C)]).fit(
        model, tiny_loader()
    )
    assert (model.net.output.weight.norm(dim=1) <= C + 1e-6).all()
