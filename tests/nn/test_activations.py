"""Activations by name, checked against their formulas."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lightning_dnn.nn import available_activations, get_activation

X = torch.linspace(-4.0, 4.0, 81, dtype=torch.float64)
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _elementwise(f: Callable[[float], float]) -> torch.Tensor:
    return torch.tensor([f(v) for v in X.tolist()], dtype=torch.float64)


FORMULAS: dict[str, tuple[dict, Callable[[float], float]]] = {
    "relu": ({}, lambda v: max(v, 0.0)),
    "leaky_relu": ({}, lambda v: v if v >= 0 else 0.01 * v),
    "elu": ({}, lambda v: v if v >= 0 else math.exp(v) - 1),
    "selu": ({}, lambda v: SELU_SCALE * (v if v >= 0 else SELU_ALPHA * (math.exp(v) - 1))),
    "tanh": ({}, math.tanh),
    "sigmoid": ({}, lambda v: 1 / (1 + math.exp(-v))),
    "logistic": ({}, lambda v: 1 / (1 + math.exp(-v))),
    "prelu": ({}, lambda v: v if v >= 0 else 0.25 * v),
}


@pytest.mark.parametrize("name", FORMULAS)
def test_matches_formula(name: str) -> None:
    kwargs, formula = FORMULAS[name]
    act = get_activation(name, **kwargs).double()
    torch.testing.assert_close(act(X), _elementwise(formula))


@pytest.mark.parametrize(
    ("name", "kwargs", "formula"),
    [
        ("leaky_relu", {"negative_slope": 0.2}, lambda v: v if v >= 0 else 0.2 * v),
        ("elu", {"alpha": 0.5}, lambda v: v if v >= 0 else 0.5 * (math.exp(v) - 1)),
        ("prelu", {"init": 0.1}, lambda v: v if v >= 0 else 0.1 * v),
    ],
)
def test_keyword_arguments(name: str, kwargs: dict, formula: Callable[[float], float]) -> None:
    act = get_activation(name, **kwargs).double()
    torch.testing.assert_close(act(X), _elementwise(formula))
    # The JSON form gives the same module.
    torch.testing.assert_close(get_activation({"name": name, **kwargs}).double()(X), act(X))


def test_names_are_case_insensitive() -> None:
    assert isinstance(get_activation("ReLU"), nn.ReLU)
    assert isinstance(get_activation(" ELU "), nn.ELU)


def test_available_activations_lists_every_name() -> None:
    assert set(available_activations()) == {
        "relu",
        "leaky_relu",
        "rrelu",
        "prelu",
        "elu",
        "selu",
        "tanh",
        "sigmoid",
        "logistic",
    }


def test_rrelu_random_slope_in_training_mean_slope_in_eval() -> None:
    torch.manual_seed(0)
    lower, upper = 0.1, 0.3
    act = get_activation("rrelu", lower=lower, upper=upper)
    x = torch.cat([-torch.rand(20000) - 0.1, torch.rand(100) + 0.1])
    act.train()
    y = act(x)
    slopes = y[:20000] / x[:20000]
    assert slopes.min().item() >= lower - 1e-6 and slopes.max().item() <= upper + 1e-6
    assert slopes.std().item() == pytest.approx((upper - lower) / math.sqrt(12), rel=0.05)  # U(lower, upper)
    assert slopes.mean().item() == pytest.approx((lower + upper) / 2, rel=0.01)
    assert torch.equal(y[20000:], x[20000:])
    act.eval()
    torch.testing.assert_close(act(x), torch.where(x >= 0, x, x * (lower + upper) / 2))


def test_rrelu_defaults() -> None:
    act = get_activation("rrelu").eval()
    torch.testing.assert_close(act(torch.tensor([-6.0])), torch.tensor([-6.0 * (1 / 8 + 1 / 3) / 2]))


def test_prelu_has_a_learned_slope() -> None:
    act = get_activation("prelu", num_parameters=3)
    (slope,) = list(act.parameters())
    assert slope.shape == (3,) and torch.all(slope == 0.25)
    x = torch.tensor([[-1.0, 2.0, -3.0], [-2.0, -1.0, 4.0]])
    act(x).sum().backward()
    # d/da_c sum(prelu(x)) = sum of the negative inputs in channel c.
    torch.testing.assert_close(slope.grad, torch.tensor([-3.0, -1.0, -3.0]))
    torch.optim.SGD([slope], lr=0.1).step()
    torch.testing.assert_close(slope.detach(), torch.tensor([0.55, 0.35, 0.55]))


def test_module_instance_is_deep_copied() -> None:
    prelu = nn.PReLU(init=0.4)
    a, b = get_activation(prelu), get_activation(prelu)
    assert a is not prelu and a is not b
    assert isinstance(a, nn.PReLU) and isinstance(b, nn.PReLU)
    assert a.weight is not b.weight and a.weight.data_ptr() != prelu.weight.data_ptr()
    torch.testing.assert_close(a.weight, prelu.weight)


def test_module_class_is_instantiated() -> None:
    act = get_activation(nn.LeakyReLU, negative_slope=0.3)
    assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.3


def test_each_call_builds_a_new_module() -> None:
    a, b = get_activation("prelu"), get_activation("prelu")
    assert a.weight is not b.weight


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown activation 'rleu'.*Did you mean 'relu'.*Valid names: elu,"
    ):
        get_activation("rleu")
    with pytest.raises(ValueError, match=r"Valid names: .*leaky_relu.*tanh"):
        get_activation("swishy")


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("leaky_relu",), {"negative_slope": -0.1}, ValueError, "`negative_slope` must be >= 0"),
        (("leaky_relu",), {"negative_slope": "0.1"}, TypeError, "`negative_slope` must be a real number"),
        (("elu",), {"alpha": 0.0}, ValueError, "`alpha` must be > 0"),
        (("elu",), {"alpha": -1.0}, ValueError, "`alpha` must be > 0"),
        (("rrelu",), {"lower": 0.5, "upper": 0.2}, ValueError, "`lower` must be <= `upper`"),
        (("rrelu",), {"lower": -0.1}, ValueError, "`lower` must be >= 0"),
        (("prelu",), {"num_parameters": 0}, ValueError, "`num_parameters` must be >= 1"),
        (("prelu",), {"init": float("nan")}, ValueError, "`init` must be finite"),
        (
            ("relu",),
            {"negative_slope": 0.1},
            TypeError,
            r"activation 'relu' does not accept keyword 'negative_slope'; accepted: none",
        ),
        (("relu",), {"inplace": True}, TypeError, "activation 'relu' does not accept keyword 'inplace'"),
        (("elu",), {"slope": 0.1}, TypeError, r"'slope'; accepted: alpha=1\.0"),
        (
            ("Rrelu",),
            {"lowr": 0.1},
            TypeError,
            r"'lowr' \(did you mean 'lower'\?\); accepted: lower=0\.125, upper=",
        ),
        ((nn.ReLU(),), {"inplace": True}, TypeError, "cannot be applied to an activation module instance"),
        ((42,), {}, TypeError, "`name_or_module` must be an activation name"),
        ((nn.Linear,), {}, TypeError, "in_features"),  # the class's own constructor error
        (({"alpha": 1.0},), {}, ValueError, "`name_or_module` mapping must have a 'name' key"),
        (({"name": 3},), {}, TypeError, r"`name_or_module\['name'\]` must be a string"),
        (({"name": "elu"},), {"alpha": 2.0}, TypeError, "either inside the `name_or_module` mapping"),
        (({"name": "elu", "alpha": 0},), {}, ValueError, "`alpha` must be > 0"),
    ],
)
def test_bad_input(args: tuple, kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        get_activation(*args, **kwargs)
