"""The one selection rule: fullmatch on the dotted name, or on it without its first component; never deeper."""

from __future__ import annotations

import re

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from torch import nn

from lightning_dnn import LayerFreezer, MaxNorm, select_modules, select_parameters
from lightning_dnn._selection import name_matches, select_tensor_names, tensor_selected
from lightning_dnn.regularization import regularized_parameters
from tests.trainer_utils import quiet_trainer


class Holder(nn.Module):
    """Stands for a LightningModule: the network is held as ``self.net``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


def _reference(name: str, pattern: str) -> bool:
    """The rule written out independently: the name, or the name minus its first dotted part."""
    candidates = [name]
    if "." in name:
        candidates.append(name[name.index(".") + 1 :])
    return any(re.fullmatch(pattern, c) is not None for c in candidates)


RESNET_NAMES = [n for n, _ in Holder(torchvision.models.resnet18(num_classes=10)).named_modules() if n]


@pytest.mark.parametrize(
    "pattern", ["conv1", "bn1", "layer[1-3]", r"layer4\.0\.conv1", "layer4.*", "net.fc", "fc", "0", r"net\.layer1\.0"]
)
def test_module_selection_equals_the_reference_on_a_torchvision_resnet(pattern: str) -> None:
    expected = [n for n in RESNET_NAMES if _reference(n, pattern)]
    compiled = [re.compile(pattern)]
    assert [n for n in RESNET_NAMES if name_matches(n, compiled)] == expected
    holder = Holder(torchvision.models.resnet18(num_classes=10))
    if expected:
        assert [n for n, _ in select_modules(holder, pattern)] == expected
    else:
        with pytest.raises(ValueError, match="selects no module"):
            select_modules(holder, pattern)


def test_conv1_names_the_stem_only_not_every_block_conv1() -> None:
    """The case the issue names: `conv1|bn1|layer[1-3]` used to freeze net.layer4.0.conv1 and bn1 too."""
    holder = Holder(torchvision.models.resnet18(num_classes=10))
    names = [n for n, _ in select_modules(holder, "conv1|bn1|layer[1-3]")]
    assert names == ["net.conv1", "net.bn1", "net.layer1", "net.layer2", "net.layer3"]
    assert not [n for n in names if n.startswith("net.layer4")]
    # a name that is neither the whole name nor the name inside the network is never tried
    assert not name_matches("net.layer4.0.conv1", [re.compile("conv1")])
    assert not name_matches("net.layer4.0.conv1", [re.compile(r"0\.conv1")])
    assert name_matches("net.layer4.0.conv1", [re.compile(r"layer4\.0\.conv1")])


def test_hidden12_is_not_hidden1_nor_hidden2() -> None:
    net = nn.Sequential()
    for name in ("hidden1", "hidden2", "hidden12", "output"):
        net.add_module(name, nn.Linear(3, 3))
    holder = Holder(net)
    assert [n for n, _ in select_modules(holder, "hidden[12]")] == ["net.hidden1", "net.hidden2"]
    assert [n for n, _ in select_modules(holder, "net.hidden12")] == ["net.hidden12"]


def test_a_selected_module_selects_its_subtree_and_a_pattern_may_name_one_tensor() -> None:
    holder = Holder(torchvision.models.resnet18(num_classes=10))
    selected = [n for n, _ in select_parameters(holder, "layer1")]
    expected = [n for n, _ in holder.named_parameters() if n.startswith("net.layer1.")]
    assert selected == expected and len(selected) == 12
    assert [n for n, _ in select_parameters(holder, r"fc\.weight")] == ["net.fc.weight"]
    assert [n for n, _ in select_parameters(holder, r"net\.fc\.bias")] == ["net.fc.bias"]


def test_tensor_names_follow_the_same_rule_through_their_modules() -> None:
    pats = [re.compile(r"hidden[12]")]
    assert tensor_selected("net.hidden1.linear.weight", pats)
    assert not tensor_selected("net.hidden12.linear.weight", pats)
    assert not tensor_selected("net.block.hidden1.weight", pats)  # a deeper suffix
    # the hub: names relative to the network loaded into, nothing dropped
    assert select_tensor_names(["hidden1.w", "hidden12.w", "x.hidden1.w"], "hidden[12]") == ["hidden1.w"]


def test_a_pattern_that_selects_nothing_names_modules_first_without_bn_counters() -> None:
    holder = Holder(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    with pytest.raises(ValueError) as info:
        select_modules(holder, ["net.0", "linear"], arg="freeze")
    message = str(info.value)
    assert "`freeze` pattern 'linear' selects no module" in message
    assert message.index("modules: net, net.0, net.1") < message.index("tensors: net.0.weight")
    assert "num_batches_tracked" not in message
    with pytest.raises(ValueError, match="`include` pattern 'hidden' selects no name"):
        select_tensor_names(["hidden1.w"], "hidden", arg="include")


def test_penalties_use_the_same_rule() -> None:
    holder = Holder(torchvision.models.resnet18(num_classes=10))
    names = [n for n, _ in regularized_parameters(holder, "conv1")]
    assert names == ["net.conv1.weight"]


class _ResNetModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def test_layer_freezer_and_max_norm_on_a_resnet_touch_only_what_the_pattern_names(tmp_path) -> None:
    torch.manual_seed(0)
    model = _ResNetModule()
    with torch.no_grad():  # far above the max norm
        model.net.layer4[0].conv1.weight.mul_(100.0)
        model.net.layer4[0].conv2.weight.mul_(100.0)
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    callbacks = [LayerFreezer("conv1|bn1|layer[1-3]"), MaxNorm(1.0, pattern=r"layer4\.0\.conv2")]
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=callbacks)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    assert not model.net.conv1.weight.requires_grad and not model.net.bn1.weight.requires_grad
    assert not model.net.layer3[1].bn2.weight.requires_grad
    assert model.net.layer4[0].conv1.weight.requires_grad and model.net.layer4[0].bn1.weight.requires_grad
    assert model.net.fc.weight.requires_grad
    # MaxNorm renormed layer4.0.conv2's filters only, not layer4.0.conv1's
    assert torch.all(model.net.layer4[0].conv2.weight.flatten(1).norm(dim=1) <= 1.0 + 1e-5)
    assert model.net.layer4[0].conv1.weight.flatten(1).norm(dim=1).min() > 10.0
