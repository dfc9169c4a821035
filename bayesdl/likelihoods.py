"""Likelihoods p(y | x, w): how a network's output becomes a distribution over the targets.

A likelihood is a small ``nn.Module`` that says how many network outputs it needs
(:meth:`~Likelihood.output_size`), which global sites of its own it samples (a prior on the noise
scale), and how to build the conditional distribution from the network output. The same object
serves three callers: the Pyro model's observation site, the vectorised predictive (where every
tensor carries a leading posterior-sample dimension), and plain torch code (``head(output)``
returns the distribution).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesdl._validation import check_positive

__all__ = [
    "Categorical",
    "Heteroscedastic",
    "Homoscedastic",
    "Likelihood",
    "MixtureDensity",
]


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class Likelihood(nn.Module):
    """Base class. Subclasses set :attr:`task` and implement :meth:`distribution`."""

    #: ``"regression"`` (scalar real targets) or ``"classification"`` (integer labels).
    task: str = "regression"

    def output_size(self) -> int:
        """Number of network outputs per data point that this likelihood consumes."""
        raise NotImplementedError

    def sample_globals(self) -> dict[str, Tensor]:
        """Sample the likelihood's own global sites (outside the data plate); none by default."""
        return {}

    def distribution(self, output: Tensor, **globals: Tensor) -> dist.Distribution:
        """The conditional distribution of ``y`` given network ``output`` of shape ``(..., N, K)``.

        ``globals`` are values of the sites of :meth:`sample_globals`; with a leading sample
        dimension ``S`` they have shape ``(S,)`` and broadcast against ``output`` of shape
        ``(S, N, K)``.
        """
        raise NotImplementedError

    def forward(self, output: Tensor, **globals: Tensor) -> dist.Distribution:
        return self.distribution(output, **globals)

    def moments(self, output: Tensor, **globals: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``y`` given one set of weights (regression likelihoods)."""
        d = self.distribution(output, **globals)
        return d.mean, d.variance

    def _check_output(self, output: Tensor) -> None:
        if output.shape[-1] != self.output_size():
            raise ValueError(
                f"the network must output {self.output_size()} value(s) per point for "
                f"{type(self).__name__}, got output of shape {tuple(output.shape)}"
            )


def _batched(value: Tensor, target: Tensor) -> Tensor:
    """Append singleton dims so a per-sample scalar ``(S,)`` broadcasts against ``(S, N)``."""
    return value.reshape(value.shape + (1,) * (target.ndim - value.ndim))


class Homoscedastic(Likelihood):
    """Gaussian noise with one scale for all inputs: ``p(y | x) = N(y; mu(x), sigma^2)``.

    The negative log-likelihood of a data set is the lecture's objective
    ``sum_i (y_i - mu(x_i))^2 / (2 sigma^2) + log sigma + C``.

    Arguments:
        sigma: Initial (or, with ``learn=False``, fixed and known) noise scale.
        prior: Prior on ``sigma`` (e.g. ``dist.LogNormal(-1, 1)``). With a prior, ``sigma`` is a
            sample site named ``"sigma"`` and inferred; without, it is a point estimate.
        learn: Learn ``sigma`` as a point estimate (ignored with a prior).
    """

    def __init__(
        self, sigma: float = 1.0, *, prior: dist.Distribution | None = None, learn: bool = True
    ) -> None:
        super().__init__()
        check_positive("sigma", sigma)
        if prior is not None and not isinstance(prior, torch.distributions.Distribution):
            raise TypeError(
                f"prior must be a Distribution over sigma > 0, got {type(prior).__name__}"
            )
        self.prior = prior
        raw = torch.tensor(math.log(sigma))
        if prior is None and learn:
            self.log_sigma = nn.Parameter(raw)
        else:
            self.register_buffer("log_sigma", raw)

    def output_size(self) -> int:
        return 1

    @property
    def sigma(self) -> Tensor:
        """The point estimate (or fixed value) of the noise scale."""
        return self.log_sigma.exp()

    def sample_globals(self) -> dict[str, Tensor]:
        if self.prior is None:
            return {}
        return {"sigma": pyro.sample("sigma", self.prior)}

    def distribution(self, output: Tensor, sigma: Tensor | None = None) -> dist.Normal:
        self._check_output(output)
        mu = output[..., 0]
        sigma = self.sigma if sigma is None else _batched(sigma, mu)
        return dist.Normal(mu, sigma.expand_as(mu))


class Heteroscedastic(Likelihood):
    """Input-dependent Gaussian noise: ``p(y | x) = N(y; mu(x), sigma^2(x))``.

    The network outputs two values per point, ``mu`` and a raw scale ``r``;
    ``sigma = softplus(r) + min_scale``. Softplus grows linearly (not exponentially like ``exp``),
    which keeps gradients tame for outliers, and the floor ``min_scale`` stops the likelihood from
    collapsing onto single points (Kendall & Gal, 2017, use ``log sigma^2`` for the same reason).

    Arguments:
        min_scale: Lower bound on ``sigma(x)``.

    References:
        Nix, D. A., & Weigend, A. S. (1994). Estimating the mean and variance of the target
        probability distribution. ICNN.

        Kendall, A., & Gal, Y. (2017). What uncertainties do we need in Bayesian deep learning for
        computer vision? NeurIPS.
    """

    def __init__(self, min_scale: float = 1e-3) -> None:
        super().__init__()
        check_positive("min_scale", min_scale)
        self.min_scale = float(min_scale)

    def output_size(self) -> int:
        return 2

    def scale(self, output: Tensor) -> Tensor:
        """``sigma(x)`` from the network output."""
        return F.softplus(output[..., 1]) + self.min_scale

    def distribution(self, output: Tensor) -> dist.Normal:
        self._check_output(output)
        return dist.Normal(output[..., 0], self.scale(output))


class Categorical(Likelihood):
    """Classification: the network outputs one logit per class, ``p(y | x) = Cat(softmax(f(x)))``.

    Arguments:
        num_classes: Number of classes ``C``.
    """

    task = "classification"

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        check_positive("num_classes", num_classes, integer=True)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes

    def output_size(self) -> int:
        return self.num_classes

    def distribution(self, output: Tensor) -> dist.Categorical:
        self._check_output(output)
        return dist.Categorical(logits=output)


class MixtureDensity(Likelihood):
    """Mixture of ``K`` Gaussians: ``p(y | x) = sum_k pi_k(x) N(y; mu_k(x), sigma_k^2(x))``.

    The network outputs ``3K`` values per point: mixture logits (normalised with a log-softmax,
    so the weights never underflow), means, and raw scales mapped by
    ``softplus(r) + min_scale``. The mixture's log-density is computed by Pyro's
    ``MixtureSameFamily`` with a log-sum-exp.

    Arguments:
        num_components: Number of components ``K >= 1``.
        min_scale: Lower bound on each ``sigma_k(x)``.

    References:
        Bishop, C. M. (1994). Mixture density networks. Technical Report NCRG/4288, Aston
        University.
    """

    def __init__(self, num_components: int, min_scale: float = 1e-3) -> None:
        super().__init__()
        check_positive("num_components", num_components, integer=True)
        check_positive("min_scale", min_scale)
        self.num_components = num_components
        self.min_scale = float(min_scale)

    def output_size(self) -> int:
        return 3 * self.num_components

    def components(self, output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixture log-weights, means and scales, each of shape ``(..., N, K)``."""
        self._check_output(output)
        logits, mu, raw = output.split(self.num_components, dim=-1)
        return F.log_softmax(logits, dim=-1), mu, F.softplus(raw) + self.min_scale

    def distribution(self, output: Tensor) -> dist.MixtureSameFamily:
        log_pi, mu, sigma = self.components(output)
        return dist.MixtureSameFamily(dist.Categorical(logits=log_pi), dist.Normal(mu, sigma))

    def moments(self, output: Tensor) -> tuple[Tensor, Tensor]:
        # Law of total variance over the components.
        log_pi, mu, sigma = self.components(output)
        pi = log_pi.exp()
        mean = (pi * mu).sum(-1)
        var = (pi * (sigma.square() + mu.square())).sum(-1) - mean.square()
        return mean, var.clamp_min(0.0)
