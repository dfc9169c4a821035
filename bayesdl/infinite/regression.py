r"""Exact Gaussian-process regression with NNGP kernels, through ``pyro.contrib.gp``.

The GP is the infinitely wide network's posterior: with noise variance ``sigma^2`` its predictive
at ``x*`` is Gaussian with the latent ``f(x*)``'s mean and variance (the *epistemic* part, which
shrinks near data) plus ``sigma^2`` (the *aleatoric* part), the decomposition the package's
:class:`~bayesdl.uncertainty.RegressionUncertainty` holds for BNNs.

References:
    Rasmussen, C. E., & Williams, C. K. I. (2006). Gaussian processes for machine learning.
    MIT Press, chapter 2.
"""

from __future__ import annotations

import pyro
import pyro.contrib.gp as gp
import torch
from pyro.infer import Trace_ELBO
from torch import Tensor

from bayesdl._validation import check_positive, check_same_length, check_tensor
from bayesdl.inference import History, fit
from bayesdl.infinite.kernels import unique_pyro_name
from bayesdl.uncertainty import RegressionUncertainty

__all__ = ["fit_gp", "gp_predict", "gp_regression", "log_marginal_likelihood"]


def gp_regression(
    x: Tensor,
    y: Tensor,
    kernel: gp.kernels.Kernel,
    noise: float = 0.1,
    *,
    learn_noise: bool = True,
    jitter: float = 1e-6,
) -> gp.models.GPRegression:
    """An exact GP regression of ``y`` on ``x`` with ``kernel`` (``pyro.contrib.gp.models.GPRegression``).

    Arguments:
        x: Inputs ``(N, D)`` or ``(N,)``.
        y: Targets ``(N,)``.
        kernel: Any ``pyro.contrib.gp`` kernel, e.g. :class:`~bayesdl.infinite.ErfKernel`.
        noise: Noise *standard deviation* of the Gaussian likelihood (Pyro stores its variance).
        learn_noise: Fit the noise with the kernel's hyperparameters; ``False`` keeps it fixed.
        jitter: Added to the kernel matrix's diagonal for a stable Cholesky factor.
    """
    x = check_tensor("x", x, ndim=(1, 2))
    y = check_tensor("y", y, ndim=1)
    check_same_length(x=x, y=y)
    if not isinstance(kernel, gp.kernels.Kernel):
        raise TypeError(f"kernel must be a pyro.contrib.gp kernel, got {type(kernel).__name__}")
    check_positive("noise", noise)
    check_positive("jitter", jitter, strict=False)
    x = x.unsqueeze(-1) if x.ndim == 1 else x
    model = gp.models.GPRegression(
        x,
        y,
        kernel,
        noise=torch.tensor(float(noise) ** 2, dtype=x.dtype, device=x.device),
        jitter=jitter,
    )
    unique_pyro_name(model, "GPRegression")  # its own hyperparameters in the param store
    if not learn_noise:
        value = model.noise.detach()
        del model.noise  # no longer a Pyro parameter: a buffer the optimiser never sees
        model.register_buffer("noise", value)
    return model


def log_marginal_likelihood(model: gp.models.GPRegression) -> Tensor:
    """``log p(y | X, theta)`` of an exact GP regression, differentiable in its hyperparameters."""
    if not isinstance(model, gp.models.GPRegression):
        raise TypeError(f"model must be a GPRegression, got {type(model).__name__}")
    # The GP has no latent sites, so the ELBO of its empty guide is the marginal likelihood.
    return -Trace_ELBO().differentiable_loss(model.model, model.guide)


def fit_gp(
    model: gp.models.GPRegression,
    *,
    num_steps: int = 500,
    lr: float = 0.02,
    seed: int | None = 0,
    progress: bool = True,
) -> History:
    """Fit the GP's hyperparameters (kernel and noise) by maximum marginal likelihood (type II ML).

    Runs :func:`bayesdl.fit` on the GP's model and (empty or MAP) guide, full batch, so a NaN keeps
    the last finite hyperparameters and the history records ``-log p(y | X)`` per step.
    """
    if not isinstance(model, gp.models.GPRegression):
        raise TypeError(f"model must be a GPRegression, got {type(model).__name__}")

    def gp_model(x: Tensor, y: Tensor | None = None) -> None:
        model.model()

    def gp_guide(x: Tensor, y: Tensor | None = None) -> None:
        model.guide()

    return fit(
        gp_model,
        gp_guide,
        model.X,
        model.y,
        num_steps=num_steps,
        lr=lr,
        seed=seed,
        progress=progress,
    )


def gp_predict(model: gp.models.GPRegression, x: Tensor) -> RegressionUncertainty:
    """The GP's posterior predictive at ``x``: mean, epistemic ``Var[f(x)]``, aleatoric noise."""
    if not isinstance(model, gp.models.GPRegression):
        raise TypeError(f"model must be a GPRegression, got {type(model).__name__}")
    x = check_tensor("x", x, ndim=(1, 2))
    x = x.unsqueeze(-1) if x.ndim == 1 else x
    with torch.no_grad(), pyro.poutine.block():
        mean, var = model(x.to(model.X), full_cov=False, noiseless=True)
        noise = model.noise.expand_as(var)
    return RegressionUncertainty(mean=mean, aleatoric=noise.clone(), epistemic=var.clamp_min(0))
