"""Uncertainty as a detector of adversarial examples: entropy, mutual information and ROC AUC.

A Bayesian classifier's predictive entropy splits into the expected entropy of each posterior
sample (aleatoric) and the mutual information between the label and the weights (epistemic,
BALD). Adversarial inputs move off the data; where the posterior samples disagree there, the
mutual information rises, and it can flag an attack a deterministic network's softmax would not
(Feinman et al., 2017; Smith & Gal, 2018). :func:`roc_auc` measures how well a score separates
clean from adversarial inputs.

References:
    Feinman, R., Curtin, R. R., Shintre, S., & Gardner, A. B. (2017). Detecting adversarial
    samples from artifacts. arXiv:1703.00410.

    Smith, L., & Gal, Y. (2018). Understanding measures of uncertainty for adversarial example
    detection. UAI.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayesdl._validation import check_tensor
from bayesdl.uncertainty import ClassificationUncertainty, classification_uncertainty

__all__ = ["detection_scores", "roc_auc", "roc_curve"]


def _scores(name: str, value: object) -> Tensor:
    value = check_tensor(name, value, ndim=1)
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not value.is_floating_point():
        value = value.double()
    if value.isnan().any():
        raise ValueError(f"{name} must not contain NaN")
    return value.double()


def roc_auc(negatives: Tensor, positives: Tensor) -> float:
    """Area under the ROC curve of a score that should be larger on ``positives``.

    Computed exactly as the Mann–Whitney statistic ``P(s+ > s-) + P(s+ = s-) / 2`` from the
    ranks of the pooled scores (ties get their average rank): 1 when every positive scores above
    every negative, 0.5 for indistinguishable scores.

    Arguments:
        negatives: Scores of the clean inputs, ``(N,)``.
        positives: Scores of the adversarial inputs, ``(M,)``.
    """
    neg = _scores("negatives", negatives)
    pos = _scores("positives", positives)
    pooled = torch.cat([neg, pos])
    order = pooled.argsort()
    sorted_scores = pooled[order]
    ranks = torch.empty_like(pooled)
    ranks[order] = torch.arange(1, pooled.numel() + 1, dtype=pooled.dtype, device=pooled.device)
    # Average the ranks within each group of tied scores.
    _, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).to(pooled.dtype)
    average = ends - (counts.to(pooled.dtype) - 1) / 2
    ranks[order] = average[inverse]
    n_pos, n_neg = pos.numel(), neg.numel()
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def roc_curve(negatives: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    """False- and true-positive rates at every threshold (descending), each ``(K + 1,)``."""
    neg = _scores("negatives", negatives)
    pos = _scores("positives", positives)
    thresholds = torch.cat([pos, neg]).unique().flip(0)
    fpr = (neg[None, :] >= thresholds[:, None]).double().mean(1)
    tpr = (pos[None, :] >= thresholds[:, None]).double().mean(1)
    zero = fpr.new_zeros(1)
    return torch.cat([zero, fpr]), torch.cat([zero, tpr])


def detection_scores(probs: Tensor) -> dict[str, Tensor]:
    """Uncertainty scores per input from per-sample class probabilities ``(S, N, C)``.

    Returns:
        ``{"entropy": total predictive entropy, "mutual_information": its epistemic part,
        "expected_entropy": its aleatoric part, "max_prob": 1 - max mean probability}``, each
        ``(N,)`` and larger for more uncertain inputs. A deterministic network (``S = 1``) has
        zero mutual information.
    """
    probs = check_tensor("probs", probs, ndim=3)
    u: ClassificationUncertainty = classification_uncertainty(probs)
    return {
        "entropy": u.total,
        "mutual_information": u.epistemic.clamp_min(0),
        "expected_entropy": u.aleatoric,
        "max_prob": 1 - u.probs.max(-1).values,
    }
