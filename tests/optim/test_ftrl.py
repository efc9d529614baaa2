"""FTRL against an independent plain-Python implementation of TensorFlow's ApplyFtrlV2 kernel, and the special
cases where it coincides with gradient descent and AdaGrad."""

from __future__ import annotations

import copy
import itertools
import math
import pickle
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from lightning_dnn.optim import FTRL


def tf_ftrl_reference(
    w0: torch.Tensor,
    grads: Sequence[torch.Tensor],
    *,
    lr: float | Sequence[float],
    lr_power: float = -0.5,
    initial_accumulator_value: float = 0.1,
    l1: float = 0.0,
    l2: float = 0.0,
    l2_shrinkage: float = 0.0,
    beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TF's kernel element by element in float64 Python (keras Ftrl folds beta into l2 as l2 + beta / (2 lr)).

    Returns (weights, accumulator, linear) after applying ``grads`` in order; ``lr`` may vary per step.
    """
    lrs = [float(lr)] * len(grads) if isinstance(lr, int | float) else [float(v) for v in lr]
    w = [float(v) for v in w0.flatten()]
    n = [float(initial_accumulator_value)] * len(w)
    z = [0.0] * len(w)
    for step_lr, grad in zip(lrs, grads, strict=True):
        adjusted_l2 = l2 + beta / (2.0 * step_lr)
        for i, g in enumerate(float(v) for v in grad.flatten()):
            g_shrink = g + 2.0 * l2_shrinkage * w[i]
            n_new = n[i] + g * g
            sigma = (n_new ** (-lr_power) - n[i] ** (-lr_power)) / step_lr
            z[i] += g_shrink - sigma * w[i]
            if abs(z[i]) > l1:
                quadratic = n_new ** (-lr_power) / step_lr + 2.0 * adjusted_l2
                w[i] = (math.copysign(l1, z[i]) - z[i]) / quadratic
            else:
                w[i] = 0.0
            n[i] = n_new
    shape = w0.shape
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64).reshape(shape)  # noqa: E731
    return as_tensor(w), as_tensor(n), as_tensor(z)


def run_ftrl(
    w0: torch.Tensor, grads: Sequence[torch.Tensor], lrs: Sequence[float] | None = None, **kwargs: object
) -> tuple[torch.Tensor, FTRL, nn.Parameter]:
    w = nn.Parameter(w0.clone())
    opt = FTRL([w], **kwargs)  # type: ignore[arg-type]
    for t, grad in enumerate(grads):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[t]
        w.grad = grad.clone()
        opt.step()
    return w.detach().clone(), opt, w


HYPER_COMBOS = [
    dict(lr_power=p, initial_accumulator_value=a, l1=l1, l2=l2, l2_shrinkage=s, beta=b)
    for p, a, l1, l2, s, b in itertools.product(
        [-0.5, -0.3, 0.0], [0.1, 0.0], [0.0, 0.02], [0.0, 0.1], [0.0, 0.05], [0.0, 0.5]
    )
]


@pytest.mark.parametrize("hyper", HYPER_COMBOS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_matches_tf_kernel_reference(hyper: dict[str, float]) -> None:
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(3, 4, generator=gen)
    grads = [torch.randn(3, 4, generator=gen) for _ in range(6)]
    w, opt, param = run_ftrl(w0, grads, lr=0.05, **hyper)
    ref_w, ref_n, ref_z = tf_ftrl_reference(w0, grads, lr=0.05, **hyper)
    torch.testing.assert_close(w.double(), ref_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opt.state[param]["accumulator"].double(), ref_n, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(opt.state[param]["linear"].double(), ref_z, rtol=1e-5, atol=1e-5)
    assert torch.equal(w == 0, ref_w == 0)  # the same weights are exactly zero
    assert opt.state[param]["step"].item() == len(grads)


@pytest.mark.parametrize("lr_power", [-0.5, -0.3, 0.0])
def test_float64_matches_reference_to_double_precision(lr_power: float) -> None:
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(10, dtype=torch.float64, generator=gen)
    grads = [torch.randn(10, dtype=torch.float64, generator=gen) for _ in range(10)]
    hyper = dict(lr_power=lr_power, l1=0.01, l2=0.1, l2_shrinkage=0.05, beta=0.5)
    w, _, _ = run_ftrl(w0, grads, lr=0.05, **hyper)
    torch.testing.assert_close(w, tf_ftrl_reference(w0, grads, lr=0.05, **hyper)[0], rtol=1e-12, atol=1e-13)


def test_learning_rate_changed_between_steps_is_used_at_each_step() -> None:
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(8, generator=gen)
    grads = [torch.randn(8, generator=gen) for _ in range(6)]
    lrs = [0.1, 0.05, 0.2, 0.01, 0.1, 0.03]
    hyper = dict(l1=0.01, l2=0.05, beta=0.1)
    w, _, _ = run_ftrl(w0, grads, lrs=lrs, lr=lrs[0], **hyper)
    torch.testing.assert_close(
        w.double(), tf_ftrl_reference(w0, grads, lr=lrs, **hyper)[0], rtol=1e-5, atol=1e-6
    )


def test_first_step_by_hand() -> None:
    # n1 = 0.1 + g^2; sigma = (sqrt(n1) - sqrt(0.1)) / lr; z = g - sigma * w0; w = (sign(z) l1 - z) / (sqrt(n1) / lr)
    w0, g, lr, l1 = [0.5, -0.5, 0.0], [0.2, -0.01, 0.5], 0.1, 0.05
    expected = []
    for w_i, g_i in zip(w0, g, strict=True):
        n1 = 0.1 + g_i**2
        z = g_i - (math.sqrt(n1) - math.sqrt(0.1)) / lr * w_i
        expected.append((math.copysign(l1, z) - z) / (math.sqrt(n1) / lr) if abs(z) > l1 else 0.0)
    assert expected == pytest.approx([0.0106076, 0.0, -0.0760639], abs=1e-7)
    w, _, _ = run_ftrl(torch.tensor(w0), [torch.tensor(g)], lr=lr, l1=l1)
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float32))
    assert w[1].item() == 0.0


def quadratic_loss(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x @ w - y) ** 2).mean()


def train(optimizer_factory, w0: torch.Tensor, steps: int = 20) -> torch.Tensor:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, w0.numel(), generator=gen), torch.randn(32, generator=gen)
    w = nn.Parameter(w0.clone())
    opt = optimizer_factory([w])
    for _ in range(steps):
        opt.zero_grad()
        quadratic_loss(w, x, y).backward()
        opt.step()
    return w.detach()


def test_lr_power_zero_is_gradient_descent_from_zero() -> None:
    # lr_power=0, no regularisation: sigma = 0, q = 1 / lr, so w_t = -lr * sum(g): SGD when w_0 = 0.
    w0 = torch.zeros(5)
    ftrl_w = train(lambda p: FTRL(p, lr=0.1, lr_power=0.0), w0)
    sgd_w = train(lambda p: torch.optim.SGD(p, lr=0.1), w0)
    torch.testing.assert_close(ftrl_w, sgd_w, rtol=1e-5, atol=1e-6)


def test_lr_power_zero_drops_the_starting_weights() -> None:
    # For the same gradients, from w_0 != 0: w_t^FTRL = w_t^SGD - w_0 (FTRL forgets w_0 at the first step).
    gen = torch.Generator().manual_seed(4)
    w0 = torch.randn(6, generator=gen)
    grads = [torch.randn(6, generator=gen) for _ in range(5)]
    w, _, _ = run_ftrl(w0, grads, lr=0.1, lr_power=0.0, initial_accumulator_value=0.3)
    sgd_w = w0 - 0.1 * torch.stack(grads).sum(0)
    torch.testing.assert_close(w, sgd_w - w0, rtol=1e-5, atol=1e-6)


def test_lr_power_half_is_adagrad_from_zero_weights() -> None:
    # z_t = -sqrt(n_t) w_t / lr holds from w_0 = 0, giving w_t = w_{t-1} - lr g_t / sqrt(n_t): AdaGrad, eps=0.
    w0 = torch.zeros(5)
    ftrl_w = train(lambda p: FTRL(p, lr=0.1, initial_accumulator_value=0.1), w0)
    adagrad_w = train(lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.1, eps=0.0), w0)
    torch.testing.assert_close(ftrl_w, adagrad_w, rtol=1e-5, atol=1e-6)


def test_lr_power_half_is_adagrad_from_any_weights_with_zero_accumulator() -> None:
    w0 = torch.randn(5, generator=torch.Generator().manual_seed(5))
    ftrl_w = train(lambda p: FTRL(p, lr=0.1, initial_accumulator_value=0.0), w0)
    adagrad_w = train(lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.0, eps=0.0), w0)
    torch.testing.assert_close(ftrl_w, adagrad_w, rtol=1e-5, atol=1e-6)


def test_lr_power_half_differs_from_adagrad_with_nonzero_weights_and_accumulator() -> None:
    # z_1 = g - (sqrt(n_1) - sqrt(n_0)) / lr * w_0 gives w_1 = w_0 (1 - sqrt(n_0 / n_1)) - lr g / sqrt(n_1):
    # compared with AdaGrad the first step drops w_0 * sqrt(n_0 / n_1), and the difference persists.
    w0, g = torch.tensor([1.0, -2.0]), torch.tensor([0.3, 0.4])
    w, _, _ = run_ftrl(w0, [g], lr=0.1, initial_accumulator_value=0.1)
    n1 = 0.1 + g**2
    torch.testing.assert_close(w, w0 * (1 - torch.sqrt(0.1 / n1)) - 0.1 * g / torch.sqrt(n1))
    adagrad = w0 - 0.1 * g / torch.sqrt(n1)
    torch.testing.assert_close(adagrad - w, w0 * torch.sqrt(0.1 / n1))


def test_zero_accumulator_and_zero_gradient_give_zero_not_nan() -> None:
    # n_new = 0 makes TF's denominator 0; its select still returns 0 where |z| <= l1 (here z = 0).
    w0 = torch.tensor([0.5, -0.5, 1.0])
    grads = [torch.tensor([0.0, 0.2, 0.0]), torch.tensor([0.0, -0.1, 0.3])]
    for foreach in (False, True):
        w, _, _ = run_ftrl(w0, grads, lr=0.1, initial_accumulator_value=0.0, foreach=foreach)
        ref_w, _, _ = tf_ftrl_reference(w0, grads, lr=0.1, initial_accumulator_value=0.0)
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w.double(), ref_w, rtol=1e-5, atol=1e-6)
        assert w[0].item() == 0.0


def test_l1_gives_exact_positive_zeros_where_linear_term_is_inside_the_band() -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(256, 20, generator=gen)
    true_w = torch.zeros(20)
    true_w[:3] = torch.tensor([2.0, -3.0, 1.5])
    y = x @ true_w + 0.1 * torch.randn(256, generator=gen)
    w = nn.Parameter(torch.zeros(20))
    opt = FTRL([w], lr=1.0, l1=5.0)
    for _ in range(100):
        opt.zero_grad()
        quadratic_loss(w, x, y).backward()
        opt.step()
    zeros = w.detach() == 0
    assert zeros[3:].sum() >= 12  # most irrelevant features are exactly zero
    assert not zeros[:3].any()  # the relevant ones are not
    linear = opt.state[w]["linear"]
    assert (linear[zeros].abs() <= 5.0).all() and (linear[~zeros].abs() > 5.0).all()
    assert not torch.signbit(w.detach()[zeros]).any()  # +0.0, as TF's select produces


FOREACH_COMBOS = [
    dict(),
    dict(l1=0.01, l2=0.1),
    dict(lr_power=-0.3, l2_shrinkage=0.05, beta=0.5),
    dict(lr_power=0.0, l1=0.01, l2=0.1),
    dict(initial_accumulator_value=0.0, l1=0.02),
    dict(maximize=True, l1=0.01),
]


@pytest.mark.parametrize("foreach_weights_on_cpu", [False, True], ids=["cpu-weights", "foreach-weights"])
@pytest.mark.parametrize("hyper", FOREACH_COMBOS, ids=str)
def test_foreach_equals_single_tensor_bit_for_bit(
    hyper: dict[str, object], foreach_weights_on_cpu: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if foreach_weights_on_cpu:  # exercise the weight write used on CUDA (foreach clamp) here on CPU
        monkeypatch.setattr("lightning_dnn.optim.ftrl._PER_TENSOR_WEIGHT_DEVICES", ())
    gen = torch.Generator().manual_seed(7)
    shapes = [(5, 4), (5,), (3, 5), (3,)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(5)]
    results = []
    for foreach in (False, True):
        params = [nn.Parameter(t.clone()) for t in init]
        opt = FTRL(params, lr=0.05, foreach=foreach, **hyper)  # type: ignore[arg-type]
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
        results.append(
            [p.detach().clone() for p in params]
            + [opt.state[p][k].clone() for p in params for k in ("accumulator", "linear")]
        )
    for single, multi in zip(*results, strict=True):
        assert torch.equal(single, multi)


def _embedding_pair(sparse_opt_kwargs: dict[str, object]) -> tuple[nn.Embedding, nn.Embedding, FTRL, FTRL]:
    torch.manual_seed(8)
    sparse = nn.Embedding(10, 4, sparse=True)
    dense = nn.Embedding(10, 4, sparse=False)
    dense.load_state_dict(sparse.state_dict())
    return (
        sparse,
        dense,
        FTRL(sparse.parameters(), lr=0.1, **sparse_opt_kwargs),  # type: ignore[arg-type]
        FTRL(dense.parameters(), lr=0.1, **sparse_opt_kwargs),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "hyper",
    [dict(), dict(l1=0.01, l2=0.1, l2_shrinkage=0.05, beta=0.2), dict(maximize=True, lr_power=-0.3)],
    ids=str,
)
def test_sparse_gradients_update_only_touched_rows_like_the_dense_path(hyper: dict[str, object]) -> None:
    sparse, dense, sparse_opt, dense_opt = _embedding_pair(hyper)
    initial = sparse.weight.detach().clone()
    # Every batch touches rows 1, 3 and 7 (with duplicates): the dense path's shrinkage would also act on a
    # row in a step that does not touch it, the sparse path's does not (TF's SparseApplyFtrlV2).
    batches = [torch.tensor([1, 3, 3, 7]), torch.tensor([3, 7, 7, 7, 1]), torch.tensor([1, 7, 1, 3])]
    gen = torch.Generator().manual_seed(9)
    targets = [torch.randn(len(b), 4, generator=gen) for b in batches]
    for batch, target in zip(batches, targets, strict=True):
        for module, opt in ((sparse, sparse_opt), (dense, dense_opt)):
            opt.zero_grad()
            ((module(batch) - target) ** 2).sum().backward()
            opt.step()
    assert sparse.weight.grad is not None and sparse.weight.grad.is_sparse
    touched = torch.tensor([1, 3, 7])
    untouched = torch.tensor([i for i in range(10) if i not in (1, 3, 7)])
    torch.testing.assert_close(sparse.weight[touched], dense.weight[touched])
    sparse_state, dense_state = sparse_opt.state[sparse.weight], dense_opt.state[dense.weight]
    for key in ("accumulator", "linear"):
        torch.testing.assert_close(sparse_state[key][touched], dense_state[key][touched])
    # Untouched rows and their state stay exactly as they were. The dense path sees zero gradients there and
    # moves them (z stays 0, plus shrinkage, so their weights go to 0 at the first step).
    assert torch.equal(sparse.weight.detach()[untouched], initial[untouched])
    assert (sparse_state["accumulator"][untouched] == 0.1).all()
    assert (sparse_state["linear"][untouched] == 0).all()
    assert not torch.isclose(dense.weight.detach()[untouched], initial[untouched]).any()


def test_sparse_and_dense_gradients_mixed_with_foreach() -> None:
    results = []
    for foreach in (False, True):
        torch.manual_seed(10)
        emb, head = nn.Embedding(6, 3, sparse=True), nn.Linear(3, 2)
        opt = FTRL([*emb.parameters(), *head.parameters()], lr=0.1, l1=0.01, foreach=foreach)
        for batch in (torch.tensor([0, 2, 2]), torch.tensor([5, 0])):
            opt.zero_grad()
            head(emb(batch)).pow(2).sum().backward()
            opt.step()
        results.append([p.detach().clone() for p in (emb.weight, head.weight, head.bias)])
    for single, multi in zip(*results, strict=True):
        assert torch.equal(single, multi)


def _prime(opt: FTRL, params: list[nn.Parameter], grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


def test_state_dict_round_trip_continues_identically() -> None:
    gen = torch.Generator().manual_seed(11)
    shapes = [(4, 3), (4,)]
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(6)]
    opt = FTRL(params, lr=0.05, l1=0.01, l2=0.1)
    _prime(opt, params, grads[:3])
    clones = [nn.Parameter(p.detach().clone()) for p in params]
    fresh = FTRL(clones, lr=1.0)  # hyper-parameters come from the state dict
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert fresh.param_groups[0]["lr"] == 0.05 and fresh.param_groups[0]["l1"] == 0.01
    _prime(opt, params, grads[3:])
    _prime(fresh, clones, grads[3:])
    for a, b in zip(params, clones, strict=True):
        assert torch.equal(a, b)
        for key in ("accumulator", "linear", "step"):
            assert torch.equal(opt.state[a][key], fresh.state[b][key])


def test_old_state_dicts_get_defaults_for_newer_options() -> None:
    params = [nn.Parameter(torch.ones(3))]
    opt = FTRL(params, lr=0.1)
    state = opt.state_dict()
    for key in ("beta", "l2_shrinkage", "foreach", "maximize"):
        del state["param_groups"][0][key]
    restored = FTRL([nn.Parameter(torch.ones(3))], lr=0.1)
    restored.load_state_dict(state)
    group = restored.param_groups[0]
    assert (group["beta"], group["l2_shrinkage"], group["foreach"], group["maximize"]) == (
        0.0,
        0.0,
        None,
        False,
    )


def test_pickled_optimizer_continues_identically() -> None:
    gen = torch.Generator().manual_seed(12)
    w = nn.Parameter(torch.randn(5, generator=gen))
    grads = [[torch.randn(5, generator=gen)] for _ in range(4)]
    opt = FTRL([w], lr=0.1, l1=0.01)
    _prime(opt, [w], grads[:2])
    w2, opt2 = pickle.loads(pickle.dumps((w, opt)))
    _prime(opt, [w], grads[2:])
    _prime(opt2, [w2], grads[2:])
    assert torch.equal(w, w2)


def test_editing_the_accumulator_in_place_is_respected() -> None:
    # A value written into the state between steps must be used as is (nothing stale is reused).
    gen = torch.Generator().manual_seed(13)
    w0 = torch.randn(5, generator=gen)
    grads = [torch.randn(5, generator=gen) for _ in range(3)]
    _, opt, w = run_ftrl(w0, grads[:2], lr=0.1)
    opt.state[w]["accumulator"].fill_(2.0)
    snapshot = {k: v.clone() for k, v in opt.state[w].items()}
    w_before = w.detach().clone()
    w.grad = grads[2].clone()
    opt.step()
    fresh_w = nn.Parameter(w_before)
    fresh = FTRL([fresh_w], lr=0.1)
    fresh.state[fresh_w].update(snapshot)
    fresh_w.grad = grads[2].clone()
    fresh.step()
    assert torch.equal(w, fresh_w)


def test_changing_lr_power_between_steps_uses_the_new_power() -> None:
    gen = torch.Generator().manual_seed(14)
    w0 = torch.randn(5, generator=gen)
    grads = [torch.randn(5, generator=gen) for _ in range(4)]
    w = nn.Parameter(w0.clone())
    opt = FTRL([w], lr=0.1)
    for t, g in enumerate(grads):
        opt.param_groups[0]["lr_power"] = -0.5 if t < 2 else -0.3
        w.grad = g.clone()
        opt.step()
    # Reference: a power change only alters the sigma and q of later steps; replay with the switch.
    ref_w = w0.double()
    n = torch.full((5,), 0.1, dtype=torch.float64)
    z = torch.zeros(5, dtype=torch.float64)
    for t, g in enumerate(grads):
        p = -0.5 if t < 2 else -0.3
        g = g.double()
        n_new = n + g * g
        z = z + g - (n_new ** (-p) - n ** (-p)) / 0.1 * ref_w
        ref_w = -z / (n_new ** (-p) / 0.1)
        n = n_new
    torch.testing.assert_close(w.detach().double(), ref_w, rtol=1e-5, atol=1e-6)


def test_param_groups_use_their_own_hyper_parameters() -> None:
    gen = torch.Generator().manual_seed(15)
    a0, b0 = torch.randn(4, generator=gen), torch.randn(3, generator=gen)
    grads = [(torch.randn(4, generator=gen), torch.randn(3, generator=gen)) for _ in range(3)]
    a, b = nn.Parameter(a0.clone()), nn.Parameter(b0.clone())
    opt = FTRL([{"params": [a]}, {"params": [b], "lr": 0.5, "l1": 0.05, "lr_power": -0.3}], lr=0.1)
    for ga, gb in grads:
        a.grad, b.grad = ga.clone(), gb.clone()
        opt.step()
    torch.testing.assert_close(a.detach(), run_ftrl(a0, [g[0] for g in grads], lr=0.1)[0], rtol=0, atol=0)
    expected_b = run_ftrl(b0, [g[1] for g in grads], lr=0.5, l1=0.05, lr_power=-0.3)[0]
    torch.testing.assert_close(b.detach(), expected_b, rtol=0, atol=0)


def test_maximize_equals_minimising_the_negated_gradient() -> None:
    gen = torch.Generator().manual_seed(16)
    w0 = torch.randn(6, generator=gen)
    grads = [torch.randn(6, generator=gen) for _ in range(4)]
    maximised, _, _ = run_ftrl(w0, grads, lr=0.1, l1=0.01, maximize=True)
    minimised, _, _ = run_ftrl(w0, [-g for g in grads], lr=0.1, l1=0.01)
    assert torch.equal(maximised, minimised)


def test_closure_loss_is_returned() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = FTRL([w], lr=0.1)

    def closure() -> float:
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss.item()

    assert opt.step(closure) == pytest.approx(5.0)
    assert not torch.equal(w.detach(), torch.tensor([1.0, 2.0]))


def rosenbrock(xy: torch.Tensor) -> torch.Tensor:
    x, y = xy
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("hyper", [dict(), dict(l1=1e-3, l2=1e-3)], ids=str)
def test_rosenbrock_converges_towards_the_minimum(hyper: dict[str, float]) -> None:
    xy = nn.Parameter(torch.tensor([1.5, 1.5]))
    initial_loss, initial_distance = rosenbrock(xy).item(), (xy.detach() - 1).norm().item()
    opt = FTRL([xy], lr=1.0, **hyper)
    for _ in range(300):
        opt.zero_grad()
        rosenbrock(xy).backward()
        opt.step()
    assert rosenbrock(xy).item() < initial_loss / 100
    assert (xy.detach() - 1).norm().item() < 0.7 * initial_distance


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(lr=0.0), ValueError, "`lr` must be > 0"),
        (dict(lr=-0.1), ValueError, "`lr` must be > 0"),
        (dict(lr="0.1"), TypeError, "`lr` must be a real number"),
        (dict(lr_power=0.5), ValueError, "`lr_power` must be <= 0"),
        (dict(initial_accumulator_value=-0.1), ValueError, "`initial_accumulator_value` must be >= 0"),
        (dict(l1=-1.0), ValueError, "`l1` must be >= 0"),
        (dict(l2=-1.0), ValueError, "`l2` must be >= 0"),
        (dict(l2_shrinkage=-1.0), ValueError, "`l2_shrinkage` must be >= 0"),
        (dict(beta=-1.0), ValueError, "`beta` must be >= 0"),
        (dict(beta=float("nan")), ValueError, "`beta` must be finite"),
        (dict(foreach="yes"), TypeError, "`foreach` must be None, True or False"),
        (dict(maximize=1), TypeError, "`maximize` must be a bool, got int 1"),
    ],
)
def test_bad_hyper_parameters_raise_with_the_argument_name(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        FTRL([nn.Parameter(torch.zeros(2))], **kwargs)  # type: ignore[arg-type]


def test_bad_param_group_override_raises() -> None:
    opt = FTRL([nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="`l1` must be >= 0"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "l1": -0.5})


def test_complex_parameters_are_refused() -> None:
    w = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    w.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(TypeError, match="complex"):
        FTRL([w]).step()
