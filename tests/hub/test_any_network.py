"""The hub on any network: torchvision ResNets, weights-only/sharded/single-file sources, LightningModules, timm repos.

Hub round trips run against the real olah server of ``conftest.py`` (repos added while it runs); ``push_to_hub``
hands its commit to a recorder (no local server accepts uploads), whose files are then committed to olah.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from safetensors.torch import save_file
from torch import nn

from lightning_dnn.hub import load_pretrained, push_to_hub, save_pretrained
from tests.hub.conftest import HubServer

RESNET_LOWER = "conv1|bn1|layer[1-3]"


def resnet(seed: int, num_classes: int = 10) -> nn.Module:
    """A torchvision ResNet-18 with seeded weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=num_classes)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


class Classifier(pl.LightningModule):
    """A user's LightningModule holding a torchvision network as ``self.net``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=num_classes)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return resnet(0)


@pytest.fixture(scope="module")
def folder(trained: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pretrained(trained, tmp_path_factory.mktemp("resnet") / "r18")


def write_shards(tensors: dict[str, torch.Tensor], folder: Path) -> Path:
    """Two shards and an index (huggingface_hub's layout), written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:]), start=1):
        shard = f"model-0000{i}-of-00002.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(folder / shard))
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": weight_map}))
    return folder


# --------------------------------------------------------------------------------------------- local sources
def test_resnet_round_trip_through_a_folder(trained: nn.Module, folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    assert config["class_path"] == "torchvision.models.resnet.ResNet" and config["init_args"] is None
    card = (folder / "README.md").read_text()
    assert "into=net" in card and 'include="conv1|bn1|layer1|layer2|layer3|layer4"' in card  # lower blocks
    net, report = load_pretrained(folder, into=resnet(1))
    assert report.ok and report.prefix == "" and len(report.loaded) == len(trained.state_dict())
    assert_same(net, trained)


def test_weights_only_folder_needs_into(trained: nn.Module, folder: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    net, report = load_pretrained(bare, into=resnet(1))
    assert report.ok
    assert_same(net, trained)
    with pytest.raises(FileNotFoundError, match=r"no config\.json.*into=net"):
        load_pretrained(bare)
    with pytest.raises(ValueError, match=r"without its constructor arguments.*into="):
        load_pretrained(folder)  # class path recorded, but not how to call it


def test_single_safetensors_file(trained: nn.Module, folder: Path) -> None:
    net, report = load_pretrained(folder / "model.safetensors", into=resnet(1))
    assert report.ok
    assert_same(net, trained)


def test_sharded_folder(trained: nn.Module, tmp_path: Path) -> None:
    sharded = write_shards(dict(trained.state_dict()), tmp_path / "sharded")
    net, report = load_pretrained(sharded, into=resnet(1))
    assert report.ok
    assert_same(net, trained)


def test_index_naming_a_path_outside_the_folder_is_refused(tmp_path: Path) -> None:
    from lightning_dnn.hub import WeightsFileError

    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "../x.safetensors"}})
    )
    with pytest.raises(WeightsFileError, match=r"'\.\./x\.safetensors'.*plain"):
        load_pretrained(folder, into=nn.Linear(2, 2))


def test_lightning_module_into_loads_under_its_net_and_says_so(
    trained: nn.Module, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = Classifier(num_classes=5)
    with caplog.at_level("INFO", logger="lightning_dnn.hub"):
        out, report = load_pretrained(folder, include=RESNET_LOWER, into=model)
    assert out is model and report.prefix == "net" and "into: net" in str(report)
    assert any("relative to 'net'" in r.getMessage() for r in caplog.records)
    # include is relative to the network loaded into: conv1 is net.conv1, never net.layer4.0.conv1
    assert report.loaded and all(
        n.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3") for n in report.loaded
    )
    assert not [n for n in report.loaded if n.startswith("layer4")]
    assert all(n.startswith(("layer4", "fc")) for n in report.skipped)
    loaded, reference = model.net.state_dict(), trained.state_dict()
    assert torch.equal(loaded["layer3.1.conv2.weight"], reference["layer3.1.conv2.weight"])
    assert not torch.equal(loaded["layer4.0.conv1.weight"], reference["layer4.0.conv1.weight"])


def test_exclude_follows_the_selection_rule(trained: nn.Module, folder: Path) -> None:
    target = resnet(1, num_classes=3)
    _, report = load_pretrained(folder, exclude="fc", into=target)
    assert report.ok and report.skipped == ["fc.weight", "fc.bias"]
    with pytest.raises(ValueError, match="selects no name"):
        load_pretrained(folder, include="layer", into=resnet(1))  # fullmatch: 'layer' names no module


def test_rebuild_from_a_trusted_class_path_with_init_args(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mlp = torchvision.ops.MLP(4, [8, 3])
    folder = save_pretrained(mlp, tmp_path / "mlp", init_args={"in_channels": 4, "hidden_channels": [8, 3]})
    net, report = load_pretrained(folder)
    assert type(net) is torchvision.ops.MLP and report.ok
    x = torch.randn(5, 4)
    assert torch.equal(net(x), mlp.eval()(x))
    with pytest.raises(TypeError, match=r"`init_args` must be JSON-able.*norm_layer=type"):
        save_pretrained(mlp, tmp_path / "bad", init_args={"in_channels": 4, "norm_layer": nn.BatchNorm1d})


def test_untrusted_class_path_is_refused_without_importing(tmp_path: Path) -> None:
    folder = save_pretrained(
        nn.Linear(2, 2), tmp_path / "lin", init_args={"in_features": 2, "out_features": 2}
    )
    config = json.loads((folder / "config.json").read_text())
    config["class_path"] = "evil_package_never_imported.models.Net"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"evil_package_never_imported.*into="):
        load_pretrained(folder)
    assert not [m for m in sys.modules if m.startswith("evil_package_never_imported")]
    _, report = load_pretrained(folder, into=nn.Linear(2, 2))  # the weights themselves are fine
    assert report.ok


# --------------------------------------------------------------------------------------------------- the Hub
@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The files of the last ``create_commit`` (HfApi's upload calls recorded; nothing is sent)."""
    files: dict[str, bytes] = {}

    def create_commit(
        self: HfApi, repo_id: str, operations: list[CommitOperationAdd], **kwargs: Any
    ) -> CommitInfo:
        for op in operations:
            source = op.path_or_fileobj
            files[op.path_in_repo] = source if isinstance(source, bytes) else Path(str(source)).read_bytes()
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'a' * 40}",
            commit_message="",
            commit_description="",
            oid="a" * 40,
        )

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return files


def test_resnet_round_trip_through_the_hub(
    trained: nn.Module, pushed: dict[str, bytes], olah: HubServer, tmp_path: Path
) -> None:
    push_to_hub(trained, "org/resnet18")
    assert sorted(pushed) == ["README.md", "config.json", "model.safetensors"]
    olah.server.add_repo("org/resnet18", [pushed])
    net, report = load_pretrained("hf://org/resnet18", into=resnet(1), endpoint=olah.url, cache_dir=tmp_path)
    assert report.ok
    assert_same(net, trained)


def test_weights_only_and_sharded_hub_repos(trained: nn.Module, olah: HubServer, tmp_path: Path) -> None:
    tensors = dict(trained.state_dict())
    bare = tmp_path / "bare"
    bare.mkdir()
    save_file(tensors, str(bare / "model.safetensors"))
    olah.server.add_repo("org/bare", [bare])
    olah.server.add_repo("org/sharded", [write_shards(tensors, tmp_path / "sharded")])
    for repo in ("org/bare", "org/sharded"):
        net, report = load_pretrained(
            f"hf://{repo}", into=resnet(1), endpoint=olah.url, cache_dir=tmp_path / "c"
        )
        assert report.ok, repo
        assert_same(net, trained)
    with pytest.raises(FileNotFoundError, match="into="):
        load_pretrained("hf://org/bare", endpoint=olah.url, cache_dir=tmp_path / "c")


def test_timm_layout_repo_into_torchvision(trained: nn.Module, olah: HubServer, tmp_path: Path) -> None:
    timm_config = {
        "architecture": "resnet18",
        "num_classes": 10,
        "num_features": 512,
        "pretrained_cfg": {"tag": "test", "input_size": [3, 224, 224], "classifier": "fc", "num_classes": 10},
    }
    repo = tmp_path / "timm"
    repo.mkdir()
    save_file(dict(trained.state_dict()), str(repo / "model.safetensors"))
    (repo / "config.json").write_text(json.dumps(timm_config))
    olah.server.add_repo("timm/resnet18.test", [repo])
    source = "hf://timm/resnet18.test"

    target = resnet(1, num_classes=5)
    net, report = load_pretrained(
        source, include=RESNET_LOWER, into=target, endpoint=olah.url, cache_dir=tmp_path
    )
    lower = [
        n for n in trained.state_dict() if n.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3")
    ]
    assert report.ok and report.loaded == lower
    assert sorted(report.skipped) == sorted(n for n in trained.state_dict() if n not in lower)
    assert all(torch.equal(net.state_dict()[n], trained.state_dict()[n]) for n in lower)
    assert net.state_dict()["fc.weight"].shape == (5, 512)  # head shape differs: not loaded

    built, full = load_pretrained(
        source, endpoint=olah.url, cache_dir=tmp_path
    )  # the matching torchvision network
    assert type(built) is torchvision.models.ResNet and full.ok
    assert_same(built, trained)


def test_weights_only_hub_repo_reloads_offline_from_the_cache(
    trained: nn.Module, olah: HubServer, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    save_file(dict(trained.state_dict()), str(bare / "model.safetensors"))
    olah.server.add_repo("org/bare-offline", [bare])
    load_pretrained("hf://org/bare-offline", into=resnet(1), endpoint=olah.url, cache_dir=tmp_path / "c")
    net, report = load_pretrained(
        "hf://org/bare-offline", into=resnet(1), cache_dir=tmp_path / "c", local_files_only=True
    )
    assert report.ok
    assert_same(net, trained)
