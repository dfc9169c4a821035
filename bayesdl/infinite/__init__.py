"""Bayesian infinite networks: wide-network priors, their Gaussian-process limit, NNGP kernels.

Neal (1995) showed that a one-hidden-layer network with Gaussian priors and output weights scaled
by ``1/sqrt(q)`` becomes a Gaussian process as its width ``q`` grows. This package samples such
priors at any width (:func:`sample_prior_functions`, :func:`neal_figure_2_2`), computes the
limiting covariance functions as ``pyro.contrib.gp`` kernels (:class:`ErfKernel`,
:class:`ArcCosineKernel`, :class:`DeepReLUKernel`, :class:`MonteCarloKernel`), regresses with them
(:func:`gp_regression`, :func:`gp_predict`), and measures the convergence
(:func:`prior_kurtosis`, :func:`kernel_convergence`, :func:`bnn_vs_gp`).

References:
    Neal, R. M. (1995). Bayesian learning for neural networks. PhD thesis, University of Toronto.
"""

from bayesdl.infinite.convergence import (
    BNNvsGP,
    bnn_vs_gp,
    empirical_kernel,
    kernel_convergence,
    kurtosis_theory,
    prior_kurtosis,
)
from bayesdl.infinite.kernels import (
    ArcCosineKernel,
    DeepReLUKernel,
    ErfKernel,
    MonteCarloKernel,
    NNGPKernel,
    kernel_for,
)
from bayesdl.infinite.prior import (
    NealFigure,
    hidden_moments,
    neal_figure_2_2,
    prior_variance,
    sample_prior_functions,
)
from bayesdl.infinite.regression import fit_gp, gp_predict, gp_regression, log_marginal_likelihood

__all__ = [
    "ArcCosineKernel",
    "BNNvsGP",
    "DeepReLUKernel",
    "ErfKernel",
    "MonteCarloKernel",
    "NNGPKernel",
    "NealFigure",
    "bnn_vs_gp",
    "empirical_kernel",
    "fit_gp",
    "gp_predict",
    "gp_regression",
    "hidden_moments",
    "kernel_convergence",
    "kernel_for",
    "kurtosis_theory",
    "log_marginal_likelihood",
    "neal_figure_2_2",
    "prior_kurtosis",
    "prior_variance",
    "sample_prior_functions",
]
