"""The MLP: module/parameter names, batch norm, dropout, init, config round trip and the forward split."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_dnn.nn import MLP, tf_decay_to_torch_momentum


def _children(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_children()]


def test_children_and_parameter_names_without_norm() -> None:
    net = MLP(784, (300, 100), 10)
    assert _children(net) == ["hidden1", "hidden2", "output"]
    assert _children(net.hidden1) == ["linear", "act"]
    assert _children(net.output) == ["linear"]
    assert list(net.state_dict()) == [
        "hidden1.linear.weight",
        "hidden1.linear.bias",
        "hidden2.linear.weight",
        "hidden2.linear.bias",
        "output.linear.weight",
        "output.linear.bias",
    ]
    assert net.hidden1.linear.weight.shape == (300, 784)
    assert net.hidden2.linear.weight.shape == (100, 300)
    assert net.output.linear.weight.shape == (10, 100)
    assert isinstance(net.hidden1.act, nn.ELU)


def test_batch_norm_blocks_have_no_linear_bias() -> None:
    net = MLP(20, (8, 6), 3, norm="batch", bn_momentum=0.01)
    assert _children(net.hidden1) == ["linear", "bn", "act"]
    assert list(net.state_dict()) == [
        "hidden1.linear.weight",
        "hidden1.bn.weight",
        "hidden1.bn.bias",
        "hidden1.bn.running_mean",
        "hidden1.bn.running_var",
        "hidden1.bn.num_batches_tracked",
        "hidden2.linear.weight",
        "hidden2.bn.weight",
        "hidden2.bn.bias",
        "hidden2.bn.running_mean",
        "hidden2.bn.running_var",
        "hidden2.bn.num_batches_tracked",
        "output.linear.weight",
        "output.linear.bias",
    ]
    for block in (net.hidden1, net.hidden2):
        assert isinstance(block.bn, nn.BatchNorm1d) and block.bn.momentum == 0.01
        assert torch.all(block.bn.weight == 1) and torch.all(block.bn.bias == 0)


def test_output_norm_batch_normalizes_the_logits() -> None:
    net = MLP(20, 8, 3, norm="batch", output_norm=True, bn_momentum=0.05)
    assert _children(net.output) == ["linear", "bn"]
    assert net.output.linear.bias is None
    assert net.output.bn.num_features == 3 and net.output.bn.momentum == 0.05
    net.train()
    logits = net(torch.randn(64, 20))
    torch.testing.assert_close(logits.mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def test_dropout_layers() -> None:
    net = MLP(20, (8, 6), 3, dropout=0.3, input_dropout=0.2)
    assert _children(net) == ["input_dropout", "hidden1", "hidden2", "output"]
    assert isinstance(net.input_dropout, nn.Dropout) and net.input_dropout.p == 0.2
    assert _children(net.hidden1) == ["linear", "act", "dropout"]
    assert net.hidden1.dropout.p == 0.3 and net.hidden2.dropout.p == 0.3
    assert _children(MLP(20, 8, 3, norm="batch", dropout=0.5).hidden1) == ["linear", "bn", "act", "dropout"]
    # Dropout acts in training only.
    x = torch.randn(16, 20)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    assert not torch.equal(net(x), net(x))


def test_hidden_as_int_builds_one_layer() -> None:
    net = MLP(5, 7, 2)
    assert _children(net) == ["hidden1", "output"]
    assert net.hidden1.linear.weight.shape == (7, 5)


def test_biases_start_at_zero_and_init_is_applied() -> None:
    torch.manual_seed(0)
    net = MLP(800, (500, 400), 10, init="he_normal")
    for block in (net.hidden1, net.hidden2, net.output):
        assert torch.count_nonzero(block.linear.bias) == 0
    assert net.hidden1.linear.weight.var().item() == pytest.approx(2.0 / 800, rel=0.03)
    assert net.hidden2.linear.weight.var().item() == pytest.approx(2.0 / 500, rel=0.03)
    glorot = MLP(800, 500, 10, init="glorot_uniform")
    limit = (6.0 / (800 + 500)) ** 0.5
    assert glorot.hidden1.linear.weight.abs().max().item() <= limit
    assert glorot.hidden1.linear.weight.var().item() == pytest.approx(2.0 / (800 + 500), rel=0.03)


def test_callable_init() -> None:
    net = MLP(4, 3, 2, init=nn.init.ones_)
    assert torch.all(net.hidden1.linear.weight == 1) and torch.all(net.output.linear.weight == 1)
    with pytest.raises(TypeError, match="`init` as a scheme name"):
        _ = net.config


def test_forward_matches_plain_computation_with_batch_norm() -> None:
    torch.manual_seed(0)
    net = MLP(6, (5, 4), 3, activation="leaky_relu", norm="batch", output_norm=True)
    net.train()
    for _ in range(3):  # move the running statistics away from their initial values
        net(torch.randn(32, 6) * 2 + 1)
    net.eval()
    x = torch.randn(8, 6)

    def bn(h: torch.Tensor, layer: nn.BatchNorm1d) -> torch.Tensor:
        assert layer.running_mean is not None and layer.running_var is not None
        return (h - layer.running_mean) / torch.sqrt(
            layer.running_var + layer.eps
        ) * layer.weight + layer.bias

    h = x
    for block in (net.hidden1, net.hidden2):
        h = F.leaky_relu(bn(h @ block.linear.weight.T, block.bn), 0.01)
    expected = bn(h @ net.output.linear.weight.T, net.output.bn)
    torch.testing.assert_close(net(x), expected)


def test_forward_matches_plain_computation_without_norm() -> None:
    torch.manual_seed(0)
    net = MLP(6, (5, 4), 3, activation="tanh")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    x = torch.randn(8, 6)
    h = x
    for block in (net.hidden1, net.hidden2):
        h = torch.tanh(h @ block.linear.weight.T + block.linear.bias)
    torch.testing.assert_close(net(x), h @ net.output.linear.weight.T + net.output.linear.bias)


def test_flattens_images() -> None:
    net = MLP(784, (30, 20), 10).eval()
    images = torch.randn(4, 1, 28, 28)
    assert net(images).shape == (4, 10)
    torch.testing.assert_close(net(images), net(images.reshape(4, 784)))


def test_forward_features_and_head_compose_to_forward() -> None:
    net = MLP(784, (30, 20), 10, norm="batch", dropout=0.2, input_dropout=0.1).eval()
    x = torch.randn(4, 1, 28, 28)
    features = net.forward_features(x)
    assert features.shape == (4, 20)
    torch.testing.assert_close(net.forward_head(features), net(x))


def test_activation_modules_are_not_shared_between_blocks() -> None:
    net = MLP(10, (8, 8), 2, activation="prelu")
    assert net.hidden1.act.weight is not net.hidden2.act.weight
    given = nn.PReLU(init=0.1)
    net = MLP(10, (8, 8), 2, activation=given)
    assert net.hidden1.act is not given and net.hidden1.act.weight is not net.hidden2.act.weight
    assert torch.all(net.hidden2.act.weight == 0.1)
    assert "_activation" not in dict(net.named_children())  # only the blocks are children
    assert sum(p.numel() for p in net.parameters()) == (10 * 8 + 8 + 1) + (8 * 8 + 8 + 1) + (8 * 2 + 2)


def test_config_is_json_and_round_trips() -> None:
    torch.manual_seed(1)
    net = MLP(
        784,
        [300, 100],
        10,
        activation={"name": "leaky_relu", "negative_slope": 0.2},
        norm="batch",
        dropout=0.5,
        input_dropout=0.2,
        init="he_avg_normal",
        bn_momentum=tf_decay_to_torch_momentum(0.99),
        output_norm=True,
    )
    config = json.loads(json.dumps(net.config))
    assert config == {
        "in_features": 784,
        "hidden": [300, 100],
        "out_features": 10,
        "activation": {"name": "leaky_relu", "negative_slope": 0.2},
        "norm": "batch",
        "dropout": 0.5,
        "input_dropout": 0.2,
        "init": "he_avg_normal",
        "bn_momentum": pytest.approx(0.01),
        "output_norm": True,
    }
    torch.manual_seed(1)
    rebuilt = MLP.from_config(config)
    assert rebuilt.config == net.config
    assert str(rebuilt) == str(net)
    assert rebuilt.hidden1.act.negative_slope == 0.2
    state, rebuilt_state = net.state_dict(), rebuilt.state_dict()
    assert list(state) == list(rebuilt_state)
    for name in state:
        assert torch.equal(state[name], rebuilt_state[name]), name


def test_default_config() -> None:
    assert MLP(784).config == {
        "in_features": 784,
        "hidden": [300, 100],
        "out_features": 10,
        "activation": "elu",
        "norm": None,
        "dropout": 0.0,
        "input_dropout": 0.0,
        "init": "he_normal",
        "bn_momentum": 0.1,
        "output_norm": False,
    }


def test_config_refuses_module_activation() -> None:
    net = MLP(4, 3, 2, activation=nn.SELU())
    with pytest.raises(TypeError, match="`activation` as a name"):
        _ = net.config
    with pytest.raises(TypeError, match="`activation` as a name"):
        _ = MLP(4, 3, 2, activation=nn.SELU).config


def test_tf_decay_to_torch_momentum_matches_tf_update() -> None:
    decay = 0.99
    momentum = tf_decay_to_torch_momentum(decay)
    assert momentum == pytest.approx(0.01)
    bn = nn.BatchNorm1d(3, momentum=momentum)
    moving_mean = torch.tensor([0.5, -1.0, 2.0])
    bn.running_mean.copy_(moving_mean)
    x = torch.randn(16, 3)
    bn.train()(x)
    # TF: moving = decay * moving + (1 - decay) * batch_mean
    torch.testing.assert_close(bn.running_mean, decay * moving_mean + (1 - decay) * x.mean(0))
    with pytest.raises(ValueError, match=r"`decay` must be < 1\.0"):
        tf_decay_to_torch_momentum(1.0)
    with pytest.raises(ValueError, match=r"`decay` must be >= 0\.0"):
        tf_decay_to_torch_momentum(-0.1)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0,), {}, ValueError, "`in_features` must be >= 1"),
        (("784",), {}, TypeError, "`in_features` must be an integer"),
        ((784, []), {}, ValueError, "`hidden` must contain at least one layer size"),
        ((784, 0), {}, ValueError, "`hidden` must be >= 1"),
        ((784, [300, 0]), {}, ValueError, r"`hidden\[1\]` must be >= 1"),
        ((784, [300, 1.5]), {}, TypeError, r"`hidden\[1\]` must be an integer"),
        ((784, "300"), {}, TypeError, "`hidden` must be an int or a sequence of ints"),
        ((784, True), {}, TypeError, "`hidden` must be an int or a sequence of ints"),
        ((784, 300, 0), {}, ValueError, "`out_features` must be >= 1"),
        ((784,), {"norm": "layer"}, ValueError, r"`norm` must be one of \['batch'\].*or None"),
        ((784,), {"norm": True}, TypeError, "`norm` must be a string"),
        ((784,), {"dropout": 1.0}, ValueError, "`dropout` must be < 1.0"),
        ((784,), {"dropout": -0.1}, ValueError, "`dropout` must be >= 0.0"),
        ((784,), {"input_dropout": 1.5}, ValueError, "`input_dropout` must be < 1.0"),
        ((784,), {"init": "he_norml"}, ValueError, r"`init`.*Did you mean 'he_normal'"),
        ((784,), {"init": 3}, TypeError, "`init` must be an init scheme name"),
        ((784,), {"bn_momentum": 0.0}, ValueError, "`bn_momentum` must be > 0.0"),
        ((784,), {"bn_momentum": 1.5}, ValueError, "`bn_momentum` must be <= 1.0"),
        ((784,), {"output_norm": "yes"}, TypeError, "`output_norm` must be a bool"),
        ((784,), {"activation": "relux"}, ValueError, r"`activation`: Unknown activation 'relux'.*'relu'"),
        (
            (784,),
            {"activation": {"name": "elu", "alpha": -1}},
            ValueError,
            r"`activation`: `alpha` must be > 0",
        ),
        ((784,), {"activation": 5}, TypeError, "`activation`"),
    ],
)
def test_bad_input(args: tuple, kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        MLP(*args, **kwargs)


def test_from_config_bad_input() -> None:
    with pytest.raises(ValueError, match=r"`config` has unknown key\(s\) \['hiden'\]"):
        MLP.from_config({"in_features": 3, "hiden": [2]})
    with pytest.raises(ValueError, match="`config` must contain 'in_features'"):
        MLP.from_config({"hidden": [2]})
    with pytest.raises(TypeError, match="`config` must be a mapping"):
        MLP.from_config([("in_features", 3)])  # type: ignore[arg-type]


def test_forward_rejects_unbatched_input() -> None:
    with pytest.raises(ValueError, match=r"`x` must be a batch \[N, 4\]"):
        MLP(4, 3, 2)(torch.zeros(4))
