"""The architecture registry: strict registration, lookups with close matches, building from config."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from torch import nn

from lightning_dnn.hub import architectures, available_architectures, get_architecture, register_architecture
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
