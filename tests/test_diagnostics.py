"""Tests of :mod:`bayesdl.diagnostics`: ArviZ InferenceData with the same names and dims for MCMC
and SVI, netCDF round trips, and convergence summaries checked against ArviZ on known chains.

Convergence of NUTS on a BNN at the default settings is tested in ``test_mcmc.py`` (it shares
one expensive run with the gap test there)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from bayesdl.diagnostics import convergence_summary, to_inference_data
from bayesdl.guides import MeanFieldNormal
from bayesdl.inference.mcmc import MCMCResult, run_mcmc
from bayesdl.io import save_inference_data
from bayesdl.likelihoods import Categorical, Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP
from bayesdl.priors import normal
from tests.common import assert_close

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

SITES = ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "sigma")


def model_and_data(n=12):
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, n).unsqueeze(-1)
    y = torch.sin(x.squeeze(-1)) + 0.1 * torch.randn(n)
    model = BNN(
        MLP(1, 1, hidden=(3,)), Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)), prior=normal(1.0)
    )
    return model, x, y


def fake_mcmc(model, chains=2, draws=30, seed=0):
    """An MCMCResult with prior draws in place of a sampler's (structure tests need no sampling)."""
    gen = torch.Generator().manual_seed(seed)
    samples = {
        site: torch.randn(chains, draws, *prior.event_shape, generator=gen)
        for site, prior in model.priors().items()
    }
    if "sigma" in model.latent_sites:
        samples["sigma"] = 0.1 + torch.rand(chains, draws, generator=gen)
    divergences = torch.zeros(chains, draws, dtype=torch.bool)
    divergences[0, 3] = divergences[1, 5] = divergences[1, 6] = True
    return MCMCResult(
        samples=samples,
        divergences=divergences,
        step_size=[0.1] * chains,
        acceptance_rate=[0.9] * chains,
        num_gradients=[100] * chains,
        wall_time=1.0,
    )


def fitted_guide(model, x, y):
    guide = MeanFieldNormal(model, init_scale=0.1)
    guide(x, y)
    return guide


# --- InferenceData structure ------------------------------------------------------------------


def test_mcmc_and_svi_inference_data_share_names_and_dims():
    model, x, y = model_and_data()
    mcmc = to_inference_data(model, fake_mcmc(model), x, y)
    svi = to_inference_data(model, fitted_guide(model, x, y), x, y, num_samples=40)
    assert set(mcmc.posterior.data_vars) == set(svi.posterior.data_vars) == {*SITES, "f"}
    for name in (*SITES, "f"):
        assert mcmc.posterior[name].dims == svi.posterior[name].dims
    assert mcmc.posterior["f"].dims == ("chain", "draw", "obs_id")
    assert mcmc.posterior["sigma"].dims == ("chain", "draw")
    assert mcmc.posterior["net.0.weight"].shape == (2, 30, 3, 1)
    assert svi.posterior["net.0.weight"].shape == (1, 40, 3, 1)
    assert dict(mcmc.posterior.sizes)["obs_id"] == 12
    assert (svi.posterior.sizes["chain"], svi.posterior.sizes["draw"]) == (1, 40)
    for idata in (mcmc, svi):
        assert "posterior_predictive" in idata.groups()
        assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "obs_id")
        assert "observed_data" in idata.groups()
        np.testing.assert_array_equal(idata.observed_data["obs"].values, y.numpy())
    assert "sample_stats" in mcmc.groups()
    assert "sample_stats" not in svi.groups()


def test_mcmc_inference_data_values():
    model, x, _ = model_and_data()
    result = fake_mcmc(model)
    idata = to_inference_data(model, result, x)
    assert "observed_data" not in idata.groups()
    np.testing.assert_array_equal(idata.posterior["sigma"].values, result.samples["sigma"].numpy())
    np.testing.assert_array_equal(
        idata.sample_stats["diverging"].values, result.divergences.numpy()
    )
    assert idata.sample_stats["diverging"].dims == ("chain", "draw")
    # f[c, d] is the network's output under draw d of chain c.
    for c, d in ((0, 0), (1, 17)):
        weights = {s: result.samples[s][c, d] for s in SITES[:-1]}
        f = model.network_output(x, weights).squeeze(-1).detach()
        assert_close(torch.as_tensor(idata.posterior["f"].values[c, d]), f, atol=1e-6)


def test_real_mcmc_run_converts():
    model, x, y = model_and_data()
    result = run_mcmc(
        model,
        x,
        y,
        num_samples=10,
        warmup_steps=10,
        num_chains=2,
        max_tree_depth=3,
        seed=0,
        progress=False,
    )
    idata = to_inference_data(model, result, x, y)
    assert (idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]) == (2, 10)
    assert int(idata.sample_stats["diverging"].sum()) == int(result.divergences.sum())
    summary = convergence_summary(idata)
    assert set(summary) == {"max_rhat", "min_ess_bulk", "min_ess_tail", "divergences"}


def test_sample_dict_posterior_is_one_chain():
    model, x, y = model_and_data()
    flat = fake_mcmc(model).flat()
    idata = to_inference_data(model, flat, x, y)
    assert (idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]) == (1, 60)
    np.testing.assert_array_equal(idata.posterior["sigma"].values[0], flat["sigma"].numpy())
    # num_samples thins a sample dict evenly (the default, 500, keeps all of these 60).
    assert to_inference_data(model, flat, x, num_samples=20).posterior.sizes["draw"] == 20


def test_classification_inference_data():
    torch.manual_seed(0)
    model = BNN(MLP(2, 3, hidden=(4,)), Categorical(3), prior=normal(1.0))
    x = torch.randn(5, 2)
    labels = torch.tensor([0, 1, 2, 1, 0])
    idata = to_inference_data(model, fake_mcmc(model, draws=8), x, labels)
    assert idata.posterior["probs"].dims == ("chain", "draw", "obs_id", "class")
    assert idata.posterior["probs"].shape == (2, 8, 5, 3)
    assert_close(torch.as_tensor(idata.posterior["probs"].values.sum(-1)), torch.ones(2, 8, 5))
    assert "f" not in idata.posterior
    assert set(np.unique(idata.posterior_predictive["obs"].values)) <= {0, 1, 2}


def test_netcdf_round_trip(tmp_path):
    model, x, y = model_and_data()
    idata = to_inference_data(model, fake_mcmc(model), x, y)
    path = save_inference_data(tmp_path / "sub" / "idata.nc", idata)
    assert path == tmp_path / "sub" / "idata.nc"
    assert sorted(p.name for p in path.parent.iterdir()) == ["idata.nc"]  # no temp file left
    back = az.from_netcdf(path)
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        for name, value in idata[group].data_vars.items():
            np.testing.assert_array_equal(back[group][name].values, value.values)
            assert back[group][name].dims == value.dims


# --- convergence summary ----------------------------------------------------------------------


def _idata_from_chains(chains: np.ndarray, diverging: np.ndarray | None = None):
    groups = {"posterior": {"sigma": chains, "f": np.stack([chains, -chains], axis=-1)}}
    if diverging is not None:
        groups["sample_stats"] = {"diverging": diverging}
    return az.from_dict(**groups, dims={"f": ["obs_id"]})


def test_convergence_summary_against_arviz():
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(4, 500))
    idata = _idata_from_chains(mixed, diverging=np.zeros((4, 500), dtype=bool))
    summary = convergence_summary(idata)
    assert summary["max_rhat"] == pytest.approx(float(az.rhat(idata.posterior)["sigma"]))
    assert summary["max_rhat"] < 1.01
    ess = az.ess(idata.posterior, method="bulk")
    assert summary["min_ess_bulk"] == pytest.approx(min(float(ess["sigma"]), float(ess["f"].min())))
    assert summary["min_ess_bulk"] > 1000  # iid draws: ESS ~ 2000
    assert summary["divergences"] == 0

    # Chains stuck at different places: R-hat far above 1.
    stuck = mixed + np.array([0.0, 0.0, 3.0, 3.0])[:, None]
    diverging = np.zeros((4, 500), dtype=bool)
    diverging[1, :5] = True
    summary = convergence_summary(_idata_from_chains(stuck, diverging))
    assert summary["max_rhat"] > 1.5
    assert summary["divergences"] == 5


def test_convergence_summary_options():
    rng = np.random.default_rng(1)
    one_chain = _idata_from_chains(rng.normal(size=(1, 100)))
    summary = convergence_summary(one_chain)
    assert math.isnan(summary["max_rhat"])
    assert summary["divergences"] == 0  # no sample_stats group
    assert convergence_summary(one_chain, var_names=["sigma"])["min_ess_bulk"] > 0
    with pytest.raises(ValueError, match=r"\['weights'\]"):
        convergence_summary(one_chain, var_names=["weights"])
