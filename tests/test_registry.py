"""The one registry shape: strict registration, lookups by name with close matches, sorted listings."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from lightning_dnn._registry import available, lookup, register
from lightning_dnn.hub import available_architectures, get_architecture, register_architecture
from lightning_dnn.nn import MLP, available_activations, available_inits, get_activation, get_init
from lightning_dnn.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule


@dataclass(frozen=True)
class Spec:
    name: str
    value: int = 0


def test_register_refuses_a_duplicate_name_and_keeps_the_first() -> None:
    table: dict[str, Spec] = {}
    first = register(table, "widget", Spec("a", 1))
    with pytest.raises(
        ValueError, match=r"^Widget 'a' is already registered \(Spec\(name='a', value=1\)\); pick"
    ):
        register(table, "widget", Spec("a", 2))
    assert table == {"a": first}


@pytest.mark.parametrize("name", ["", "  "])
def test_register_refuses_an_empty_name(name: str) -> None:
    with pytest.raises(ValueError, match="widget name must be a non-empty string"):
        register({}, "widget", Spec(name))


def test_lookup_returns_the_registered_spec_itself() -> None:
    table: dict[str, Spec] = {}
    spec = register(table, "widget", Spec("a"))
    assert lookup(table, "widget", "a") is spec
    assert lookup(table, "widget", " A ", fold_case=True) is spec


def test_lookup_of_an_unknown_name_lists_close_matches_and_every_name() -> None:
    table = {name: Spec(name) for name in ("gamma", "alpha", "alpine")}
    with pytest.raises(
        ValueError,
        match=r"^Unknown widget 'alpah'\. Did you mean 'alpha'.*Valid names: alpha, alpine, gamma\.$",
    ):
        lookup(table, "widget", "alpah")
    with pytest.raises(
        ValueError, match=r"Unknown widget 'ALPHA'\. Did you mean 'alpha'\?"
    ):  # case-sensitive table
        lookup(table, "widget", "ALPHA")
    with pytest.raises(ValueError, match=r"Unknown widget 'zzz'\. Valid names"):
        lookup(table, "widget", "zzz")


def test_lookup_of_a_non_string_names_the_argument() -> None:
    with pytest.raises(TypeError, match=r"`architecture` must be a string \(widget name\), got int 3"):
        lookup({}, "widget", 3, arg="architecture")


def test_available_is_sorted() -> None:
    assert available({"b": 1, "a": 2, "C": 3}) == ("C", "a", "b")


def test_every_registry_speaks_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    # the five public registries: sorted listings, unknown names with close matches
    assert available_inits() == tuple(sorted(available_inits()))
    assert available_activations() == tuple(sorted(available_activations()))
    assert available_architectures() == tuple(sorted(available_architectures()))
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=0.1)
    for lookup_name, match in [
        (lambda: get_init("he_norml"), "Unknown init scheme 'he_norml'. Did you mean 'he_normal'"),
        (lambda: get_activation("rleu"), "Unknown activation 'rleu'. Did you mean 'relu'"),
        (lambda: build_optimizer("adamm", params, 0.1), "Unknown optimizer 'adamm'. Did you mean 'adam'"),
        (
            lambda: build_schedule("pwer", optimizer),
            "Unknown learning-rate schedule 'pwer'. Did you mean 'power'",
        ),
        (lambda: get_architecture("mlp"), "Unknown architecture 'mlp'. Did you mean 'MLP'"),
    ]:
        with pytest.raises(ValueError, match=match.replace(".", r"\.")):
            lookup_name()
    assert OPTIMIZERS["adam"].name == "adam" and SCHEDULES["power"].name == "power"
    with pytest.raises(ValueError, match=r"Architecture 'MLP' is already registered"):
        register_architecture("MLP", MLP)
