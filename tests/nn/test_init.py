"""Variance scaling and the named init schemes, against closed forms and torch's own initializers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lightning_dnn.nn.init as init_module
from lightning_dnn.nn import (
    TRUNCATED_NORMAL_STD_FACTOR,
    InitSpec,
    available_inits,
    compute_fans,
    get_init,
    init_weights_,
    register_init,
    variance_scaling_,
)

# (shape, fan_in, fan_out): a Linear weight [out, in] and a Conv2d weight [out, in, kh, kw], fans written out by hand.
SHAPES = [
    pytest.param((800, 1250), 1250, 800, id="linear"),
    pytest.param((64, 32, 5, 5), 32 * 25, 64 * 25, id="conv2d"),
]
MODES = ["fan_in", "fan_out", "fan_avg"]
DISTRIBUTIONS = ["truncated_normal", "normal", "uniform"]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _expected_fan(mode: str, fan_in: int, fan_out: int) -> float:
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]


@pytest.mark.parametrize(("shape", "fan_in", "fan_out"), SHAPES)
def test_compute_fans_counts_receptive_field(shape: tuple[int, ...], fan_in: int, fan_out: int) -> None:
    assert compute_fans(torch.empty(shape)) == (fan_in, fan_out)


def test_compute_fans_matches_real_layers() -> None:
    assert compute_fans(nn.Linear(7, 3).weight) == (7, 3)
    assert compute_fans(nn.Conv1d(4, 6, 3).weight) == (12, 18)
    assert compute_fans(nn.Conv2d(4, 6, 3, groups=2).weight) == (2 * 9, 6 * 9)


@pytest.mark.parametrize(("shape", "fan_in", "fan_out"), SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_variance_is_scale_over_fan(
    shape: tuple[int, ...], fan_in: int, fan_out: int, mode: str, distribution: str, scale: float
) -> None:
    w = torch.empty(shape, dtype=torch.float64)
    variance_scaling_(w, scale=scale, mode=mode, distribution=distribution, generator=_gen())  # type: ignore[arg-type]
    expected = scale / _expected_fan(mode, fan_in, fan_out)
    assert abs(w.mean().item()) < 5 * math.sqrt(expected / w.numel())
    assert w.var().item() == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("mode", MODES)
def test_truncated_normal_is_cut_at_two_corrected_stds(mode: str) -> None:
    w = torch.empty(1000, 1000)
    variance_scaling_(w, scale=2.0, mode=mode, distribution="truncated_normal", generator=_gen(1))  # type: ignore[arg-type]
    bound = 2 * math.sqrt(2.0 / 1000) / TRUNCATED_NORMAL_STD_FACTOR
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.99 * bound  # the tails reach the cut
    # An untruncated normal of the same variance goes well past 2 std.
    n = torch.empty(1000, 1000)
    variance_scaling_(n, scale=2.0, mode=mode, distribution="normal", generator=_gen(1))  # type: ignore[arg-type]
    assert n.abs().max().item() > 1.5 * bound


def test_truncated_normal_std_factor_is_the_truncated_std() -> None:
    # Var of N(0,1) truncated to [-2, 2] = 1 - 2 * 2 * phi(2) / (Phi(2) - Phi(-2)).
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    assert math.sqrt(1 - 4 * phi2 / mass) == pytest.approx(TRUNCATED_NORMAL_STD_FACTOR, rel=1e-12)


def test_uncorrected_tf1_recipe_from_the_docs() -> None:
    # TF1 drew truncated_normal(stddev=sqrt(scale / fan)) cut at 2 stddev, without the 0.8796 correction.
    w = torch.empty(1000, 1000, dtype=torch.float64)
    variance_scaling_(w, scale=2.0 * TRUNCATED_NORMAL_STD_FACTOR**2, generator=_gen(2))
    stddev = math.sqrt(2.0 / 1000)
    assert w.abs().max().item() <= 2 * stddev + 1e-12
    assert w.var().item() == pytest.approx(TRUNCATED_NORMAL_STD_FACTOR**2 * stddev**2, rel=0.03)


def test_uniform_limit() -> None:
    w = torch.empty(300, 400)
    variance_scaling_(w, scale=2.0, mode="fan_in", distribution="uniform", generator=_gen())
    limit = math.sqrt(3 * 2.0 / 400)
    assert w.abs().max().item() <= limit
    assert w.abs().max().item() > 0.99 * limit


def test_generator_is_reproducible_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a = variance_scaling_(torch.empty(50, 60), generator=_gen(3))
    b = variance_scaling_(torch.empty(50, 60), generator=_gen(3))
    c = variance_scaling_(torch.empty(50, 60), generator=_gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_zero_element_tensor_is_a_no_op() -> None:
    w = torch.empty(0, 5)
    assert variance_scaling_(w, mode="fan_out") is w


def test_does_not_track_gradients() -> None:
    layer = nn.Linear(5, 4)
    variance_scaling_(layer.weight, generator=_gen())
    assert layer.weight.grad_fn is None and layer.weight.requires_grad


EXPECTED_SCHEMES = {
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "he_avg_normal": (2.0, "fan_avg", "truncated_normal"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
    "torch_default": (1.0 / 3.0, "fan_in", "uniform"),
}


@pytest.mark.parametrize(("name", "triple"), EXPECTED_SCHEMES.items())
def test_named_schemes(name: str, triple: tuple[float, str, str]) -> None:
    spec = get_init(name)
    assert (spec.scale, spec.mode, spec.distribution) == pytest.approx(triple)
    assert name in available_inits()
    w = torch.empty(600, 900, dtype=torch.float64)
    spec(w, generator=_gen())
    assert w.var().item() == pytest.approx(triple[0] / _expected_fan(triple[1], 900, 600), rel=0.03)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("glorot_uniform", lambda w, g: nn.init.xavier_uniform_(w, generator=g)),
        ("he_uniform", lambda w, g: nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g)),
        ("torch_default", lambda w, g: nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)),
    ],
)
def test_uniform_schemes_match_torch_initializers(name: str, reference) -> None:  # type: ignore[no-untyped-def]
    ours = get_init(name)(torch.empty(30, 20, 3), generator=_gen(7))
    theirs = reference(torch.empty(30, 20, 3), _gen(7))
    torch.testing.assert_close(ours, theirs)


def test_get_init_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match=r"Unknown init scheme 'he_norml'.*Did you mean 'he_normal'"):
        get_init("he_norml")
    with pytest.raises(TypeError, match="`name`"):
        get_init(2)  # type: ignore[arg-type]


def test_register_init_refuses_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(init_module, "_REGISTRY", dict(init_module._REGISTRY))
    spec = register_init(InitSpec("test_fan_out_normal", 3.0, "fan_out", "normal"))
    assert get_init("test_fan_out_normal") is spec
    w = torch.empty(500, 200, dtype=torch.float64)
    init_weights_(nn.Linear(200, 500), "test_fan_out_normal")  # usable by name everywhere
    spec(w, generator=_gen())
    assert w.var().item() == pytest.approx(3.0 / 500, rel=0.03)
    with pytest.raises(ValueError, match="already registered"):
        register_init(InitSpec("he_normal", 2.0, "fan_in", "normal"))
    with pytest.raises(TypeError, match="`spec`"):
        register_init("he_normal")  # type: ignore[arg-type]


def test_init_spec_validates_fields() -> None:
    with pytest.raises(ValueError, match="`scale`"):
        InitSpec("x", 0.0, "fan_in", "normal")
    with pytest.raises(ValueError, match="`mode`"):
        InitSpec("x", 1.0, "fan_inn", "normal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`distribution`"):
        InitSpec("x", 1.0, "fan_in", "gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`name`"):
        InitSpec("", 1.0, "fan_in", "normal")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tensor": torch.empty(10)}, ValueError, "`tensor` must have at least 2 dimensions"),
        ({"tensor": [[1.0]]}, TypeError, "`tensor` must be a torch.Tensor"),
        ({"scale": 0.0}, ValueError, "`scale` must be > 0"),
        ({"scale": -1.0}, ValueError, "`scale` must be > 0"),
        ({"scale": "2"}, TypeError, "`scale` must be a real number"),
        ({"mode": "fan_inn"}, ValueError, "`mode` must be one of.*Did you mean 'fan_in'"),
        ({"distribution": "gaussian"}, ValueError, "`distribution` must be one of"),
        ({"generator": 0}, TypeError, "`generator`"),
    ],
)
def test_variance_scaling_bad_input(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"tensor": torch.empty(4, 5), **kwargs}
    with pytest.raises(error, match=match):
        variance_scaling_(**args)


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 200), nn.BatchNorm1d(200)
    )


def test_init_weights_applies_scheme_and_zeros_biases() -> None:
    net = nn.Sequential(nn.Linear(500, 400), nn.ReLU(), nn.Conv2d(40, 64, 5))
    init_weights_(net, "he_avg_normal", generator=_gen())
    assert net[0].weight.var().item() == pytest.approx(2.0 / 450, rel=0.03)
    assert net[2].weight.var().item() == pytest.approx(2.0 / ((40 * 25 + 64 * 25) / 2), rel=0.03)
    assert torch.count_nonzero(net[0].bias) == 0 and torch.count_nonzero(net[2].bias) == 0


def test_init_weights_leaves_other_layers_and_is_reproducible() -> None:
    a, b = _net(), _net()
    with torch.no_grad():
        a[4].weight.fill_(3.0)
    init_weights_(a, "lecun_normal", generator=_gen(5))
    init_weights_(b, "lecun_normal", generator=_gen(5))
    assert torch.all(a[4].weight == 3.0)  # batch norm untouched
    for pa, pb in zip(a[0].parameters(), b[0].parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert torch.equal(a[3].weight, b[3].weight)


def test_torch_default_leaves_layers_or_redraws_with_generator() -> None:
    layer = nn.Linear(400, 300)
    before = [p.detach().clone() for p in layer.parameters()]
    init_weights_(layer, "torch_default")
    for p, q in zip(layer.parameters(), before, strict=True):
        assert torch.equal(p, q)
    init_weights_(layer, "torch_default", generator=_gen())
    bound = 1 / math.sqrt(400)
    assert layer.weight.abs().max().item() <= bound
    assert layer.weight.var().item() == pytest.approx(bound**2 / 3, rel=0.03)
    assert layer.bias.abs().max().item() <= bound and torch.count_nonzero(layer.bias) == 300
    # Same generator, same draw as torch's reset_parameters distribution for the weight.
    ref = nn.init.kaiming_uniform_(torch.empty(300, 400), a=math.sqrt(5), generator=_gen())
    torch.testing.assert_close(layer.weight.detach(), ref)


def test_init_weights_accepts_callable_scheme() -> None:
    net = _net()
    init_weights_(net, nn.init.ones_)
    assert torch.all(net[0].weight == 1) and torch.all(net[3].weight == 1)
    assert torch.count_nonzero(net[0].bias) == 0 and torch.count_nonzero(net[3].bias) == 0
    with pytest.raises(ValueError, match="`generator` cannot be passed to a custom callable `scheme`"):
        init_weights_(net, nn.init.ones_, generator=_gen())


def test_init_weights_bad_input() -> None:
    with pytest.raises(TypeError, match=r"`module` must be an nn\.Module"):
        init_weights_(torch.empty(3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`module`.*no Linear or ConvNd"):
        init_weights_(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match=r"`scheme`.*Did you mean 'glorot_uniform'"):
        init_weights_(nn.Linear(2, 2), "glorot_unifrom")
    with pytest.raises(TypeError, match="`scheme` must be an init scheme name"):
        init_weights_(nn.Linear(2, 2), 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`generator`"):
        init_weights_(nn.Linear(2, 2), generator=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uninitialized lazy layer"):
        init_weights_(nn.LazyLinear(3))
