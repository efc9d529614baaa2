"""Tests for lightning_dnn.regularization: penalties against hand formulas, selection, gradients, bad input."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from lightning_dnn.regularization import WeightPenalty, l1_penalty, l2_penalty, regularized_parameters


def _mlp_like() -> nn.Module:
    """A net shaped like lightning_dnn.nn.MLP with batch norm: hidden1/hidden2 blocks and an output block."""
    torch.manual_seed(0)

    def block(i: int, o: int, norm: bool) -> nn.Sequential:
        layers: OrderedDict[str, nn.Module] = OrderedDict(linear=nn.Linear(i, o))
        if norm:
            layers["bn"] = nn.BatchNorm1d(o)
        layers["act"] = nn.ELU()
        return nn.Sequential(layers)

    net = nn.Sequential(
        OrderedDict(
            hidden1=block(6, 5, True),
            hidden2=block(5, 4, True),
            hidden12=block(4, 4, False),
            output=nn.Sequential(OrderedDict(linear=nn.Linear(4, 3), ln=nn.LayerNorm(3))),
        )
    )
    with torch.no_grad():  # non-trivial norm parameters, so including them would change the sums
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d | nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    return net


def _weights(net: nn.Module) -> list[torch.Tensor]:
    return [
        net.hidden1.linear.weight,
        net.hidden2.linear.weight,
        net.hidden12.linear.weight,
        net.output.linear.weight,
    ]


def test_penalty_equals_hand_formula() -> None:
    net = _mlp_like()
    ws = _weights(net)
    l1, l2 = 0.003, 0.02
    expected = sum(l1 * w.abs().sum() + l2 * (w * w).sum() for w in ws)
    torch.testing.assert_close(WeightPenalty(l1=l1, l2=l2)(net), expected)
    torch.testing.assert_close(WeightPenalty(l1=l1)(net), sum(l1 * w.abs().sum() for w in ws))
    torch.testing.assert_close(WeightPenalty(l2=l2)(net), sum(l2 * (w * w).sum() for w in ws))
    torch.testing.assert_close(l1_penalty(net), sum(w.abs().sum() for w in ws))
    torch.testing.assert_close(l2_penalty(net), sum((w * w).sum() for w in ws))


def test_tf_l2_regularizer_scale_is_twice_l2() -> None:
    net = _mlp_like()
    scale = 0.01
    # tf.contrib.layers.l2_regularizer(scale) is scale * sum(w**2) / 2
    tf_value = sum(scale * (w * w).sum() / 2 for w in _weights(net))
    torch.testing.assert_close(WeightPenalty(l2=scale / 2)(net), tf_value)


def test_biases_and_norm_parameters_are_excluded() -> None:
    net = _mlp_like()
    names = [n for n, _ in regularized_parameters(net)]
    assert names == [
        "hidden1.linear.weight",
        "hidden2.linear.weight",
        "hidden12.linear.weight",
        "output.linear.weight",
    ]
    penalty = WeightPenalty(l1=1.0, l2=1.0)
    before = penalty(net)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name not in names:
                p.add_(3.0)
    torch.testing.assert_close(penalty(net), before)


def test_conv_embedding_weights_are_selected() -> None:
    net = nn.Sequential(
        OrderedDict(
            emb=nn.Embedding(5, 3),
            conv=nn.Conv1d(3, 2, 3),
            deconv=nn.ConvTranspose1d(2, 2, 3),
            gn=nn.GroupNorm(1, 2),
            prelu=nn.PReLU(),
        )
    )
    assert [n for n, _ in regularized_parameters(net)] == ["emb.weight", "conv.weight", "deconv.weight"]


def test_pattern_narrows_with_selection_rule() -> None:
    net = _mlp_like()
    # `hidden[12]` selects hidden1 and hidden2, never hidden12 (re.fullmatch on the name, or without its first part)
    names = [n for n, _ in regularized_parameters(net, "hidden[12]")]
    assert names == ["hidden1.linear.weight", "hidden2.linear.weight"]
    expected = sum(0.5 * net.get_submodule(n[: -len(".weight")]).weight.abs().sum() for n in names)
    torch.testing.assert_close(WeightPenalty(l1=0.5, pattern="hidden[12]")(net), expected)
    # a list of patterns, and a pattern on a nested name
    assert [n for n, _ in regularized_parameters(net, ["output", "hidden2.linear"])] == [
        "hidden2.linear.weight",
        "output.linear.weight",
    ]


def test_gradient_is_l1_sign_plus_two_l2_w() -> None:
    net = _mlp_like()
    with torch.no_grad():
        net.hidden1.linear.weight[0, :2] = 0.0  # sign(0) = 0
    l1, l2 = 0.01, 0.1
    WeightPenalty(l1=l1, l2=l2)(net).backward()
    for w in _weights(net):
        assert w.grad is not None
        torch.testing.assert_close(w.grad, l1 * torch.sign(w) + 2 * l2 * w)
    assert net.hidden1.linear.bias.grad is None
    assert net.hidden1.bn.weight.grad is None


def test_cache_follows_module_identity() -> None:
    penalty = WeightPenalty(l2=1.0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    torch.testing.assert_close(penalty(a), a.weight.pow(2).sum())
    torch.testing.assert_close(penalty(b), b.weight.pow(2).sum())
    assert penalty.parameters(a)[0] is a.weight
    net = nn.Sequential(nn.Linear(2, 2))
    penalty(net)
    net.append(nn.Linear(2, 2))
    penalty.clear_cache()
    assert len(penalty.parameters(net)) == 2


def test_zero_coefficients_give_zero() -> None:
    net = _mlp_like()
    assert not WeightPenalty().active
    assert WeightPenalty()(net).item() == 0.0


def test_shared_weight_counted_once() -> None:
    lin = nn.Linear(2, 2)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    assert [n for n, _ in regularized_parameters(net)] == ["0.weight"]
    torch.testing.assert_close(WeightPenalty(l1=1.0)(net), lin.weight.abs().sum())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"l1": -0.1}, ValueError, r"`l1` must be >= 0"),
        ({"l2": -1}, ValueError, r"`l2` must be >= 0"),
        ({"l2": float("nan")}, ValueError, r"`l2` must be finite"),
        ({"l1": "0.1"}, TypeError, r"`l1` must be a real number"),
        ({"pattern": "hidden["}, ValueError, r"`pattern` contains an invalid regex"),
        ({"pattern": 3}, TypeError, r"`pattern` must be a regex"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        WeightPenalty(**kwargs)


def test_selection_errors() -> None:
    net = _mlp_like()
    with pytest.raises(ValueError, match=r"'hidden9' selects no module or parameter. Available modules: hidden1"):
        regularized_parameters(net, "hidden9")
    with pytest.raises(ValueError, match=r"No weight to regularize selected by `pattern`=\['bn'\]"):
        WeightPenalty(l1=1.0, pattern="bn")(net)
    with pytest.raises(ValueError, match=r"No weight to regularize"):
        l2_penalty(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(TypeError, match=r"`module` must be a torch.nn.Module"):
        l1_penalty([nn.Linear(2, 2)])  # type: ignore[arg-type]


def test_penalty_pickles_and_rebuilds_its_cache() -> None:
    import pickle

    net = _mlp_like()
    penalty = WeightPenalty(l1=0.1, pattern="hidden[12]")
    expected = penalty(net)
    clone = pickle.loads(pickle.dumps(penalty))
    assert (clone.l1, clone.l2, clone.pattern) == (0.1, 0.0, "hidden[12]")
    torch.testing.assert_close(clone(net), expected)
