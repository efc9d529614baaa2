"""Non-finite training steps: a step GradientClipping skips leaves the model as if its batch never happened.

The faults are injected the two ways they arise: an overflow in the forward pass (an ``inf`` input element: batch
norm's batch mean becomes inf, its variance NaN, every gradient NaN) and a NaN that appears only after the
forward pass (in the loss, or in one layer's gradient). The reference is a plain PyTorch loop that never sees the
faulty batch at all (no forward pass, no optimizer step): parameters, optimizer state and the batch-norm running
statistics (mean, variance and ``num_batches_tracked``) must all equal it.
"""

from __future__ import annotations

import copy
import math
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from lightning_dnn.callbacks.grad_clip import GradientClipping
from tests.callbacks.conftest import TinyModule, make_loader, make_mlp
from tests.trainer_utils import quiet_trainer_kwargs

SGD_KW = {"momentum": 0.9, "weight_decay": 0.01}
Fault = tuple[int, int]  # (epoch, batch_idx)


class FaultyModule(TinyModule):
    """A TinyModule whose batches ``fault_at`` go wrong: ``"forward-inf"`` (an inf input element, as an activation
    overflow would) or ``"loss-nan"`` (a finite forward pass, a NaN loss)."""

    def __init__(
        self, net: nn.Module, fault_at: set[Fault], kind: str = "forward-inf", **kwargs: Any
    ) -> None:
        super().__init__(net, **kwargs)
        self.fault_at, self.kind = fault_at, kind

    def compute_loss(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        faulty = (self.current_epoch, batch_idx) in self.fault_at
        if faulty and self.kind == "forward-inf":
            x = x.clone()
            x[0, 0] = math.inf
        loss = nn.functional.cross_entropy(self(x), y)
        return loss * math.nan if faulty and self.kind == "loss-nan" else loss


def never_seen(
    net: nn.Module, loader: Any, *, epochs: int, skip: set[Fault], accumulate: int = 1
) -> nn.Module:
    """Reference: SGD (momentum, weight decay) on every batch except ``skip``, which are never even forwarded."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, **SGD_KW)
    net.train()
    for epoch in range(epochs):
        for i, (x, y) in enumerate(loader):
            if (epoch, i) not in skip:
                (nn.functional.cross_entropy(net(x), y) / accumulate).backward()
            if (i + 1) % accumulate == 0:
                if all(p.grad is not None for p in net.parameters()):
                    opt.step()
                opt.zero_grad(set_to_none=True)
    return net


class NormBuffers(Callback):
    """Clones of every batch-norm buffer before and after each training batch."""

    def __init__(self) -> None:
        self.before: list[dict[str, Tensor]] = []
        self.after: list[dict[str, Tensor]] = []

    @staticmethod
    def _buffers(module: nn.Module) -> dict[str, Tensor]:
        return {n: b.detach().clone() for n, b in module.named_buffers() if ".bn." in f".{n}"}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.before.append(self._buffers(pl_module))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.after.append(self._buffers(pl_module))


def assert_same_state(actual: nn.Module, expected: nn.Module) -> None:
    sa, sb = actual.state_dict(), expected.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def fit(model: pl.LightningModule, tmp_path: Path, callbacks: list[Callback], **overrides: Any) -> pl.Trainer:
    options = quiet_trainer_kwargs(tmp_path, **{"max_epochs": 2, "num_sanity_val_steps": 0, **overrides})
    trainer = pl.Trainer(**options, callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-finite gradients.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, make_loader(n=32, batch_size=8))
    return trainer


@pytest.mark.parametrize("kind", ["forward-inf", "loss-nan"])
def test_a_skipped_step_leaves_batch_norm_as_if_the_batch_never_happened(tmp_path: Path, kind: str) -> None:
    net = make_mlp(batch_norm=True)
    reference = never_seen(copy.deepcopy(net), make_loader(n=32, batch_size=8), epochs=2, skip={(0, 1)})
    model = FaultyModule(net, {(0, 1)}, kind, optimizer_kwargs=SGD_KW)
    clip, buffers = GradientClipping(norm=1e3), NormBuffers()

    fit(model, tmp_path, [clip, buffers])

    assert clip.skipped_steps == 1
    for name, value in buffers.before[1].items():  # the skipped batch left every buffer as it found it
        assert torch.equal(buffers.after[1][name], value), name
    assert_same_state(model.net, reference)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(4, 6))).all()


def test_gradient_accumulation_restores_the_whole_window(tmp_path: Path) -> None:
    net = make_mlp(batch_norm=True)
    loader = make_loader(n=32, batch_size=8)
    reference = never_seen(copy.deepcopy(net), loader, epochs=2, skip={(0, 0), (0, 1)}, accumulate=2)

    model = FaultyModule(net, {(0, 1)}, optimizer_kwargs=SGD_KW)  # Lightning divides the loss by 2 as well
    clip = GradientClipping(value=1e3)
    fit(model, tmp_path, [clip], accumulate_grad_batches=2)

    assert clip.skipped_steps == 1
    assert_same_state(model.net, reference)  # batch 0's statistics went with the window's skipped step


class InfGradient(Callback):
    """Placed before GradientClipping: one inf in ``name``'s gradient at the given global steps."""

    def __init__(self, name: str, steps: set[int]) -> None:
        self.name, self.steps = name, steps

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if trainer.global_step in self.steps:
            grad = pl_module.get_parameter(self.name).grad
            assert grad is not None
            grad.view(-1)[0] = math.inf


def test_an_inf_gradient_outside_the_pattern_still_skips_the_step(tmp_path: Path) -> None:
    net = make_mlp(batch_norm=True)
    reference = never_seen(copy.deepcopy(net), make_loader(n=32, batch_size=8), epochs=2, skip={(0, 1)})
    model = TinyModule(net, optimizer_kwargs=SGD_KW)
    clip = GradientClipping(norm=1e3, pattern="hidden1")

    fit(model, tmp_path, [InfGradient("net.output.weight", {1}), clip], log_every_n_steps=1)

    assert clip.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert_same_state(model.net, reference)


def test_a_nonfinite_gradient_outside_the_pattern_is_named_in_the_warning(tmp_path: Path) -> None:
    model = TinyModule(make_mlp())
    clip = GradientClipping(value=1.0, pattern="hidden1")
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=3),
        callbacks=[InfGradient("net.output.weight", {1}), clip],
    )
    with pytest.warns(UserWarning, match=r"non-finite gradients at global step 1 in net\.output\.weight"):
        trainer.fit(model, make_loader(n=32, batch_size=8))


def amp_16_mixed() -> Any:
    """16-bit AMP with a GradScaler on CPU (what ``Trainer(precision="16-mixed")`` builds on a GPU)."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))


PRECISIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "bf16-mixed": lambda: {"precision": "bf16-mixed"},
    "16-mixed": lambda: {"plugins": [amp_16_mixed()]},
}


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("kind", ["forward-inf", "loss-nan"])
def test_mixed_precision_skips_leave_batch_norm_untouched(tmp_path: Path, precision: str, kind: str) -> None:
    model = FaultyModule(make_mlp(batch_norm=True), {(0, 1)}, kind, optimizer_kwargs=SGD_KW)
    clip, buffers = GradientClipping(norm=1e3), NormBuffers()

    fit(model, tmp_path, [clip, buffers], **PRECISIONS[precision]())

    assert clip.skipped_steps == (0 if precision == "16-mixed" else 1)  # with a GradScaler the scaler skips
    for name, value in buffers.before[1].items():
        assert torch.equal(buffers.after[1][name], value), name
    for step in (0, 2):  # the other batches did update the statistics
        assert any(not torch.equal(buffers.after[step][n], v) for n, v in buffers.before[step].items())
    assert all(torch.isfinite(b).all() for b in model.buffers())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_nonfinite_false_leaves_batch_norm_to_the_forward_pass(tmp_path: Path) -> None:
    model = FaultyModule(make_mlp(batch_norm=True), {(0, 1)}, "loss-nan", optimizer_kwargs=SGD_KW)
    buffers = NormBuffers()
    fit(model, tmp_path, [GradientClipping(value=1.0, skip_nonfinite=False), buffers], max_epochs=1)
    assert any(not torch.equal(buffers.after[1][n], v) for n, v in buffers.before[1].items())


def seeded_faults(seed: int) -> set[Fault]:
    """One or two faulty batches among the 2 epochs x 4 batches (never the very first, which has no "before")."""
    rng = random.Random(seed)
    return set(rng.sample([(e, b) for e in range(2) for b in range(4)][1:], k=rng.choice((1, 2))))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["forward-inf", "loss-nan"])
def test_matrix_fp32_skips_equal_a_run_that_never_saw_the_batches(
    tmp_path: Path, kind: str, seed: int
) -> None:
    faults = seeded_faults(seed)
    net = make_mlp(batch_norm=True, seed=seed)
    reference = never_seen(copy.deepcopy(net), make_loader(n=32, batch_size=8), epochs=2, skip=faults)
    model = FaultyModule(net, faults, kind, optimizer_kwargs=SGD_KW)
    clip = GradientClipping(norm=1e3)  # a limit the finite gradients stay under: the reference does not clip
    fit(model, tmp_path, [clip])
    assert clip.skipped_steps == len(faults)
    assert_same_state(model.net, reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_matrix_mixed_precision_skips_leave_batch_norm_untouched(
    tmp_path: Path, precision: str, seed: int
) -> None:
    faults = seeded_faults(seed)
    model = FaultyModule(make_mlp(batch_norm=True, seed=seed), faults, "forward-inf", optimizer_kwargs=SGD_KW)
    buffers = NormBuffers()
    fit(model, tmp_path, [GradientClipping(norm=1.0), buffers], **PRECISIONS[precision]())
    for index in (4 * e + b for e, b in faults):
        for name, value in buffers.before[index].items():
            assert torch.equal(buffers.after[index][name], value), name
    assert all(torch.isfinite(t).all() for t in [*model.parameters(), *model.buffers()])
