"""Mixture density networks: a neural network that outputs a Gaussian mixture ``p(y | x)``.

A :class:`MixtureDensityNetwork` is a plain ``nn.Module`` whose ``forward(x)`` returns the
conditional distribution (Pyro's ``MixtureSameFamily``), so ``mdn(x).log_prob(y)`` and
``mdn(x).sample()`` work as for any conditional model. Its network and its
:class:`~bayesdl.likelihoods.MixtureDensity` head are the same modules that drive the observation
site of the Pyro program returned by :meth:`MixtureDensityNetwork.model`, so the network can be
fitted with :func:`bayesdl.fit` (maximum likelihood, or with a prior and a guide) and then used
directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from bayesdl._validation import check_choice, check_positive, check_tensor
from bayesdl.likelihoods import MixtureDensity
from bayesdl.models import BNN
from bayesdl.nn import ACTIVATIONS, MLP
from bayesdl.priors import PriorLike

__all__ = ["MixtureDensityNetwork", "find_modes", "gaussian_mixture_crps"]


def _inverse_softplus(value: Tensor) -> Tensor:
    return value + torch.log(-torch.expm1(-value))


class MixtureDensityNetwork(nn.Module):
    r"""Mixture density network (Bishop, 1994) for scalar targets.

    For an input ``x`` an MLP outputs ``3K`` numbers that parametrise

    \[ p(y \mid x) = \sum_{k=1}^K \pi_k(x)\, \mathcal{N}(y; \mu_k(x), \sigma_k^2(x)), \]

    with ``pi = softmax(logits)`` (computed as a log-softmax, so no weight underflows) and
    ``sigma_k = softplus(r_k) + min_scale``. Unlike a point estimate or a single Gaussian, the
    mixture can put its mass on several separated branches of a multivalued relation, such as
    the inverse of Bishop's sinusoid.

    Arguments:
        in_features: Input dimension ``D`` (inputs have shape ``(N, D)``).
        num_components: Number of mixture components ``K >= 1``.
        hidden: Widths of the hidden layers of the MLP, each ``> 0``.
        activation: Hidden nonlinearity, one of :data:`bayesdl.nn.ACTIVATIONS`.
        min_scale: Lower bound on every ``sigma_k(x)``, ``> 0``; it keeps a component from
            collapsing onto a single training point (where the likelihood is unbounded).

    Attributes:
        net: The :class:`~bayesdl.nn.MLP` with ``3K`` outputs (logits, means, raw scales).
        likelihood: The :class:`~bayesdl.likelihoods.MixtureDensity` head.

    Example:
        >>> mdn = MixtureDensityNetwork(1, num_components=3, hidden=(16,))
        >>> d = mdn(torch.zeros(5, 1))
        >>> d.batch_shape, d.sample().shape, d.log_prob(torch.zeros(5)).shape
        (torch.Size([5]), torch.Size([5]), torch.Size([5]))

    References:
        Bishop, C. M. (1994). Mixture density networks. Technical Report NCRG/4288, Aston
        University.
    """

    def __init__(
        self,
        in_features: int,
        num_components: int = 3,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        check_positive("in_features", in_features, integer=True)
        check_positive("num_components", num_components, integer=True)
        if isinstance(hidden, int):
            hidden = (hidden,)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of ints, got {type(hidden).__name__}")
        for width in hidden:
            if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
                raise ValueError(f"hidden must hold positive integer widths, got {tuple(hidden)}")
        check_choice("activation", activation, ACTIVATIONS)
        check_positive("min_scale", min_scale)
        self.in_features = in_features
        self.num_components = num_components
        self.net = MLP(in_features, 3 * num_components, hidden=hidden, activation=activation)
        self.likelihood = MixtureDensity(num_components, min_scale=min_scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_components={self.num_components}"

    def _check_input(self, x: Tensor) -> Tensor:
        check_tensor("x", x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have shape (N, {self.in_features}) (last dimension = in_features), "
                f"got {tuple(x.shape)}"
            )
        return x

    # -- the conditional distribution ----------------------------------------------------------

    def forward(self, x: Tensor) -> dist.MixtureSameFamily:
        """The conditional distribution ``p(y | x)`` with batch shape ``x.shape[:-1]``.

        Arguments:
            x: Inputs of shape ``(N, in_features)``.

        Returns:
            A Pyro ``MixtureSameFamily`` of ``K`` Normals.
        """
        return self.likelihood(self.net(self._check_input(x)))

    def components(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixture log-weights, means and scales at ``x``, each of shape ``(N, K)``."""
        return self.likelihood.components(self.net(self._check_input(x)))

    def mixture_weights(self, x: Tensor) -> Tensor:
        """Mixing coefficients ``pi_k(x)`` of shape ``(N, K)``; each row sums to one."""
        return self.components(x)[0].exp()

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(y | x)`` per point: inputs ``(N, D)``, targets ``(N,)``, result ``(N,)``."""
        return self(x).log_prob(y)

    def modes(
        self,
        x: float | Tensor,
        grid: Tensor | None = None,
        *,
        threshold: float = 1e-3,
    ) -> Tensor:
        """Local maxima of the conditional density ``p(y | x)`` at one input, found on a grid.

        Arguments:
            x: One input: a number (when ``in_features == 1``) or a tensor of shape
                ``(in_features,)``.
            grid: Increasing 1-D grid of ``y`` values; by default 2,001 points spanning the
                components' means +/- 4 scales.
            threshold: Maxima whose density is below ``threshold`` times the highest one are
                dropped (tails of far-away components create negligible bumps).

        Returns:
            The grid values at the local maxima, in increasing order, shape ``(M,)``.
        """
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            if self.in_features != 1:
                raise ValueError(
                    f"x must be a tensor of shape ({self.in_features},); a number is an input "
                    "only when in_features == 1"
                )
            x = torch.tensor([float(x)])
        check_tensor("x", x, ndim=1)
        ref = next(self.parameters())
        x = self._check_input(x.to(ref)).unsqueeze(0)
        with torch.no_grad():
            d = self(x)
            if grid is None:
                _, mu, sigma = self.components(x)
                lo = float((mu - 4 * sigma).min())
                hi = float((mu + 4 * sigma).max())
                grid = torch.linspace(lo, hi, 2001, dtype=ref.dtype, device=ref.device)
            check_tensor("grid", grid, ndim=1)
            log_p = d.log_prob(grid.to(ref).unsqueeze(-1))[:, 0]
        return find_modes(grid, log_p, threshold=threshold)

    # -- the Pyro program ----------------------------------------------------------------------

    def model(self, prior: PriorLike | None = None, *, name: str = "mdn", **kwargs: Any) -> BNN:
        """The Pyro program ``y_i ~ p(y | x_i, w)`` built on this network.

        The returned :class:`~bayesdl.models.BNN` shares :attr:`net` and :attr:`likelihood` with
        this module, so fitting it (e.g. ``bayesdl.fit(mdn.model(), None, x, y)``: maximum
        likelihood) trains this network, and :func:`bayesdl.inference.predict` works on it.

        Arguments:
            prior: Prior over the weights, or ``None`` for point estimates (see
                :class:`~bayesdl.models.BNN`).
            name: Prefix of the point-estimate parameters in Pyro's param store. Give each
                network in one param store its own name: an existing entry of the same name
                replaces the network's parameter.
            **kwargs: Passed on to :class:`~bayesdl.models.BNN` (e.g. ``bayesian="last"``).

        Returns:
            A :class:`~bayesdl.models.BNN`.
        """
        return BNN(self.net, self.likelihood, prior, name=name, **kwargs)

    # -- initialisation ------------------------------------------------------------------------

    @torch.no_grad()
    def initialize(
        self, y: Tensor, x: Tensor | None = None, *, gain: float = 2.0
    ) -> MixtureDensityNetwork:
        """Data-dependent initialisation from training data.

        Output layer (from ``y``): the biases of the means go to ``K`` evenly spaced quantiles of
        ``y``, those of the scales to about ``std(y) / K``, the logits to zero (equal weights),
        and the output weights shrink tenfold. Every component then starts on its own part of the
        target range instead of all on the mean of ``y``, which spares the slow breaking of that
        symmetry.

        First layer (from ``x``, if given): weights ``W_ij ~ N(0, gain^2 / (D var(x_j)))`` and
        biases ``b_i = -W_i . x_n`` for a random training input ``x_n`` per unit, so every hidden
        unit bends somewhere inside the data. A default torch layer on inputs in ``[0, 1]`` is
        almost linear there and needs many steps to grow the steep features of a multivalued
        relation.

        Arguments:
            y: Training targets of shape ``(N,)``.
            x: Training inputs of shape ``(N, in_features)`` (optional).
            gain: Standard deviation of the first layer's pre-activations over the data.

        Returns:
            ``self``, for chaining.
        """
        check_tensor("y", y, ndim=1)
        if y.shape[0] < 2 or not bool(torch.isfinite(y).all()):
            raise ValueError("y must hold at least two finite targets")
        check_positive("gain", gain)
        k = self.num_components
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        y = y.to(last.bias)
        q = (torch.arange(k, dtype=y.dtype, device=y.device) + 0.5) / k
        means = torch.quantile(y, q)
        scale = (y.std() / k).clamp_min(2 * self.likelihood.min_scale)
        last.weight.mul_(0.1)
        last.bias[:k] = 0.0
        last.bias[k : 2 * k] = means
        last.bias[2 * k :] = _inverse_softplus(scale - self.likelihood.min_scale)
        if x is not None:
            self._check_input(x)
            if x.ndim != 2 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"x must have shape (N, {self.in_features}) with N = len(y) = {y.shape[0]}, "
                    f"got {tuple(x.shape)}"
                )
            if not bool(torch.isfinite(x).all()):
                raise ValueError("x contains NaN or infinite values")
            first = self.net[0]
            assert isinstance(first, nn.Linear)
            x = x.to(first.weight)
            std = x.std(0).clamp_min(1e-8)
            w = torch.randn_like(first.weight) * gain / (std * math.sqrt(self.in_features))
            first.weight.copy_(w)
            anchors = x[torch.randint(0, x.shape[0], (first.out_features,), device=x.device)]
            first.bias.copy_(-(w * anchors).sum(-1))
        return self


def find_modes(grid: Tensor, log_density: Tensor, *, threshold: float = 1e-3) -> Tensor:
    """Local maxima of a density tabulated on a 1-D grid.

    A grid point is a mode when its density exceeds its left neighbour and is at least its right
    neighbour (plateaus count once); the grid's end points are never modes.

    Arguments:
        grid: Increasing grid, shape ``(G,)``.
        log_density: Log-density at the grid points, shape ``(G,)``.
        threshold: Drop maxima whose density is below ``threshold`` times the largest density.

    Returns:
        The grid values at the retained maxima, shape ``(M,)``.
    """
    check_tensor("grid", grid, ndim=1)
    check_tensor("log_density", log_density, ndim=1)
    if grid.shape != log_density.shape:
        raise ValueError(
            f"grid and log_density must have the same shape, got {tuple(grid.shape)} "
            f"and {tuple(log_density.shape)}"
        )
    if grid.shape[0] < 3:
        raise ValueError(f"grid must hold at least 3 points, got {grid.shape[0]}")
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("grid must be strictly increasing")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    mid = log_density[1:-1]
    peak = (mid > log_density[:-2]) & (mid >= log_density[2:])
    if threshold > 0:
        peak &= mid >= log_density.max() + math.log(threshold)
    return grid[1:-1][peak]


def gaussian_mixture_crps(mixture: dist.MixtureSameFamily, y: Tensor) -> Tensor:
    r"""Closed-form CRPS of a mixture of Normals at observations ``y``, per point.

    With \( A(m, s^2) = 2 s \phi(m / s) + m (2 \Phi(m / s) - 1) \) (the mean of ``|Z|`` for
    ``Z ~ N(m, s^2)``), the CRPS ``E|Y - y| - E|Y - Y'| / 2`` of the mixture is

    \[ \sum_k \pi_k A(y - \mu_k, \sigma_k^2)
        - \tfrac12 \sum_{k, l} \pi_k \pi_l A(\mu_k - \mu_l, \sigma_k^2 + \sigma_l^2). \]

    For ``K = 1`` it equals :func:`bayesdl.metrics.crps_gaussian`.

    Arguments:
        mixture: A ``MixtureSameFamily`` with Normal components and batch shape ``(N,)``.
        y: Observations of shape ``(N,)``.

    Returns:
        The CRPS per point, shape ``(N,)`` (lower is better, in the units of ``y``).

    References:
        Grimit, E. P., Gneiting, T., Berrocal, V. J., & Johnson, N. A. (2006). The continuous
        ranked probability score for circular variables and its application to mesoscale forecast
        ensemble verification. QJRMS, 132, 2925-2942.

        Gneiting, T., & Raftery, A. E. (2007). Strictly proper scoring rules, prediction, and
        estimation. JASA, 102(477), 359-378.
    """
    if not isinstance(mixture, torch.distributions.MixtureSameFamily) or not isinstance(
        mixture.component_distribution, torch.distributions.Normal
    ):
        raise TypeError("mixture must be a MixtureSameFamily with Normal components")
    check_tensor("y", y)
    if y.shape != mixture.batch_shape:
        raise ValueError(
            f"y must have the mixture's batch shape {tuple(mixture.batch_shape)}, "
            f"got {tuple(y.shape)}"
        )
    pi = mixture.mixture_distribution.probs
    mu = mixture.component_distribution.loc
    var = mixture.component_distribution.scale.square()

    def a(m: Tensor, v: Tensor) -> Tensor:
        s = v.sqrt()
        z = m / s
        pdf = torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)
        return 2 * s * pdf + m * (2 * torch.special.ndtr(z) - 1)

    first = (pi * a(y.unsqueeze(-1) - mu, var)).sum(-1)
    pair = a(mu.unsqueeze(-1) - mu.unsqueeze(-2), var.unsqueeze(-1) + var.unsqueeze(-2))
    second = 0.5 * (pi.unsqueeze(-1) * pi.unsqueeze(-2) * pair).sum((-1, -2))
    return first - second
