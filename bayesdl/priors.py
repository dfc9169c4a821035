"""Priors p(w) over network weights: isotropic Normal, fan-in scaled Normal, Laplace.

A prior is a callable ``prior(name, param) -> Distribution`` that returns a distribution whose
event shape is the parameter's shape. Under the dropout reading of the lecture, a Gaussian prior
gives the L2 (weight-decay) term of the objective and a Laplace prior the L1 term.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
from torch import Tensor

from bayesdl._validation import check_choice, check_positive

__all__ = ["Prior", "PriorLike", "fan_in_normal", "laplace", "normal", "resolve_prior"]


class Prior:
    """Independent zero-mean prior on every weight of a parameter tensor.

    Arguments:
        family: ``"normal"`` or ``"laplace"``.
        scale: Prior standard deviation (Normal) or scale ``b`` (Laplace).
        fan_in: Divide the scale of weight matrices by ``sqrt(fan_in)`` (the number of inputs of
            a unit), so the prior over a unit's pre-activation does not grow with the width
            (Neal, 1995). Biases (1-D parameters) keep ``scale``.

    References:
        Neal, R. M. (1995). Bayesian learning for neural networks. PhD thesis, University of
        Toronto.
    """

    def __init__(self, family: str = "normal", scale: float = 1.0, *, fan_in: bool = False) -> None:
        check_choice("family", family, ("normal", "laplace"))
        check_positive("scale", scale)
        self.family = family
        self.scale = float(scale)
        self.fan_in = fan_in

    def scale_for(self, param: Tensor) -> float:
        """The scale used for ``param``."""
        if self.fan_in and param.ndim >= 2:
            return self.scale / math.sqrt(param[0].numel())
        return self.scale

    def __call__(self, name: str, param: Tensor) -> dist.Distribution:
        loc = torch.zeros((), dtype=param.dtype, device=param.device)
        scale = torch.full((), self.scale_for(param), dtype=param.dtype, device=param.device)
        base = dist.Normal(loc, scale) if self.family == "normal" else dist.Laplace(loc, scale)
        return base.expand(param.shape).to_event(param.ndim)

    def __repr__(self) -> str:
        return f"Prior({self.family!r}, scale={self.scale}, fan_in={self.fan_in})"


#: What a model accepts as a prior: see :func:`resolve_prior`.
PriorLike = (
    Prior | str | torch.distributions.Distribution | Callable[[str, Tensor], dist.Distribution]
)


def normal(scale: float = 1.0) -> Prior:
    """Isotropic ``N(0, scale^2)`` on every weight and bias."""
    return Prior("normal", scale)


def fan_in_normal(scale: float = 1.0) -> Prior:
    """``N(0, scale^2 / fan_in)`` on weight matrices, ``N(0, scale^2)`` on biases."""
    return Prior("normal", scale, fan_in=True)


def laplace(scale: float = 1.0) -> Prior:
    """Independent ``Laplace(0, scale)`` on every weight (an L1 penalty in MAP terms)."""
    return Prior("laplace", scale)


class _FromDistribution:
    """Broadcast a scalar distribution to each parameter's shape."""

    def __init__(self, base: dist.Distribution) -> None:
        if base.batch_shape != () or base.event_shape != ():
            raise ValueError(
                "a Distribution given as prior must be scalar (batch and event shape ()), got "
                f"batch_shape={tuple(base.batch_shape)}, event_shape={tuple(base.event_shape)}"
            )
        self.base = base

    def __call__(self, name: str, param: Tensor) -> dist.Distribution:
        return self.base.expand(param.shape).to_event(param.ndim)

    def __repr__(self) -> str:
        return f"{type(self.base).__name__} on every weight"


_NAMED = {"normal": normal, "fan_in": fan_in_normal, "laplace": laplace}


def resolve_prior(prior: object) -> Callable[[str, Tensor], dist.Distribution]:
    """Turn a user's prior specification into a callable ``(name, param) -> Distribution``.

    Accepts a :class:`Prior`, one of the names ``"normal"``, ``"fan_in"``, ``"laplace"`` (scale
    1), a scalar Pyro/torch distribution (applied to every weight), or any callable with that
    signature.
    """
    if isinstance(prior, str):
        check_choice("prior", prior, _NAMED)
        return _NAMED[prior]()
    if isinstance(prior, torch.distributions.Distribution):
        return _FromDistribution(prior)
    if callable(prior):
        return prior  # type: ignore[return-value]
    raise TypeError(
        "prior must be a Prior, a name in "
        f"{list(_NAMED)}, a scalar Distribution or a callable, got {type(prior).__name__}"
    )
