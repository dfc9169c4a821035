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

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from bayesdl._validation import check_choice, check_positive, check_tensor
from bayesdl.uncertainty import ClassificationUncertainty, classification_uncertainty

if TYPE_CHECKING:
    from bayesdl.adversarial.attacks import ModelAverage

__all__ = ["SCORES", "detection_scores", "detector_aware_loss", "roc_auc", "roc_curve"]

#: The scores of :func:`detection_scores`.
SCORES = ("entropy", "mutual_information", "expected_entropy", "max_prob")


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


def detector_aware_loss(
    model: ModelAverage,
    weight: float = 10.0,
    score: str = "mutual_information",
    margin: float = 1.0,
) -> Callable[[Tensor, Tensor], Tensor]:
    """An attack objective that also hides from an uncertainty detector (Carlini & Wagner, 2017).

    Per example, on the model average and with the score computed from the same posterior draw:

    - while the input is still classified as its label ``y``, ascend the cross-entropy (flip it);
    - once it is misclassified, ascend ``-weight * score - weight * max(0, log p_y - max_{c != y}
      log p_c + margin)``: lower the uncertainty score while keeping another class ahead of ``y``
      by ``margin`` nats.

    So the attack looks for inputs that are misclassified *and* look certain. Without it an
    attack only maximises the cross-entropy, and detection AUCs are upper bounds. It is for
    untargeted attacks only (:func:`~bayesdl.adversarial.pgd` refuses it with a ``target``):
    ``pgd(model, x, y, eps, loss=detector_aware_loss(model))``.

    Arguments:
        model: The :class:`~bayesdl.adversarial.attacks.ModelAverage` under attack.
        weight: Weight of the score and of the margin hinge once an input is misclassified.
        score: ``"mutual_information"``, ``"entropy"`` or ``"expected_entropy"``.
        margin: How far (in log-probability) another class must stay ahead of ``y``.

    References:
        Carlini, N., & Wagner, D. (2017). Adversarial examples are not easily detected:
        bypassing ten detection methods. AISec.
    """
    from bayesdl.adversarial.attacks import ModelAverage

    if not isinstance(model, ModelAverage):
        raise TypeError(f"model must be a ModelAverage, got {type(model).__name__}")
    check_choice("score", score, ("mutual_information", "entropy", "expected_entropy"))
    check_positive("weight", weight, strict=False)
    check_positive("margin", margin, strict=False)

    def loss(x: Tensor, labels: Tensor) -> Tensor:
        log_probs = model.sample_log_probs(x)  # (T, N, C)
        log_mean = torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])
        true = log_mean.gather(-1, labels[:, None])[:, 0]
        others = log_mean.scatter(-1, labels[:, None], float("-inf")).max(-1).values
        flipped = (others > true).detach()
        hidden = -weight * (
            _log_scores(log_probs, log_mean)[score] + torch.relu(true - others + margin)
        )
        return torch.where(flipped, hidden, -true).sum()

    loss.untargeted_only = True  # type: ignore[attr-defined]  # pgd/fgsm refuse a target
    return loss


def _log_scores(log_probs: Tensor, log_mean: Tensor) -> dict[str, Tensor]:
    """Entropies from log-probabilities: finite gradients even where a probability underflows
    to 0 (``xlogy(p, p)`` on probabilities would give 0/0 there)."""
    total = -(log_mean.exp() * log_mean).sum(-1)
    expected = -(log_probs.exp() * log_probs).sum(-1).mean(0)
    return {
        "entropy": total,
        "expected_entropy": expected,
        "mutual_information": total - expected,
    }
