import json
import math

import pytest
import torch
from torch import nn

from lightning_dnn.nn import ConvNet


def test_children_parameter_names_and_shapes():
    net = ConvNet(1, (8, 16, 32), 10)
    assert [n for n, _ in net.named_children()] == ["conv1", "conv2", "conv3", "output"]
    names = [n for n, _ in net.named_parameters()]
    assert "conv1.conv.weight" in names and "conv1.bn.weight" in names and "output.linear.weight" in names
    assert "conv1.conv.bias" not in names  # batch norm's beta does the bias's job
    x = torch.randn(5, 1, 28, 28)
    assert net.forward_features(x).shape == (5, 32, 3, 3)
    assert net(x).shape == (5, 10)
    net.eval()
    assert torch.equal(net(x), net.forward_head(net.forward_features(x)))
    assert torch.equal(net(x), net(x.flatten(1)))  # flat square images are reshaped


def test_forward_matches_hand_computation():
    net = ConvNet(1, (4,), 3).eval()
    x = torch.randn(2, 1, 8, 8)
    b = net.conv1
    h = nn.functional.conv2d(x, b.conv.weight, padding=1)
    h = (h - b.bn.running_mean[None, :, None, None]) / torch.sqrt(b.bn.running_var[None, :, None, None] + b.bn.eps)
    h = h * b.bn.weight[None, :, None, None] + b.bn.bias[None, :, None, None]
    h = nn.functional.max_pool2d(torch.relu(h), 2).mean(dim=(2, 3))
    expected = h @ net.output.linear.weight.T + net.output.linear.bias
    torch.testing.assert_close(net(x), expected)


def test_he_init_variance_on_conv_weights():
    torch.manual_seed(0)
    net = ConvNet(1, (64, 128), 10, init="he_normal")
    w = net.conv2.conv.weight  # fan_in = 64 * 3 * 3
    assert abs(w.var().item() / (2.0 / (64 * 9)) - 1) < 0.05
    assert torch.count_nonzero(net.output.linear.bias) == 0


def test_config_round_trip_is_json_and_seeded_identical():
    net = ConvNet(3, (4, 8), 5, activation="elu", bn_momentum=0.01)
    cfg = json.loads(json.dumps(net.config))
    torch.manual_seed(1)
    a = ConvNet.from_config(cfg)
    torch.manual_seed(1)
    b = ConvNet(3, (4, 8), 5, activation="elu", bn_momentum=0.01)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.out_features == 5 and math.isclose(a.conv1.bn.momentum, 0.01)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"channels": ()}, ValueError, "`channels` must be a non-empty"),
        ({"channels": (8, 0)}, ValueError, r"`channels\[1\]` must be >= 1"),
        ({"num_classes": 0}, ValueError, "`num_classes` must be >= 1"),
        ({"activation": "nope"}, ValueError, "Unknown activation"),
        ({"bn_momentum": 0.0}, ValueError, "`bn_momentum`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ConvNet(**kwargs)


def test_bad_inputs_and_config():
    net = ConvNet(1, (4,), 2)
    with pytest.raises(ValueError, match="flat square images"):
        net(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="unknown key"):
        ConvNet.from_config({"channels": [4], "depth": 3})
