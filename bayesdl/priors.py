"""Priors p(w) over network weights: isotropic Normal, fan-in scaled Normal, Laplace, Neal's.

A prior is a callable ``prior(name, param) -> Distribution`` that returns a distribution whose
event shape is the parameter's shape. Under the dropout reading of the lecture, a Gaussian prior
gives the L2 (weight-decay) term of the objective and a Laplace prior the L1 term.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from torch import Tensor

from bayesdl._validation import check_choice, check_positive

__all__ = [
    "NealPrior",
    "Prior",
    "PriorLike",
    "fan_in_normal",
    "laplace",
    "normal",
    "resolve_prior",
]


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

    def scale_for(self, param: Tensor, name: str | None = None) -> float:
        """The scale used for ``param`` (named ``name`` in its network)."""
        if self.fan_in and param.ndim >= 2:
            return self.scale / math.sqrt(param[0].numel())
        return self.scale

    def bind(self, names: Sequence[str]) -> Prior:
        """This prior for a network whose Bayesian parameters are ``names``, in network order.

        A model calls it once (:class:`~bayesdl.models.BNN` does); priors whose scales depend on a
        parameter's place in the network (:class:`NealPrior`) resolve it here.
        """
        return self

    def __call__(self, name: str, param: Tensor) -> dist.Distribution:
        loc = torch.zeros((), dtype=param.dtype, device=param.device)
        scale = torch.full((), self.scale_for(param, name), dtype=param.dtype, device=param.device)
        base = dist.Normal(loc, scale) if self.family == "normal" else dist.Laplace(loc, scale)
        return base.expand(param.shape).to_event(param.ndim)

    def __repr__(self) -> str:
        return f"Prior({self.family!r}, scale={self.scale}, fan_in={self.fan_in})"


class NealPrior(Prior):
    r"""Neal's (1995) Gaussian prior, whose network becomes a Gaussian process as it widens.

    For the one-hidden-layer network of the lecture, ``f(x) = b + sum_j v_j h_j(x)`` with
    ``h_j(x) = act(a_j + sum_i u_ij x_i)``:

    - input-to-hidden weights ``u_ij ~ N(0, sigma_u^2)`` and hidden biases ``a_j ~ N(0, sigma_a^2)``;
    - hidden-to-output weights ``v_j ~ N(0, sigma_v^2)`` with ``sigma_v = omega_v / sqrt(q)``, ``q``
      the number of hidden units, so the prior of ``f(x)`` converges as ``q`` grows;
    - the output bias ``b ~ N(0, sigma_b^2)``.

    In a deeper MLP every weight matrix after the first is scaled like ``v`` (``omega_v`` over the
    square root of its fan-in) and every hidden bias like ``a``. As the hidden layer widens the
    prior over functions tends to the Gaussian process with covariance
    ``sigma_b^2 + omega_v^2 E[h(x) h(x')]`` (:mod:`bayesdl.infinite`).

    The prior needs to know which parameter is which: :class:`~bayesdl.models.BNN` binds it to its
    network's parameter names (in network order; the last ``.weight``/``.bias`` are the output
    layer's). Every weight and bias of the network must be Bayesian.

    Arguments:
        sigma_u: Prior standard deviation of the input-to-hidden weights.
        sigma_a: Prior standard deviation of the hidden biases.
        omega_v: Output scale; the hidden-to-output weights have standard deviation
            ``omega_v / sqrt(fan_in)``.
        sigma_b: Prior standard deviation of the output bias.

    Example:
        >>> prior = NealPrior(sigma_u=5.0, sigma_a=5.0).bind(["0.weight", "0.bias", "2.weight", "2.bias"])
        >>> prior.scale_for(torch.zeros(1, 100), "2.weight")
        0.1

    References:
        Neal, R. M. (1995). Bayesian learning for neural networks. PhD thesis, University of
        Toronto, chapter 2.
    """

    def __init__(
        self,
        sigma_u: float = 1.0,
        sigma_a: float = 1.0,
        omega_v: float = 1.0,
        sigma_b: float = 1.0,
    ) -> None:
        super().__init__("normal", 1.0)
        self.sigma_u = float(check_positive("sigma_u", sigma_u))
        self.sigma_a = float(check_positive("sigma_a", sigma_a))
        self.omega_v = float(check_positive("omega_v", omega_v))
        self.sigma_b = float(check_positive("sigma_b", sigma_b))
        self._roles: dict[str, str] | None = None

    def bind(self, names: Sequence[str]) -> NealPrior:
        names = list(names)
        weights = [n for n in names if n.endswith("weight")]
        biases = [n for n in names if n.endswith("bias")]
        if len(weights) < 2 or len(weights) + len(biases) != len(names):
            raise ValueError(
                "NealPrior needs every weight and bias of a network with at least one hidden "
                f"layer to be Bayesian (a Sequential of Linear layers), got parameters {names}"
            )
        roles = {n: "v" for n in weights}
        roles[weights[0]] = "u"
        roles.update({n: "a" for n in biases})
        if biases:
            roles[biases[-1]] = "b" if names.index(biases[-1]) > names.index(weights[-1]) else "a"
        bound = NealPrior(self.sigma_u, self.sigma_a, self.omega_v, self.sigma_b)
        bound._roles = roles
        return bound

    def scale_for(self, param: Tensor, name: str | None = None) -> float:
        if self._roles is None:
            raise ValueError(
                "NealPrior must be bound to a network's parameter names first: pass it to "
                "bayesdl.models.BNN (which binds it) or call prior.bind(names)"
            )
        if name not in self._roles:
            raise ValueError(f"NealPrior is bound to {list(self._roles)}, not to {name!r}")
        role = self._roles[name]
        if role == "v":
            return self.omega_v / math.sqrt(param.shape[-1])
        return {"u": self.sigma_u, "a": self.sigma_a, "b": self.sigma_b}[role]

    def __repr__(self) -> str:
        return (
            f"NealPrior(sigma_u={self.sigma_u}, sigma_a={self.sigma_a}, "
            f"omega_v={self.omega_v}, sigma_b={self.sigma_b})"
        )


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
