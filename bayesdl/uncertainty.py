"""Splitting predictive uncertainty into its aleatoric and epistemic parts.

Pure tensor functions of per-sample predictive parameters (a leading posterior-sample dimension
``S``), shared by every posterior kind.

Regression (Kendall & Gal, 2017; the lecture's MC-dropout estimate): with ``T`` sampled networks
``(mu_t, sigma_t^2)``,

    E[y] ~ (1/T) sum_t mu_t,
    V[y] ~ (1/T) sum_t sigma_t^2  +  (1/T) sum_t mu_t^2 - E[y]^2
         =  aleatoric             +  epistemic.

Classification (Houlsby et al., 2011; Depeweg et al., 2018): the entropy of the mean prediction
splits into the expected entropy (aleatoric) and the mutual information between the label and
the weights (epistemic, BALD):

    H[(1/T) sum_t p_t] = (1/T) sum_t H[p_t] + MI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ClassificationUncertainty",
    "RegressionUncertainty",
    "classification_uncertainty",
    "entropy",
    "regression_uncertainty",
]


@dataclass(frozen=True)
class RegressionUncertainty:
    """Predictive mean and the variance decomposition, each of shape ``(N,)``."""

    mean: Tensor
    aleatoric: Tensor
    epistemic: Tensor

    @property
    def total(self) -> Tensor:
        return self.aleatoric + self.epistemic

    @property
    def std(self) -> Tensor:
        return self.total.sqrt()


@dataclass(frozen=True)
class ClassificationUncertainty:
    """Mean class probabilities ``(N, C)`` and the entropy decomposition ``(N,)`` in nats."""

    probs: Tensor
    total: Tensor
    aleatoric: Tensor

    @property
    def epistemic(self) -> Tensor:
        """Mutual information between the label and the weights (BALD); ``>= 0`` up to rounding."""
        return self.total - self.aleatoric

    @property
    def mutual_information(self) -> Tensor:
        return self.epistemic


def regression_uncertainty(mean: Tensor, variance: Tensor) -> RegressionUncertainty:
    """Decompose a predictive from per-sample means and variances of shape ``(S, N)``.

    The epistemic part is the population variance of the sample means (the ``1/T`` of the
    lecture's estimator), so ``total`` equals the variance of the equally weighted mixture.

    References:
        Kendall, A., & Gal, Y. (2017). What uncertainties do we need in Bayesian deep learning for
        computer vision? NeurIPS.
    """
    if mean.shape != variance.shape or mean.ndim < 1:
        raise ValueError(
            "mean and variance must share a shape (S, ...), got "
            f"{tuple(mean.shape)} and {tuple(variance.shape)}"
        )
    return RegressionUncertainty(
        mean=mean.mean(0),
        aleatoric=variance.mean(0),
        epistemic=mean.var(0, unbiased=False),
    )


def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy in nats along ``dim``, with ``0 log 0 = 0``."""
    return -torch.special.xlogy(probs, probs).sum(dim)


def classification_uncertainty(probs: Tensor) -> ClassificationUncertainty:
    """Decompose per-sample class probabilities of shape ``(S, N, C)``.

    References:
        Houlsby, N., Huszár, F., Ghahramani, Z., & Lengyel, M. (2011). Bayesian active learning
        for classification and preference learning. arXiv:1112.5745.

        Depeweg, S., Hernández-Lobato, J. M., Doshi-Velez, F., & Udluft, S. (2018). Decomposition
        of uncertainty in Bayesian deep learning for efficient and risk-sensitive learning. ICML.
    """
    if probs.ndim < 3:
        raise ValueError(f"probs must have shape (S, N, C), got {tuple(probs.shape)}")
    mean = probs.mean(0)
    return ClassificationUncertainty(
        probs=mean, total=entropy(mean), aleatoric=entropy(probs).mean(0)
    )
