"""The architecture registry: strict registration, lookups with close matches, building from config."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from torch import nn

from lightning_dnn._specs import network_config
from lightning_dnn.hub import architectures, available_architectures, get_architecture, register_architecture
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP


@pytest.fixture(autouse=True)
def private_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(architectures, "_REGISTRY", dict(architectures._REGISTRY))
    yield


class Small(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.width = width
        self.layer = nn.Linear(width, width)

    @property
    def config(self) -> dict[str, int]:
        return {"width": self.width}

    @classmethod
    def from_config(cls, config: dict[str, int]) -> Small:
        return cls(**config)


def test_register_then_build_through_from_config() -> None:
    spec = register_architecture("Small", Small)
    assert "Small" in available_architectures()
    assert get_architecture("Small") is spec
    net = spec.build({"width": 4})
    assert isinstance(net, Small) and net.layer.in_features == 4
    assert spec.config_of(net) == {"width": 4}


def test_duplicates_are_refused() -> None:
    register_architecture("Small", Small)
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("Small", MLP)
    with pytest.raises(ValueError, match="Small is already registered as 'Small'"):
        register_architecture("Other", Small)


def test_classes_without_config_are_refused() -> None:
    with pytest.raises(TypeError, match="from_config"):
        register_architecture("Linear", nn.Linear)
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        register_architecture("Thing", object)  # type: ignore[arg-type]


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(ValueError, match=r"Unknown architecture 'Mlp'\. Did you mean 'MLP'\?"):
        get_architecture("Mlp")


class NotJsonable(Small):
    @property
    def config(self) -> dict[str, Any]:
        return {"width": self.width, "scale": float("nan")}


def test_config_is_read_like_the_checkpoint_path() -> None:
    # one reading of a network's config: config.json and DNNClassifier's checkpoints agree
    net = MLP(4, (5,), 3, activation="relu")
    config = get_architecture("MLP").config_of(net)
    assert config == network_config(net) == DNNClassifier(net).hparams["net"]["init_args"]
    with pytest.raises(TypeError, match=r"MLP\.config needs `activation` as a name"):
        get_architecture("MLP").config_of(MLP(4, (5,), 3, activation=nn.ReLU()))
    spec = register_architecture("NotJsonable", NotJsonable)
    with pytest.raises(TypeError, match=r"NotJsonable\.config must be JSON-able"):
        spec.config_of(NotJsonable())
    assert DNNClassifier(NotJsonable(), num_classes=3).hparams["net"] is None
