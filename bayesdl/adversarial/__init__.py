"""Adversarial examples: attacks, defences, and whether uncertainty detects them.

Attacks (:func:`fgsm`, :func:`bim`, :func:`pgd`) work on any differentiable classifier and on the
package's Bayesian model average (:class:`ModelAverage`); :mod:`bayesdl.adversarial.linearity`
shows why small perturbations add up in high dimension; :mod:`bayesdl.adversarial.detection`
scores clean and adversarial inputs by predictive entropy and mutual information. The defences
are noise augmentation and adversarial training (:func:`train_classifier`), a denoising
autoencoder in front of the classifier (:class:`Denoised`), and randomized smoothing with
certified radii (:class:`SmoothedClassifier`).

References:
    Szegedy, C., et al. (2014). Intriguing properties of neural networks. ICLR.

    Goodfellow, I. J., Shlens, J., & Szegedy, C. (2015). Explaining and harnessing adversarial
    examples. ICLR.
"""

from bayesdl.adversarial.attacks import (
    NORMS,
    AttackResult,
    ModelAverage,
    bim,
    fgsm,
    input_gradient,
    pgd,
)
from bayesdl.adversarial.defenses import (
    ADVERSARIES,
    DENOISER_LOSSES,
    Denoised,
    DenoisingAutoencoder,
    accuracy,
    adversarial_examples,
    train_classifier,
    train_denoiser,
)
from bayesdl.adversarial.detection import (
    SCORES,
    detection_scores,
    detector_aware_loss,
    roc_auc,
    roc_curve,
)
from bayesdl.adversarial.linearity import linear_score_change, linearity_demo
from bayesdl.adversarial.smoothing import (
    SmoothedClassifier,
    binomial_test_two_sided,
    certified_accuracy,
    clopper_pearson_lower,
)

__all__ = [
    "ADVERSARIES",
    "DENOISER_LOSSES",
    "NORMS",
    "SCORES",
    "AttackResult",
    "Denoised",
    "DenoisingAutoencoder",
    "ModelAverage",
    "SmoothedClassifier",
    "accuracy",
    "adversarial_examples",
    "bim",
    "binomial_test_two_sided",
    "certified_accuracy",
    "clopper_pearson_lower",
    "detection_scores",
    "detector_aware_loss",
    "fgsm",
    "input_gradient",
    "linear_score_change",
    "linearity_demo",
    "pgd",
    "roc_auc",
    "roc_curve",
    "train_classifier",
    "train_denoiser",
]
