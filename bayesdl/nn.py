"""Plain torch building blocks: no Pyro in here, so the networks keep every torch habit."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bayesdl._validation import check_choice, check_positive, check_probability

__all__ = ["ACTIVATIONS", "MLP", "activation"]


class _Erf(nn.Module):
    """``erf`` activation, whose infinite-width kernel has a closed form (Williams, 1997)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.erf(x)


class _Step(nn.Module):
    """Heaviside step ``1[x > 0]``. As its input scale grows, ``tanh`` tends to
    ``sign(x) = 2 * step(x) - 1``, the step units of Neal (1995) up to an affine change."""

    def forward(self, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)


ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "erf": _Erf,
    "step": _Step,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Multi-layer perceptron ``in_features -> hidden... -> out_features``.

    Layers are numbered as in :class:`torch.nn.Sequential` (``0`` is the first ``Linear``), so
    parameter names such as ``"0.weight"`` are stable and a prior can be placed on any of them.

    Arguments:
        in_features: Input dimension.
        out_features: Output dimension.
        hidden: Widths of the hidden layers (empty for a linear model).
        activation: Name of the nonlinearity, one of :data:`ACTIVATIONS`.
        dropout: Dropout rate applied after every hidden activation (``0`` for none). Used when
            the network is trained as a plain torch module; the dropout *guide* of
            :mod:`bayesdl.guides` implements dropout as variational inference instead.

    Example:
        >>> net = MLP(1, 1, hidden=(50, 50), activation="tanh")
        >>> net(torch.zeros(4, 1)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (50, 50),
        activation: str = "tanh",
        dropout: float = 0.0,
    ) -> None:
        check_positive("in_features", in_features, integer=True)
        check_positive("out_features", out_features, integer=True)
        if isinstance(hidden, int):
            hidden = (hidden,)
        for i, width in enumerate(hidden):
            check_positive(f"hidden[{i}]", width, integer=True)
        check_choice("activation", activation, ACTIVATIONS)
        check_probability("dropout", dropout)
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers.append(nn.Linear(fan_in, fan_out))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features
        self.hidden = tuple(hidden)
        self.activation_name = activation
        self.dropout = dropout

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, activation={self.activation_name!r}"
