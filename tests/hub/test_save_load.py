"""save_pretrained / load_pretrained on local folders: files, card, round trip, atomic writes, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

import lightning_dnn
from lightning_dnn.hub import (
    StrictLoadError,
    UnsafeWeightsError,
    architectures,
    load_pretrained,
    register_architecture,
    save_pretrained,
)
from lightning_dnn.nn import MLP
from tests.hub.conftest import METADATA, make_mlp


def _front_matter(readme: str) -> dict[str, object]:
    assert readme.startswith("---\n")
    text = readme.split("---\n")[1]
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def test_folder_holds_config_weights_and_card(tmp_path: Path) -> None:
    net = make_mlp(0)
    folder = save_pretrained(
        net, tmp_path / "model", metadata=METADATA, card={"license": "mit", "tags": ["digits"]}
    )

    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config == {
        "library": "lightning-dnn",
        "library_version": lightning_dnn.__version__,
        "architecture": "MLP",
        "config": net.config,
        "metadata": METADATA,
    }
    tensors = load_file(str(folder / "model.safetensors"))
    state = net.state_dict()
    assert list(sorted(tensors)) == sorted(state)
    for name, value in state.items():
        assert torch.equal(tensors[name], value), name

    readme = (folder / "README.md").read_text()
    front = _front_matter(readme)
    assert front["library_name"] == "lightning-dnn"
    assert front["license"] == "mit"
    assert front["datasets"] == ["digits"]
    assert front["metrics"] == ["test_accuracy"]
    assert {"lightning-dnn", "pytorch", "mlp", "digits"} <= set(front["tags"])  # type: ignore[arg-type]
    assert "| test_accuracy | 0.9100 |" in readme
    assert 'load_pretrained("path/to/this/folder")' in readme
    assert "| `hidden` | `[10, 8, 6]` |" in readme


def test_card_text_is_kept_and_front_matter_added_when_missing(tmp_path: Path) -> None:
    own = "---\nlicense: mit\nlibrary_name: lightning-dnn\n---\n\n# Mine\n"
    folder = save_pretrained(make_mlp(0), tmp_path / "a", card=own)
    assert (folder / "README.md").read_text() == own

    folder = save_pretrained(
        make_mlp(0), tmp_path / "b", card="# Only a body", metadata={"license": "cc-by-4.0"}
    )
    readme = (folder / "README.md").read_text()
    assert _front_matter(readme)["license"] == "cc-by-4.0"
    assert readme.rstrip().endswith("# Only a body")


def test_round_trip_gives_identical_logits_and_buffers(tmp_path: Path) -> None:
    net = make_mlp(3)
    folder = save_pretrained(net, tmp_path / "m")
    loaded, report = load_pretrained(folder)

    assert isinstance(loaded, MLP) and loaded is not net
    assert loaded.config == net.config
    assert not loaded.training
    assert report.loaded == list(net.state_dict()) and report.ok and not report.skipped
    x = torch.randn(16, 12)
    assert torch.equal(loaded(x), net(x))
    for name, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert all(p.requires_grad for p in loaded.parameters())


def test_partial_load_keeps_new_layers_initialized(tmp_path: Path) -> None:
    folder = save_pretrained(make_mlp(0), tmp_path / "m")
    torch.manual_seed(5)
    fresh = MLP(12, (10, 8, 6), 4, norm="batch", dropout=0.1)
    torch.manual_seed(5)
    net, report = load_pretrained(folder, include="hidden1")

    assert [n for n in report.loaded] == [n for n in fresh.state_dict() if n.startswith("hidden1.")]
    for name, value in net.state_dict().items():
        expected = make_mlp(0).state_dict()[name] if name.startswith("hidden1.") else fresh.state_dict()[name]
        assert torch.equal(value, expected), name


def test_save_overwrites_an_existing_folder_and_keeps_other_files(tmp_path: Path) -> None:
    folder = save_pretrained(make_mlp(0), tmp_path / "m")
    (folder / "recipe.yaml").write_text("model: {}\n")
    save_pretrained(make_mlp(1), folder)
    net, _ = load_pretrained(folder)
    assert torch.equal(net.hidden1.linear.weight, make_mlp(1).hidden1.linear.weight)
    assert (folder / "recipe.yaml").read_text() == "model: {}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging folder left behind


def test_interrupted_save_never_leaves_a_folder_that_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_pretrained(make_mlp(0), tmp_path / "m")
    real_replace = os.replace
    calls: list[str] = []

    def crash_on_second_move(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second_move)
    with pytest.raises(OSError, match="simulated crash"):
        save_pretrained(make_mlp(1), folder)
    monkeypatch.undo()

    assert calls[0] == "model.safetensors"  # the new weights went in; config.json was removed first
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_interrupted_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_pretrained(make_mlp(0), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_pickle_only_folder_is_refused(tmp_path: Path) -> None:
    folder = save_pretrained(make_mlp(0), tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UnsafeWeightsError, match=r"pytorch_model\.bin.*never unpickles") as info:
        load_pretrained(folder)
    assert info.value.files == ["pytorch_model.bin"]


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"hf://org/name"):
        load_pretrained("org/name")
    folder = save_pretrained(make_mlp(0), tmp_path / "m")
    with pytest.raises(ValueError, match="hf:// sources only"):
        load_pretrained(folder, revision="main")
    config = json.loads((folder / "config.json").read_text())
    config["library"] = "transformers"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a lightning-dnn config"):
        load_pretrained(folder)
    config["library"], config["architecture"] = "lightning-dnn", "MPL"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Did you mean 'MLP'"):
        load_pretrained(folder)


def test_strict_build_with_a_renamed_file_raises_and_lists_all(tmp_path: Path) -> None:
    folder = save_pretrained(make_mlp(0), tmp_path / "m")
    with pytest.raises(StrictLoadError) as info:
        load_pretrained(folder, rename={"hidden1.": "first."})
    names = [n for n in make_mlp(0).state_dict() if n.startswith("hidden1.")]
    for name in names:
        assert name in str(info.value)
        assert name.replace("hidden1.", "first.") in str(info.value)
    assert info.value.report.missing == names


def test_save_refuses_what_it_cannot_rebuild(tmp_path: Path) -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = MLP(4, 3, 2)

    with pytest.raises(TypeError, match=r"not a registered architecture.*pass that instead"):
        save_pretrained(Wrapper(), tmp_path / "w")
    with pytest.raises(TypeError, match="activation"):
        save_pretrained(MLP(4, 3, 2, activation=nn.ReLU()), tmp_path / "x")
    with pytest.raises(ValueError, match="finite number"):
        save_pretrained(MLP(4, 3, 2), tmp_path / "y", metadata={"metrics": {"acc": float("nan")}})
    with pytest.raises(TypeError, match="JSON-able"):
        save_pretrained(MLP(4, 3, 2), tmp_path / "y", metadata={"when": object()})
    with pytest.raises(ValueError, match="unknown key"):
        save_pretrained(MLP(4, 3, 2), tmp_path / "y", card={"licence": "mit"})
    assert not (tmp_path / "y").exists()


class TiedNet(nn.Module):
    """Encoder and decoder share one weight tensor (safetensors refuses shared memory as is)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.encoder = nn.Linear(width, width, bias=False)
        self.decoder = nn.Linear(width, width, bias=False)
        self.decoder.weight = self.encoder.weight

    @property
    def config(self) -> dict[str, int]:
        return {"width": self.width}

    @classmethod
    def from_config(cls, config: dict[str, int]) -> TiedNet:
        return cls(**config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def test_shared_tensors_save_and_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(architectures, "_REGISTRY", dict(architectures._REGISTRY))
    register_architecture("TiedNet", TiedNet)
    net = TiedNet(5)
    folder = save_pretrained(net, tmp_path / "tied")
    loaded, report = load_pretrained(folder)
    assert isinstance(loaded, TiedNet)
    assert report.loaded == ["encoder.weight", "decoder.weight"]
    assert loaded.decoder.weight is loaded.encoder.weight
    x = torch.randn(3, 5)
    assert torch.equal(loaded(x), net(x))


def test_map_location_is_checked(tmp_path: Path) -> None:
    folder = save_pretrained(make_mlp(0), tmp_path / "m")
    with pytest.raises(ValueError, match="map_location"):
        load_pretrained(folder, map_location="gpu0")
    with pytest.raises(TypeError, match="map_location"):
        load_pretrained(folder, map_location=0)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_networks_save_and_load_onto_the_device(tmp_path: Path) -> None:
    net = make_mlp(0).cuda()
    folder = save_pretrained(net, tmp_path / "m")
    on_gpu, _ = load_pretrained(folder, map_location="cuda")
    assert all(t.is_cuda for t in on_gpu.state_dict().values())
    x = torch.randn(4, 12, device="cuda")
    assert torch.equal(on_gpu(x), net(x))
    cpu_target = MLP(12, (10, 8, 6), 4, norm="batch").eval()
    load_pretrained(folder, into=cpu_target, map_location="cuda")
    assert torch.equal(cpu_target(x.cpu()), net(x).cpu())


def test_selection_arguments_are_checked_before_any_download() -> None:
    # A dead endpoint: reaching the network first would fail differently (after retries).
    with pytest.raises(ValueError, match="invalid regex"):
        load_pretrained("hf://org/m", include="hidden[", endpoint="http://127.0.0.1:9")
    with pytest.raises(TypeError, match="rename"):
        load_pretrained("hf://org/m", rename={"a": 1}, endpoint="http://127.0.0.1:9")  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="strict"):
        load_pretrained("hf://org/m", strict="yes", endpoint="http://127.0.0.1:9")  # type: ignore[arg-type]
