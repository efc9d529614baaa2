"""build_optimizer by name: the right torch class, defaults, overrides, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_dnn.optim import FTRL, OPTIMIZERS, OptimizerSpec, build_optimizer, register_optimizer
from lightning_dnn.optim import factory as factory_module


def params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(3, 2)), nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(
    ("name", "cls", "expected"),
    [
        ("sgd", torch.optim.SGD, {"momentum": 0, "nesterov": False}),
        ("momentum", torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
        ("nesterov", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
        ("adagrad", torch.optim.Adagrad, {"initial_accumulator_value": 0, "eps": 1e-10}),
        ("rmsprop", torch.optim.RMSprop, {"alpha": 0.99, "eps": 1e-8, "momentum": 0}),
        ("adam", torch.optim.Adam, {"betas": (0.9, 0.999), "eps": 1e-8}),
        ("adamw", torch.optim.AdamW, {"weight_decay": 0.01}),
        ("ftrl", FTRL, {"lr_power": -0.5, "initial_accumulator_value": 0.1, "l1": 0.0}),
    ],
)
def test_each_name_builds_the_right_class_with_its_defaults(
    name: str, cls: type[torch.optim.Optimizer], expected: dict[str, object]
) -> None:
    opt = build_optimizer(name, params(), lr=0.05)
    assert type(opt) is cls
    assert opt.defaults["lr"] == 0.05
    for key, value in expected.items():
        assert opt.defaults[key] == value, key


def test_built_optimizer_steps_exactly_like_the_torch_one() -> None:
    gen = torch.Generator().manual_seed(0)
    w0, grads = torch.randn(4, generator=gen), [torch.randn(4, generator=gen) for _ in range(3)]
    ours, theirs = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    a = build_optimizer("nesterov", [ours], lr=0.1)
    b = torch.optim.SGD([theirs], lr=0.1, momentum=0.9, nesterov=True)
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        a.step()
        b.step()
    assert torch.equal(ours, theirs)


def test_kwargs_override_the_defaults() -> None:
    assert build_optimizer("momentum", params(), 0.1, momentum=0.5).defaults["momentum"] == 0.5
    rms = build_optimizer("rmsprop", params(), 0.01, alpha=0.9, eps=1e-10, momentum=0.9)  # TF1's documented
    assert (rms.defaults["alpha"], rms.defaults["eps"], rms.defaults["momentum"]) == (0.9, 1e-10, 0.9)
    ftrl = build_optimizer("ftrl", params(), 0.1, l1=0.01, lr_power=-0.3)
    assert (ftrl.defaults["l1"], ftrl.defaults["lr_power"]) == (0.01, -0.3)


def test_param_groups_pass_through() -> None:
    a, b = params()
    opt = build_optimizer("adam", [{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert [group["lr"] for group in opt.param_groups] == [0.1, 0.5]


def test_names_are_case_insensitive() -> None:
    assert type(build_optimizer("  AdamW ", params(), 0.1)) is torch.optim.AdamW


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown optimizer 'nesterv'\. Did you mean 'nesterov'\?.*Valid names"
    ):
        build_optimizer("nesterv", params(), 0.1)


def test_unknown_keyword_suggests_close_matches() -> None:
    with pytest.raises(TypeError, match=r"does not accept keyword 'momentun' \(did you mean 'momentum'\?\)"):
        build_optimizer("sgd", params(), 0.1, momentun=0.9)


@pytest.mark.parametrize(
    ("lr", "error", "match"),
    [
        (0.0, ValueError, "`lr` must be > 0"),
        (-1.0, ValueError, "`lr` must be > 0"),
        ("0.1", TypeError, "`lr`"),
    ],
)
def test_bad_learning_rate(lr: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build_optimizer("adam", params(), lr)  # type: ignore[arg-type]


def test_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="`name` must be a string"):
        build_optimizer(torch.optim.Adam, params(), 0.1)  # type: ignore[arg-type]


def test_registry_lists_the_eight_names_and_is_read_only() -> None:
    assert {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "ftrl"} <= set(OPTIMIZERS)
    assert isinstance(OPTIMIZERS["adam"], OptimizerSpec)
    with pytest.raises(TypeError):
        OPTIMIZERS["mine"] = OPTIMIZERS["adam"]  # type: ignore[index]
    with pytest.raises(TypeError):
        OPTIMIZERS["nesterov"].defaults["momentum"] = 0.5  # type: ignore[index]


def test_register_optimizer_adds_a_name_and_refuses_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory_module, "_REGISTRY", dict(factory_module._REGISTRY))
    monkeypatch.setattr(
        factory_module, "OPTIMIZERS", factory_module.MappingProxyType(factory_module._REGISTRY)
    )
    spec = register_optimizer("heavy_ball", torch.optim.SGD, {"momentum": 0.99}, summary="SGD, momentum 0.99")
    assert spec == OptimizerSpec("heavy_ball", torch.optim.SGD, {"momentum": 0.99}, "SGD, momentum 0.99")
    assert build_optimizer("heavy_ball", params(), 0.1).defaults["momentum"] == 0.99
    with pytest.raises(ValueError, match="'heavy_ball' is already registered"):
        register_optimizer("heavy_ball", torch.optim.Adam)
    with pytest.raises(ValueError, match="'adam' is already registered"):
        register_optimizer("adam", torch.optim.Adam)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("", torch.optim.SGD), ValueError, "non-empty lower-case"),
        (("Upper", torch.optim.SGD), ValueError, "non-empty lower-case"),
        ((3, torch.optim.SGD), TypeError, "`name` must be a string"),
        (("plain", nn.Linear), TypeError, "Optimizer subclass"),
        (("plain", torch.optim.SGD, {"momentom": 0.9}), TypeError, "did you mean 'momentum'"),
    ],
)
def test_register_optimizer_validates(args: tuple[object, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        register_optimizer(*args)  # type: ignore[arg-type]
    assert "plain" not in OPTIMIZERS
