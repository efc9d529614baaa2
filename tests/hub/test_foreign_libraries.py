"""Other libraries' Hub folders: timm's ``save_for_hf`` and huggingface_hub's ``PyTorchModelHubMixin``.

Every folder is written by the library itself (timm 1.x, huggingface_hub), then read by ``load_pretrained``: into
the library's own network, into a user's network (rename/include/exclude), built without ``into`` where the format
allows it, over ``hf://`` from the olah server of ``conftest.py`` (pinned revisions), and refused loudly where it
must be (pickles, configs no rule recognises).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from lightning_dnn.hub import StrictLoadError, UnsafeWeightsError, load_pretrained
from tests.hub.conftest import HubServer

timm = pytest.importorskip("timm")
ARCH = "test_resnet"  # timm's own tiny test network (373k parameters)


def seeded_timm(seed: int, num_classes: int = 5) -> nn.Module:
    """A timm test_resnet with seeded weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    net: nn.Module = timm.create_model(ARCH, pretrained=False, num_classes=num_classes)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return seeded_timm(0)


@pytest.fixture(scope="module")
def timm_folder(trained: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("timm") / "safe"
    timm.models.save_for_hf(trained, str(folder), safe_serialization=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    return folder


@pytest.fixture(scope="module")
def timm_pickle_folder(trained: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("timm") / "pickle"
    timm.models.save_for_hf(trained, str(folder))  # timm's default: pytorch_model.bin only
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin"]
    return folder


# --- timm ------------------------------------------------------------------------------------------------------------


def test_timm_folder_into_a_timm_model_bit_for_bit(trained: nn.Module, timm_folder: Path) -> None:
    target = seeded_timm(1)
    net, report = load_pretrained(timm_folder, into=target)
    assert net is target and report.ok and report.source_format == "timm"
    assert report.loaded == list(trained.state_dict()) and report.skipped == []
    assert_same_tensors(net.state_dict(), trained.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x), trained(x))


def test_timm_folder_without_into_is_built_by_timm(trained: nn.Module, timm_folder: Path) -> None:
    net, report = load_pretrained(timm_folder)
    assert type(net) is type(trained) and not net.training
    assert report.ok and report.source_format == "timm" and "format: timm" in str(report)
    assert_same_tensors(net.state_dict(), trained.state_dict())


class UserNet(nn.Module):
    """A user's network: timm's trunk (no head) under ``trunk`` and a new classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = timm.create_model(ARCH, pretrained=False, num_classes=0)
        self.classifier = nn.Linear(96, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk(x))


def test_timm_folder_into_a_users_network_with_rename_and_include(
    trained: nn.Module, timm_folder: Path
) -> None:
    torch.manual_seed(2)
    target = UserNet().eval()
    head = {k: v.clone() for k, v in target.classifier.state_dict().items()}
    rename = {p: f"trunk.{p}" for p in ("conv1", "bn1", "layer")}
    net, report = load_pretrained(timm_folder, into=target, rename=rename, include="trunk")
    assert net is target
    trunk_names = [n for n in trained.state_dict() if not n.startswith("fc.")]
    assert report.ok and report.loaded == [f"trunk.{n}" for n in trunk_names]
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]  # the file's head, outside the selection
    got = target.trunk.state_dict()
    assert_same_tensors(got, {n: trained.state_dict()[n] for n in trunk_names})
    assert_same_tensors(target.classifier.state_dict(), head)  # outside the selection: untouched


def test_timm_folder_exclude_skips_the_mismatched_head(trained: nn.Module, timm_folder: Path) -> None:
    target = seeded_timm(3, num_classes=7)
    head = target.state_dict()["fc.weight"].clone()
    with pytest.raises(StrictLoadError, match=r"fc\.weight \(file \(5, 96\) vs target \(7, 96\)\)"):
        load_pretrained(timm_folder, into=seeded_timm(3, num_classes=7))
    _, report = load_pretrained(timm_folder, into=target, exclude="fc")
    assert report.ok and sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(target.state_dict()["fc.weight"], head)
    name = "layer4.0.conv1.weight"
    assert torch.equal(target.state_dict()[name], trained.state_dict()[name])


def test_timm_pickle_folder_is_refused_with_the_safetensors_hint(
    timm_pickle_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load was called: a pickle was opened")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(
        UnsafeWeightsError,
        match=r"pytorch_model\.bin.*never unpickles.*timm folder.*save_for_hf\(model, folder, safe_serialization=True\)",
    ) as info:
        load_pretrained(timm_pickle_folder, into=seeded_timm(1))
    assert info.value.files == ["pytorch_model.bin"]


def test_timm_config_that_would_load_a_checkpoint_is_refused(timm_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((timm_folder / "model.safetensors").read_bytes())
    config = json.loads((timm_folder / "config.json").read_text())
    config["model_args"]["checkpoint_path"] = str(tmp_path / "x.pth")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'model_args' \['checkpoint_path'\] would make timm load files"):
        load_pretrained(folder)
    config["architecture"], config["model_args"] = "test_resnett", {}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"no architecture 'test_resnett' \(close matches: \['test_resnet'"):
        load_pretrained(folder)


def test_timm_repo_over_hf_with_pinned_revisions(
    trained: nn.Module, timm_folder: Path, timm_pickle_folder: Path, olah: HubServer, tmp_path: Path
) -> None:
    newer = seeded_timm(4)
    folder_v2 = tmp_path / "v2"
    timm.models.save_for_hf(newer, str(folder_v2), safe_serialization=True)
    repo = olah.server.add_repo("timm/test_resnet.h3", [timm_folder, folder_v2], tags={"v1": 0})
    cache = tmp_path / "cache"
    for revision, expected in (("v1", trained), (repo.commits[0], trained), (None, newer), ("main", newer)):
        net, report = load_pretrained(
            "hf://timm/test_resnet.h3",
            revision=revision,
            into=seeded_timm(1),
            endpoint=olah.url,
            cache_dir=cache,
        )
        assert report.ok and report.source_format == "timm", revision
        assert_same_tensors(net.state_dict(), expected.state_dict())
    built, _ = load_pretrained("hf://timm/test_resnet.h3@v1", endpoint=olah.url, cache_dir=cache)
    assert_same_tensors(built.state_dict(), trained.state_dict())

    olah.server.add_repo("timm/test_resnet.pickle", [timm_pickle_folder])
    with pytest.raises(UnsafeWeightsError, match=r"never unpickles.*safe_serialization=True"):
        load_pretrained(
            "hf://timm/test_resnet.pickle", into=seeded_timm(1), endpoint=olah.url, cache_dir=cache
        )


# --- PyTorchModelHubMixin ------------------------------------------------------------------------------------------


class MixinNet(nn.Module, PyTorchModelHubMixin):
    """A user's network that publishes itself with huggingface_hub's mixin (config.json = these kwargs)."""

    def __init__(self, hidden: int = 6, num_classes: int = 3) -> None:
        super().__init__()
        self.hidden1 = nn.Linear(4, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.output = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.relu(self.bn(self.hidden1(x))))


@pytest.fixture(scope="module")
def mixin_trained() -> MixinNet:
    torch.manual_seed(5)
    net = MixinNet(hidden=6).eval()
    assert net.bn.running_mean is not None and net.bn.running_var is not None
    net.bn.running_mean.normal_()
    net.bn.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def mixin_folder(mixin_trained: MixinNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mixin") / "m"
    mixin_trained.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text()) == {"hidden": 6, "num_classes": 3}
    return folder


def test_mixin_folder_loads_into_net_like_from_pretrained(
    mixin_trained: MixinNet, mixin_folder: Path
) -> None:
    config = json.loads((mixin_folder / "config.json").read_text())
    net, report = load_pretrained(mixin_folder, into=MixinNet(**config))
    assert report.ok and report.source_format == "pytorch-model-hub-mixin"
    assert report.loaded == list(mixin_trained.state_dict())
    assert_same_tensors(net.state_dict(), mixin_trained.state_dict())
    reference = MixinNet.from_pretrained(mixin_folder)  # huggingface_hub's own loader
    assert_same_tensors(net.state_dict(), reference.state_dict())
    x = torch.randn(5, 4)
    assert torch.equal(net.eval()(x), mixin_trained(x))


def test_mixin_folder_partial_load_into_a_new_head(mixin_trained: MixinNet, mixin_folder: Path) -> None:
    torch.manual_seed(6)
    target = MixinNet(hidden=6, num_classes=5)
    head = target.output.weight.clone()
    _, report = load_pretrained(mixin_folder, into=target, include=["hidden1", "bn"])
    assert report.ok and report.skipped == ["output.weight", "output.bias"]
    assert report.loaded == [n for n in mixin_trained.state_dict() if not n.startswith("output.")]
    assert torch.equal(target.hidden1.weight, mixin_trained.hidden1.weight)
    assert torch.equal(target.state_dict()["bn.running_var"], mixin_trained.state_dict()["bn.running_var"])
    assert torch.equal(target.output.weight, head)


def test_mixin_folder_without_into_says_how_to_build_it(mixin_folder: Path) -> None:
    with pytest.raises(ValueError, match=r"PyTorchModelHubMixin .*hidden=6, num_classes=3.*into=net"):
        load_pretrained(mixin_folder)


class TimmLookingMixin(nn.Module, PyTorchModelHubMixin):
    """A mixin network whose constructor arguments look like timm's config (architecture + num_classes)."""

    def __init__(self, architecture: str = "test_resnet", num_classes: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes)


def test_the_mixin_card_wins_over_a_timm_looking_config(tmp_path: Path) -> None:
    TimmLookingMixin().save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="PyTorchModelHubMixin"):  # not built as timm's test_resnet
        load_pretrained(tmp_path / "m")
    _, report = load_pretrained(tmp_path / "m", into=TimmLookingMixin())
    assert report.ok and report.source_format == "pytorch-model-hub-mixin"


def test_mixin_repo_over_hf(
    mixin_trained: MixinNet, mixin_folder: Path, olah: HubServer, tmp_path: Path
) -> None:
    olah.server.add_repo("org/mixin-h3", [mixin_folder])
    source = "hf://org/mixin-h3"
    with pytest.raises(
        ValueError, match=r"PyTorchModelHubMixin \(the tag 'pytorch_model_hub_mixin' in README\.md\)"
    ):
        load_pretrained(source, endpoint=olah.url, cache_dir=tmp_path)
    net, report = load_pretrained(source, into=MixinNet(), endpoint=olah.url, cache_dir=tmp_path)
    assert report.ok and report.source_format == "pytorch-model-hub-mixin"
    assert_same_tensors(net.state_dict(), mixin_trained.state_dict())


# --- configs no rule recognises ----------------------------------------------------------------------------------


def test_unrecognised_config_lists_the_formats_and_loads_with_into(
    mixin_trained: MixinNet, mixin_folder: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((mixin_folder / "model.safetensors").read_bytes())
    (folder / "config.json").write_text(json.dumps({"width": 6, "depth": 1}))  # no card, no known key
    with pytest.raises(ValueError) as info:
        load_pretrained(folder)
    message = str(info.value)
    assert "not a lightning-dnn config" in message and "matches no other format" in message
    for name in ("lightning-dnn", "timm", "transformers", "pytorch-model-hub-mixin", "safetensors"):
        assert f"{name} (" in message, name
    assert "['depth', 'width']" in message and "into=net" in message
    net, report = load_pretrained(folder, into=MixinNet())
    assert report.ok and report.source_format == "unknown"
    assert_same_tensors(net.state_dict(), mixin_trained.state_dict())

    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 6}))
    with pytest.raises(ValueError, match=r"is a transformers config \('model_type' in config\.json\)"):
        load_pretrained(folder)
