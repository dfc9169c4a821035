"""One posterior predictive for every posterior kind: SVI guides, MCMC samples, point estimates.

:func:`posterior_samples` draws ``S`` weight samples (from a guide, vectorised with Pyro's
``Predictive(guide, parallel=True)``, or by thinning MCMC draws); :func:`predict` pushes all of
them through the network at once (``torch.vmap`` over the sample dimension, no Python loop over
samples) and returns a :class:`Prediction` with the likelihood's parameters per sample and the
lecture's split of the predictive uncertainty into aleatoric and epistemic parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive
from torch import Tensor

from bayesdl._validation import check_finite, check_positive, check_tensor
from bayesdl.models import BNN
from bayesdl.uncertainty import (
    ClassificationUncertainty,
    RegressionUncertainty,
    classification_uncertainty,
    regression_uncertainty,
)

__all__ = ["Posterior", "Prediction", "posterior_samples", "predict"]

#: A fitted posterior: a guide, a dict of samples ``{site: (S, ...)}``, or ``None`` (point estimate).
Posterior = Callable[..., Any] | Mapping[str, Tensor] | None


@dataclass
class Prediction:
    """Posterior predictive at a set of inputs, one entry per posterior sample.

    Attributes:
        task: ``"regression"`` or ``"classification"``.
        output: Network outputs of shape ``(S, N, K)``.
        distribution: ``p(y | x, w_s)`` with batch shape ``(S, N)``.
        params: The likelihood's parameters per sample: ``"mean"`` and ``"variance"`` of ``y``
            (regression), ``"probs"`` of shape ``(S, N, C)`` (classification).
    """

    task: str
    output: Tensor
    distribution: dist.Distribution = field(repr=False)
    params: dict[str, Tensor] = field(repr=False)

    @property
    def num_samples(self) -> int:
        return self.output.shape[0]

    @property
    def uncertainty(self) -> RegressionUncertainty | ClassificationUncertainty:
        """The aleatoric / epistemic decomposition (see :mod:`bayesdl.uncertainty`)."""
        if self.task == "classification":
            return classification_uncertainty(self.params["probs"])
        return regression_uncertainty(self.params["mean"], self.params["variance"])

    # Shortcuts for the common fields of the decomposition.
    @property
    def mean(self) -> Tensor:
        """Predictive mean of ``y`` (regression) or mean class probabilities (classification)."""
        u = self.uncertainty
        return u.mean if isinstance(u, RegressionUncertainty) else u.probs

    @property
    def aleatoric(self) -> Tensor:
        """``E_s[sigma_s^2]`` (regression) or the expected entropy (classification)."""
        return self.uncertainty.aleatoric

    @property
    def epistemic(self) -> Tensor:
        """``Var_s[mu_s]`` (regression) or the mutual information (classification)."""
        return self.uncertainty.epistemic

    @property
    def total(self) -> Tensor:
        """Total predictive variance (regression) or entropy of the mean prediction."""
        return self.uncertainty.total

    def log_prob(self, y: Tensor) -> Tensor:
        """Log-density of ``y`` of shape ``(N,)`` under the predictive mixture
        ``(1/S) sum_s p(y | x, w_s)``, per point."""
        return torch.logsumexp(self.distribution.log_prob(y), dim=0) - math.log(self.num_samples)

    def sample(self, num_draws: int = 1) -> Tensor:
        """Draws of ``y`` from the predictive, shape ``(num_draws * S, N)``."""
        check_positive("num_draws", num_draws, integer=True)
        draws = self.distribution.sample((num_draws,))
        return draws.reshape(-1, *draws.shape[2:])


def _sample_guide(guide: Callable[..., Any], num_samples: int, x: Tensor, sites: tuple[str, ...]):
    trace = getattr(guide, "prototype_trace", None)
    if trace is None and hasattr(guide, "prototype_trace"):
        # An autoguide builds itself from the model's first trace: run without targets, that
        # trace would make 'obs' a latent site (and fail obscurely for discrete labels).
        raise ValueError(
            "the guide has not been set up yet: fit it first (bayesdl.fit(model, guide, x, y)) "
            "or run it once with observed data, guide(x_train, y_train)"
        )
    obs = None if trace is None else trace.nodes.get("obs")
    if obs is not None and not obs["is_observed"]:
        raise ValueError(
            "the guide was first run without targets, so it treats 'obs' as latent: set it up "
            "with observed data, e.g. guide(x_train, y_train) or bayesdl.fit(model, guide, x, y)"
        )
    samples = Predictive(guide, num_samples=num_samples, parallel=True)(x, None)
    missing = [s for s in sites if s not in samples]
    if missing:
        raise ValueError(f"the guide does not sample the model's latent sites {missing}")
    return {s: samples[s] for s in sites}


def _thin(samples: Mapping[str, Tensor], sites: tuple[str, ...], num_samples: int | None):
    missing = [s for s in sites if s not in samples]
    if missing:
        raise ValueError(f"the posterior samples lack the model's latent sites {missing}")
    total = samples[sites[0]].shape[0]
    for s in sites:
        if samples[s].shape[0] != total:
            raise ValueError("posterior samples must share their leading (sample) dimension")
    if num_samples is None or num_samples >= total:
        return {s: samples[s] for s in sites}
    idx = torch.linspace(0, total - 1, num_samples).round().long()
    return {s: samples[s][idx.to(samples[s].device)] for s in sites}


def posterior_samples(
    model: BNN,
    posterior: Posterior,
    x: Tensor,
    *,
    num_samples: int | None = 100,
    seed: int | None = None,
) -> dict[str, Tensor]:
    """Draw samples of the model's latent sites from ``posterior``.

    Arguments:
        model: The fitted :class:`~bayesdl.models.BNN`.
        posterior: A guide (any Pyro autoguide or a bayesdl guide), a dict of posterior samples
            with a leading sample dimension (e.g. ``MCMC.get_samples()``), or ``None`` for a model
            without latent sites.
        x: Inputs (guides with local sites need them; global-only guides ignore them).
        num_samples: Draws from a guide; for sample dicts, evenly thinned to this many
            (``None`` keeps all).
        seed: Seed for the draws.
    """
    sites = model.latent_sites
    if seed is not None:
        pyro.set_rng_seed(seed)
    if not sites:
        return {}
    if posterior is None:
        raise ValueError(f"the model has latent sites {list(sites)}: pass a guide or samples")
    if isinstance(posterior, Mapping):
        thinned = _thin(posterior, sites, num_samples)
        _check_shapes(model, thinned)
        return thinned
    if not callable(posterior):
        raise TypeError(
            f"posterior must be a guide, a dict of samples or None, got {type(posterior)}"
        )
    check_positive("num_samples", num_samples, integer=True)
    with torch.no_grad():
        samples = _sample_guide(posterior, num_samples, x, sites)  # type: ignore[arg-type]
    _check_shapes(model, samples)
    return samples


def _check_shapes(model: BNN, samples: Mapping[str, Tensor]) -> None:
    """Each weight site's draws must have the model's shape. A guide reads its parameters from
    Pyro's global param store by name, so a guide of another network fitted earlier in the
    same session would otherwise be used silently."""
    for site, prior in model.priors().items():
        expected = tuple(prior.event_shape)
        got = tuple(samples[site].shape[1:])
        if got[-len(expected) :] != expected if expected else got not in ((), (1,)):
            raise ValueError(
                f"the posterior's draws of {site!r} have shape {got}, the model's is {expected}: "
                "the guide's parameters belong to another network (guides share Pyro's global "
                "param store by name; call pyro.clear_param_store() before building a new model "
                "and guide)"
            )


# Below glibc's largest mmap threshold (32 MB), freed blocks stay in the heap and are reused;
# above it, every chunk is a fresh mmap whose pages fault in again.
_CHUNK_BYTES = 4 * 2**20


def _auto_chunk(model: BNN, samples: dict[str, Tensor], x: Tensor) -> int | None:
    """Rows per pass so that an ``(S, rows, width)`` float intermediate stays near 4 MB, with
    the widest parameter dimension standing in for the widest layer."""
    if x.ndim == 2 and model.loops_over_samples(x.shape[0]):
        return None  # one sample at a time: each layer's intermediate is only (N, width)
    num_samples = next(iter(samples.values())).shape[0] if samples else 1
    width = max((max(p.shape) for p in model.net.parameters() if p.ndim), default=1)
    rows = _CHUNK_BYTES // (4 * num_samples * width)
    return None if rows >= x.shape[0] else max(16, int(rows))


def _predict_chunk(model: BNN, samples: dict[str, Tensor], x: Tensor) -> Tensor:
    weights = {s: samples[s] for s in model.weight_sites}
    out = model.network_output(x, weights)
    if not weights:
        out = out.unsqueeze(0)
    return out


def predict(
    model: BNN,
    posterior: Posterior,
    x: Tensor,
    *,
    num_samples: int | None = 100,
    seed: int | None = None,
    chunk_size: int | str | None = "auto",
) -> Prediction:
    """Posterior predictive of ``model`` at inputs ``x`` under ``posterior``.

    No Python loop over samples in the predictive itself: the network runs all posterior samples
    at once (broadcasting matmuls for MLPs, ``torch.vmap`` otherwise), except that an MLP on many
    inputs without autograd runs one fused plain forward per sample, which measured fastest
    (``benchmarks/README.md``). ``chunk_size`` splits the *inputs* to bound memory on large ``x``: every layer
    of the vectorised pass holds an ``(S, rows, width)`` tensor, and gigabyte-sized
    intermediates cost more in page faults than in arithmetic (``make bench``).

    Arguments:
        model: The :class:`~bayesdl.models.BNN` that was fitted.
        posterior: A guide, a dict of samples, or ``None`` (see :func:`posterior_samples`).
        x: Inputs ``(N, ...)``.
        num_samples: Number of posterior samples ``S``.
        seed: Seed for the posterior draws.
        chunk_size: Rows of ``x`` per vectorised pass: ``"auto"`` keeps each layer's
            ``(S, rows, width)`` intermediate near 4 MB (and does not chunk an MLP on many
            inputs, which runs the samples one plain forward at a time), an int fixes it,
            ``None`` passes all rows at once.

    Returns:
        A :class:`Prediction`; ``prediction.uncertainty`` holds the decomposition.

    Example:
        >>> pred = predict(model, guide, x_test, num_samples=200)  # doctest: +SKIP
        >>> pred.mean, pred.aleatoric, pred.epistemic  # doctest: +SKIP

    References:
        Kendall, A., & Gal, Y. (2017). What uncertainties do we need in Bayesian deep learning for
        computer vision? NeurIPS.
    """
    if not isinstance(model, BNN):
        raise TypeError(f"model must be a bayesdl.models.BNN, got {type(model).__name__}")
    check_tensor("x", x)
    check_finite("x", x)
    if x.shape[0] == 0:
        raise ValueError("x is empty")
    samples = posterior_samples(model, posterior, x, num_samples=num_samples, seed=seed)
    was_training = model.training
    model.eval()  # no nn.Dropout noise on top of the posterior's own randomness
    try:
        with torch.no_grad():
            if chunk_size == "auto":
                chunk_size = _auto_chunk(model, samples, x)
            if chunk_size is None:
                output = _predict_chunk(model, samples, x)
            else:
                check_positive("chunk_size", chunk_size, integer=True)
                output = torch.cat(
                    [_predict_chunk(model, samples, xc) for xc in x.split(chunk_size)], dim=1
                )
            globals_ = {
                s: samples[s] for s in model.latent_sites if s not in set(model.weight_sites)
            }
            likelihood = model.likelihood
            distribution = likelihood(output, **globals_)
            if likelihood.task == "classification":
                params = {"probs": distribution.probs}
            else:
                mean, variance = likelihood.moments(output, **globals_)
                params = {"mean": mean, "variance": variance}
    finally:
        model.train(was_training)
    return Prediction(likelihood.task, output, distribution, params)
