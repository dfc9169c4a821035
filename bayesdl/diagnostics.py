"""ArviZ InferenceData for MCMC and SVI posteriors, with the same names and dims side by side.

``arviz.from_pyro`` only converts Pyro ``MCMC`` objects (and ArviZ 1.x has no Pyro converter at
all), so both kinds go through :func:`arviz.from_dict` here: the posterior group holds every
latent site and the network's mean function ``f`` at the given inputs, the posterior predictive
holds draws of ``obs``, the observed data the targets, and, for MCMC, ``sample_stats`` holds the
divergences. A BNN's weights are not identifiable (hidden units can be permuted and, for odd
activations, sign-flipped), so R-hat and ESS are meaningful on ``f`` and ``sigma``, not on raw
weights: :func:`convergence_summary` reports them there.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bayesdl._validation import check_positive
from bayesdl.inference.mcmc import MCMCResult
from bayesdl.inference.predictive import Posterior, posterior_samples, predict
from bayesdl.models import BNN

with warnings.catch_warnings():
    # ArviZ 0.2x announces its 1.0 refactor on import; bayesdl pins arviz < 1 on purpose.
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = ["convergence_summary", "plot_rank", "plot_trace", "to_inference_data"]


def _numpy(value: Tensor) -> np.ndarray:
    return value.detach().cpu().numpy()


def to_inference_data(
    model: BNN,
    posterior: MCMCResult | Posterior,
    x: Tensor,
    y: Tensor | None = None,
    *,
    num_samples: int = 500,
    seed: int | None = 0,
) -> az.InferenceData:
    """Convert a fitted posterior to ArviZ InferenceData.

    Arguments:
        model: The :class:`~bayesdl.models.BNN`.
        posterior: An :class:`~bayesdl.inference.mcmc.MCMCResult` (chains kept), a guide (one
            chain of ``num_samples`` draws) or a dict of samples ``{site: (S, ...)}``.
        x: Inputs at which to record the mean function ``f`` and predictive draws ``obs``.
        y: Observed targets at ``x`` (the ``observed_data`` group), optional.
        num_samples: Draws from a guide.
        seed: Seed for guide draws and predictive draws.

    Returns:
        InferenceData with groups ``posterior``, ``posterior_predictive``, ``observed_data`` (if
        ``y`` is given) and, for MCMC, ``sample_stats`` (``diverging``; ``n_steps`` and
        ``reached_max_treedepth`` where the run recorded them).
    """
    if isinstance(posterior, MCMCResult):
        chained = posterior.samples
        num_chains, num_draws = posterior.num_chains, posterior.num_draws
        flat = posterior.flat()
    else:
        check_positive("num_samples", num_samples, integer=True)
        flat = posterior_samples(model, posterior, x, num_samples=num_samples, seed=seed)
        num_chains = 1
        num_draws = next(iter(flat.values())).shape[0] if flat else 1
        chained = {k: v.unsqueeze(0) for k, v in flat.items()}
    if seed is not None:
        torch.manual_seed(seed)
    pred = predict(model, flat if flat else None, x, num_samples=None)
    shape = (num_chains, num_draws)
    groups: dict[str, Any] = {
        "posterior": {k: _numpy(v) for k, v in chained.items()},
        "posterior_predictive": {"obs": _numpy(pred.distribution.sample().reshape(*shape, -1))},
    }
    if model.task == "regression":
        groups["posterior"]["f"] = _numpy(pred.params["mean"].reshape(*shape, -1))
    else:
        groups["posterior"]["probs"] = _numpy(
            pred.params["probs"].reshape(*shape, *pred.params["probs"].shape[1:])
        )
    if y is not None:
        groups["observed_data"] = {"obs": _numpy(y)}
    if isinstance(posterior, MCMCResult):
        groups["sample_stats"] = {"diverging": _numpy(posterior.divergences)}
        if posterior.num_steps.numel():
            groups["sample_stats"]["n_steps"] = _numpy(posterior.num_steps)
            groups["sample_stats"]["reached_max_treedepth"] = _numpy(posterior.tree_depth_hits)
    dims = {"obs": ["obs_id"], "f": ["obs_id"], "probs": ["obs_id", "class"]}
    return az.from_dict(**groups, dims=dims)


def convergence_summary(
    idata: az.InferenceData, var_names: Sequence[str] | None = None
) -> dict[str, float]:
    """R-hat, effective sample sizes and divergences of the identifiable quantities.

    Arguments:
        idata: From :func:`to_inference_data`.
        var_names: Variables to summarise; defaults to ``sigma`` (if present) and ``f``.

    Returns:
        ``{"max_rhat", "min_ess_bulk", "min_ess_tail", "divergences"}`` over the chosen
        variables (R-hat needs at least 2 chains; NaN otherwise).

    References:
        Vehtari, A., Gelman, A., Simpson, D., Carpenter, B., & Bürkner, P.-C. (2021).
        Rank-normalization, folding, and localization: an improved R-hat for assessing
        convergence of MCMC. Bayesian Analysis, 16(2), 667-718.
    """
    post = idata.posterior
    if var_names is None:
        var_names = [v for v in ("sigma", "f") if v in post]
    missing = [v for v in var_names if v not in post]
    if missing:
        raise ValueError(f"var_names {missing} not in the posterior; it has {list(post.data_vars)}")
    num_chains = post.sizes["chain"]
    rhat = (
        max(float(az.rhat(post[var_names])[v].max()) for v in var_names)
        if num_chains > 1
        else float("nan")
    )
    ess_bulk = az.ess(post[var_names], method="bulk")
    ess_tail = az.ess(post[var_names], method="tail")
    divergences = (
        int(idata.sample_stats["diverging"].sum()) if "sample_stats" in idata.groups() else 0
    )
    return {
        "max_rhat": rhat,
        "min_ess_bulk": min(float(ess_bulk[v].min()) for v in var_names),
        "min_ess_tail": min(float(ess_tail[v].min()) for v in var_names),
        "divergences": divergences,
    }


def plot_trace(idata: az.InferenceData, var_names: Sequence[str] = ("sigma",), **kwargs: Any):
    """ArviZ trace plot (densities and traces per chain) of the chosen variables."""
    return az.plot_trace(idata, var_names=list(var_names), **kwargs)


def plot_rank(idata: az.InferenceData, var_names: Sequence[str] = ("sigma",), **kwargs: Any):
    """ArviZ rank plot: near-uniform rank histograms per chain indicate mixing chains."""
    return az.plot_rank(idata, var_names=list(var_names), **kwargs)
