"""Chains in worker processes (``run_mcmc(chain_method="parallel")``): the same draws as running
them one after another, chain identity kept through ArviZ, and a clean run on one CPU."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pyro.distributions as dist
import pytest
import torch

import bayesdl.inference.mcmc as mcmc
from bayesdl import data
from bayesdl.diagnostics import to_inference_data
from bayesdl.inference.mcmc import SamplerWarning, run_mcmc
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP

SETTINGS = dict(
    num_chains=2,
    num_samples=20,
    warmup_steps=20,
    max_tree_depth=4,
    map_steps=50,
    seed=7,
    progress=False,
)


def _problem() -> tuple[BNN, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    d = data.homoscedastic(50, test_fraction=0.0, seed=0)
    model = BNN(MLP(1, 1, hidden=(5,)), Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)), "normal")
    return model, d.x_train, d.y_train


def _run(model: BNN, x: torch.Tensor, y: torch.Tensor, method: str) -> mcmc.MCMCResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplerWarning)  # short chains: not what is tested
        return run_mcmc(model, x, y, chain_method=method, **SETTINGS)


def _assert_same_chains(a: mcmc.MCMCResult, b: mcmc.MCMCResult) -> None:
    # Exact: a forked worker at one thread runs the very same float operations, in the same
    # order, from the same seed and starting point as the parent does.
    assert set(a.samples) == set(b.samples)
    for site in a.samples:
        assert torch.equal(a.samples[site], b.samples[site]), site
    assert torch.equal(a.divergences, b.divergences)
    assert torch.equal(a.num_steps, b.num_steps)
    assert a.step_size == b.step_size
    assert a.num_gradients == b.num_gradients


@pytest.fixture(scope="module")
def runs() -> tuple[BNN, torch.Tensor, torch.Tensor, mcmc.MCMCResult, mcmc.MCMCResult]:
    model, x, y = _problem()
    sequential = _run(model, x, y, "sequential")
    parallel = _run(model, x, y, "parallel")
    return model, x, y, sequential, parallel


def test_parallel_chains_give_the_sequential_draws(runs):
    model, x, _, sequential, parallel = runs
    assert x.shape == (50, 1)
    assert parallel.num_chains == 2 and parallel.num_draws == 20
    assert parallel.settings["chain_method"] == "parallel"
    _assert_same_chains(sequential, parallel)
    # Two chains, not one chain twice: own seed, own starting point.
    assert not torch.equal(parallel.samples["sigma"][0], parallel.samples["sigma"][1])
    assert model.training  # the parent's model is left as it was


def test_parallel_chains_keep_their_identity_in_arviz(runs):
    model, x, y, _, parallel = runs
    idata = to_inference_data(model, parallel, x, y)
    assert idata.posterior.sizes["chain"] == 2
    assert idata.posterior.sizes["draw"] == 20
    for site, draws in parallel.samples.items():
        values = idata.posterior[site].values
        assert values.shape == tuple(draws.shape), site
        for chain in range(2):
            np.testing.assert_array_equal(values[chain], draws[chain].numpy(), err_msg=site)
    np.testing.assert_array_equal(
        idata.sample_stats["diverging"].values, parallel.divergences.numpy()
    )
    # The mean function f of chain i comes from chain i's weights (no reshuffle across chains).
    f = idata.posterior["f"].values
    assert f.shape == (2, 20, 50)
    assert not np.allclose(f[0], f[1])


@pytest.mark.parametrize("cpus", [1, None])
def test_parallel_chains_on_one_cpu(runs, monkeypatch, cpus):
    # run_mcmc sizes its pool as min(num_chains, os.cpu_count() or 1); os.cpu_count() may also
    # return None ("undetermined").
    model, x, y, sequential, _ = runs
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    seen: list[int] = []
    original = mcmc._run_parallel

    def spy(specs, workers, progress):
        seen.append(workers)
        return original(specs, workers, progress)

    monkeypatch.setattr(mcmc, "_run_parallel", spy)
    result = _run(model, x, y, "parallel")
    assert seen == []  # one core: the chains run in this process, no pool is started
    _assert_same_chains(sequential, result)
