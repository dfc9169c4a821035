"""Tests of the plain torch building blocks in :mod:`bayesdl.nn`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesdl.nn import ACTIVATIONS, MLP, activation
from tests.common import assert_close


def _count(module, kind):
    return sum(isinstance(m, kind) for m in module)


@pytest.mark.parametrize(
    "in_features, out_features, hidden",
    [(1, 1, (50, 50)), (3, 2, (5, 7, 4)), (4, 3, ()), (2, 5, 8), (1, 1, [3])],
)
def test_mlp_shapes_and_layers(in_features, out_features, hidden):
    net = MLP(in_features, out_features, hidden=hidden)
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    assert net.hidden == widths
    assert net(torch.randn(6, in_features)).shape == (6, out_features)
    # Extra leading batch dimensions pass through, as for nn.Linear.
    assert net(torch.randn(2, 6, in_features)).shape == (2, 6, out_features)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert len(linears) == len(widths) + 1
    assert [lin.in_features for lin in linears] == [in_features, *widths]
    assert [lin.out_features for lin in linears] == [*widths, out_features]
    assert _count(net, nn.Dropout) == 0
    assert isinstance(net[0], nn.Linear)
    assert "0.weight" in dict(net.named_parameters())
    assert isinstance(net[-1], nn.Linear)


def test_mlp_attributes_and_repr():
    net = MLP(2, 1, hidden=(4, 4), activation="relu", dropout=0.1)
    assert net.in_features == 2
    assert net.out_features == 1
    assert net.activation_name == "relu"
    assert net.dropout == 0.1
    assert "hidden=(4, 4)" in repr(net)
    assert "activation='relu'" in repr(net)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_in_mlp(name):
    net = MLP(3, 2, hidden=(8, 8), activation=name)
    assert _count(net, ACTIVATIONS[name]) == 2
    out = net(torch.randn(10, 3))
    assert out.shape == (10, 2)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert net[-1].weight.grad is not None
    if name != "step":  # the Heaviside step passes no gradient to the layers below it
        assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_factory(name):
    a, b = activation(name), activation(name)
    assert isinstance(a, ACTIVATIONS[name])
    assert isinstance(a, nn.Module)
    assert a is not b
    x = torch.linspace(-3, 3, 13)
    y = a(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_activation_values():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    assert_close(activation("erf")(x), torch.erf(x))
    assert_close(activation("step")(x), [0.0, 0.0, 0.0, 1.0, 1.0])
    assert_close(activation("tanh")(x), torch.tanh(x))
    assert_close(activation("relu")(x), x.clamp(min=0))
    assert_close(activation("sigmoid")(x), torch.sigmoid(x))
    assert activation("step")(x.double()).dtype == torch.float64


def test_dropout_layers():
    net = MLP(2, 1, hidden=(16, 16, 16), dropout=0.5)
    assert _count(net, nn.Dropout) == 3
    x = torch.randn(32, 2)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_features": 0}, "in_features"),
        ({"in_features": -2}, "in_features"),
        ({"out_features": 0}, "out_features"),
        ({"hidden": (5, -1)}, r"hidden\[1\]"),
        ({"hidden": (0,)}, r"hidden\[0\]"),
        ({"hidden": -3}, r"hidden\[0\]"),
        ({"activation": "swish"}, "activation"),
        ({"activation": "Tanh"}, "activation"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_mlp_bad_values(kwargs, match):
    args = {"in_features": 2, "out_features": 1, "hidden": (4,)}
    with pytest.raises(ValueError, match=match):
        MLP(**{**args, **kwargs})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_features": 2.0}, "in_features"),
        ({"out_features": True}, "out_features"),
        ({"hidden": (4, 2.5)}, r"hidden\[1\]"),
        ({"dropout": "0.1"}, "dropout"),
    ],
)
def test_mlp_bad_types(kwargs, match):
    args = {"in_features": 2, "out_features": 1, "hidden": (4,)}
    with pytest.raises(TypeError, match=match):
        MLP(**{**args, **kwargs})


def test_activation_unknown_name():
    with pytest.raises(ValueError, match="activation"):
        activation("softmax")
