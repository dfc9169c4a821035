"""Tests of :mod:`bayesdl.guides`: the mean-field guide's sites, initialisation and analytic KL,
mean-field SVI against the exact posterior of Bayesian linear regression, and the low-rank
guide."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal

from bayesdl.guides import MeanFieldNormal, init_from_network, low_rank
from bayesdl.inference import fit
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP
from bayesdl.priors import laplace, normal
from tests.common import assert_close, conjugate_problem

SITES = ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "sigma")


def small_model(prior=None):
    torch.manual_seed(0)
    return BNN(
        MLP(2, 1, hidden=(3,), activation="tanh"),
        Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)),
        prior=normal(1.0) if prior is None else prior,
    )


def xy(n=8):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=gen), torch.randn(n, generator=gen)


def normal_kl(mq, sq, mp, sp):
    """KL(N(mq, sq^2) || N(mp, sp^2)), elementwise."""
    return (sp / sq).log() + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5


# --- MeanFieldNormal --------------------------------------------------------------------------


def test_meanfield_sites_are_the_distributions_themselves():
    model = small_model()
    guide = MeanFieldNormal(model)
    x, y = xy()
    tr = poutine.trace(guide).get_trace(x, y)
    sites = [n for n, s in tr.nodes.items() if s["type"] == "sample"]
    assert sites == list(SITES)  # no auxiliary "_unconstrained" sites, unlike AutoNormal
    for name in SITES[:-1]:
        fn = tr.nodes[name]["fn"]
        assert isinstance(fn, dist.Independent)
        assert isinstance(fn.base_dist, dist.Normal)
        assert fn.event_shape == tr.nodes[name]["value"].shape
    # sigma > 0: the Normal pushed through exp, a LogNormal.
    sigma = tr.nodes["sigma"]["fn"]
    assert isinstance(sigma, torch.distributions.TransformedDistribution)
    assert bool(sigma.support.check(tr.nodes["sigma"]["value"]))
    assert tr.nodes["sigma"]["value"] > 0


def test_meanfield_starts_at_the_network_initialisation():
    model = small_model()
    guide = MeanFieldNormal(model, init_scale=0.05)
    guide(*xy())
    for name, value in model.initial_values().items():
        loc, scale = guide._get_loc_and_scale(name)
        assert_close(loc, value)
        assert_close(scale, torch.full_like(value, 0.05), rtol=1e-4)
    # sigma starts near the prior median exp(-1) (a 15-draw sample median, on the log scale).
    loc, scale = guide._get_loc_and_scale("sigma")
    assert abs(float(loc.detach()) + 1.0) < 1.0
    assert_close(scale, torch.tensor(0.05), rtol=1e-4)


def test_init_from_network_and_explicit_init():
    model = small_model()
    init = init_from_network(model)
    site = {"name": "net.0.bias", "fn": model.priors()["net.0.bias"], "is_observed": False}
    assert_close(init(site), model.net[0].bias)
    # An explicit init_loc_fn overrides the network.
    guide = MeanFieldNormal(
        model,
        init_loc_fn=pyro.infer.autoguide.init_to_value(
            values={n: torch.zeros_like(v) for n, v in model.initial_values().items()}
            | {"sigma": torch.tensor(0.5)}
        ),
    )
    guide(*xy())
    assert_close(guide._get_loc_and_scale("net.0.weight")[0], torch.zeros(3, 2))
    assert_close(guide._get_loc_and_scale("sigma")[0], torch.tensor(0.5).log(), atol=1e-6)


def test_meanfield_rejects_bad_init_scale():
    with pytest.raises(ValueError, match="init_scale"):
        MeanFieldNormal(small_model(), init_scale=0.0)
    with pytest.raises(TypeError, match="init_scale"):
        MeanFieldNormal(small_model(), init_scale="small")


def _loss_and_sample(model, guide, x, y, seed, elbo):
    """The ELBO loss at a seed, and the guide sample that loss used."""
    guide(x, y)  # set up the prototype first: it runs the model and consumes random numbers
    pyro.set_rng_seed(seed)
    loss = elbo.loss(model, guide, x, y)
    pyro.set_rng_seed(seed)
    guide_trace = poutine.trace(guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    return loss, guide_trace, model_trace


def test_trace_meanfield_elbo_uses_the_closed_form_kl():
    """loss = -log p(y | w_sample) + sum_sites KL(q || p) exactly, with the KL in closed form:
    Normal against Normal for the weights, LogNormal against LogNormal (a Normal KL on the log
    scale) for sigma."""
    model = small_model()
    guide = MeanFieldNormal(model, init_scale=0.3)
    x, y = xy()
    loss, _, model_trace = _loss_and_sample(model, guide, x, y, 11, TraceMeanField_ELBO())
    model_trace.compute_log_prob()
    log_lik = model_trace.nodes["obs"]["log_prob_sum"]
    kl = torch.tensor(0.0)
    for name in SITES[:-1]:
        loc, scale = guide._get_loc_and_scale(name)
        kl = kl + normal_kl(loc, scale, torch.zeros(()), torch.ones(())).sum()
    loc, scale = guide._get_loc_and_scale("sigma")
    kl = kl + normal_kl(loc, scale, torch.tensor(-1.0), torch.tensor(1.0))
    assert_close(loss, float((-log_lik + kl).detach()), atol=1e-4, rtol=1e-5)


def normal_laplace_kl(m, s, b):
    """KL(N(m, s^2) || Laplace(0, b)) = log(2b) + E|w| / b - log(s sqrt(2 pi e)), with
    E|w| = s sqrt(2/pi) exp(-m^2 / 2s^2) + m (1 - 2 Phi(-m / s))."""
    abs_mean = s * math.sqrt(2 / math.pi) * torch.exp(-(m**2) / (2 * s**2)) + m * (
        1 - 2 * torch.special.ndtr(-m / s)
    )
    return math.log(2 * b) + abs_mean / b - torch.log(s * math.sqrt(2 * math.pi * math.e))


def test_trace_meanfield_elbo_closed_form_kl_for_laplace_prior():
    """torch registers KL(Normal || Laplace), so a Laplace prior also gets the closed form."""
    model = small_model(prior=laplace(0.5))
    guide = MeanFieldNormal(model, init_scale=0.3)
    x, y = xy()
    loss, _, model_trace = _loss_and_sample(model, guide, x, y, 12, TraceMeanField_ELBO())
    model_trace.compute_log_prob()
    kl = torch.tensor(0.0)
    for name in SITES[:-1]:
        loc, scale = guide._get_loc_and_scale(name)
        kl = kl + normal_laplace_kl(loc, scale, 0.5).sum()
    loc, scale = guide._get_loc_and_scale("sigma")
    kl = kl + normal_kl(loc, scale, torch.tensor(-1.0), torch.tensor(1.0))
    log_lik = model_trace.nodes["obs"]["log_prob_sum"]
    assert_close(loss, float((-log_lik + kl).detach()), atol=1e-4, rtol=1e-5)


def test_trace_meanfield_elbo_falls_back_to_sampled_kl_without_closed_form():
    """No KL(Normal || StudentT) is registered: those sites use log q(w) - log p(w) at the
    sample, the others keep their closed form."""
    model = small_model(prior=dist.StudentT(3.0, 0.0, 0.5))
    guide = MeanFieldNormal(model, init_scale=0.3)
    x, y = xy()
    loss, guide_trace, model_trace = _loss_and_sample(model, guide, x, y, 12, TraceMeanField_ELBO())
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    log_p = model_trace.nodes["obs"]["log_prob_sum"]
    log_q = torch.tensor(0.0)
    for name in SITES[:-1]:
        log_p = log_p + model_trace.nodes[name]["log_prob_sum"]
        log_q = log_q + guide_trace.nodes[name]["log_prob_sum"]
    loc, scale = guide._get_loc_and_scale("sigma")
    kl_sigma = normal_kl(loc, scale, torch.tensor(-1.0), torch.tensor(1.0))
    assert_close(loss, float((-(log_p - log_q) + kl_sigma).detach()), atol=1e-4, rtol=1e-5)


def test_meanfield_with_trace_elbo_matches_the_single_sample_estimate():
    model = small_model()
    guide = MeanFieldNormal(model, init_scale=0.3)
    x, y = xy()
    loss, guide_trace, model_trace = _loss_and_sample(model, guide, x, y, 13, Trace_ELBO())
    expected = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
    assert_close(loss, float(expected.detach()), atol=1e-4, rtol=1e-5)


def test_meanfield_handles_local_latent_sites_in_a_plate():
    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(w * x, 1.0))
            pyro.sample("obs", dist.Normal(z, 0.1), obs=y)

    guide = MeanFieldNormal(model)
    x = torch.arange(5.0)
    tr = poutine.trace(guide).get_trace(x, x)
    assert tr.nodes["z"]["value"].shape == (5,)
    assert [f.name for f in tr.nodes["z"]["cond_indep_stack"]] == ["data"]
    assert tr.nodes["w"]["value"].shape == ()
    fit(model, guide, x, x, num_steps=3, loss=TraceMeanField_ELBO(), progress=False)


# --- mean-field SVI against the exact posterior -----------------------------------------------


@pytest.mark.slow
def test_meanfield_svi_on_conjugate_regression():
    """Mean-field VI of a Gaussian posterior N(m, S) has the exact means and variances 1 / A_ii
    (A = S^-1), which are <= S_ii and here much smaller, because the two weights are strongly
    correlated (-0.90). Observed (seed 0, 2000 steps, lr 0.05 decaying to 5e-4): mean errors
    <= 0.06 posterior sd, variances 0.09 / 0.10 / 0.52 of the exact ones and 0.96-1.05 of
    1 / A_ii; ~4-7 s."""
    model, x, y, mean, cov, precision = conjugate_problem()
    guide = MeanFieldNormal(model)
    steps = 2000
    fit(
        model,
        guide,
        x,
        y,
        num_steps=steps,
        optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.01 ** (1 / steps)}),
        loss=TraceMeanField_ELBO(),
        seed=0,
        progress=False,
    )
    w_loc, w_scale = guide._get_loc_and_scale("net.weight")
    b_loc, b_scale = guide._get_loc_and_scale("net.bias")
    loc = torch.cat([w_loc.detach().reshape(-1), b_loc.detach()]).double()
    var = torch.cat([w_scale.detach().reshape(-1), b_scale.detach()]).double() ** 2
    sd = cov.diagonal().sqrt()
    assert bool(((loc - mean).abs() < 0.15 * sd).all()), (loc - mean) / sd
    # The direction: mean-field under-estimates every marginal variance of a correlated
    # posterior; clearly so for the correlated weights.
    exact = cov.diagonal()
    assert bool((var <= exact).all()), var / exact
    assert bool((var[:2] < 0.3 * exact[:2]).all()), var / exact
    # And the amount: the mean-field optimum 1 / A_ii, to 25% (SVI noise).
    optimum = 1 / precision.diagonal()
    assert bool(((var / optimum - 1).abs() < 0.25).all()), var / optimum


# --- low-rank guide ---------------------------------------------------------------------------


def test_low_rank_guide_starts_at_the_network():
    model = small_model()
    guide = low_rank(model, rank=2, init_scale=0.02)
    assert isinstance(guide, AutoLowRankMultivariateNormal)
    x, y = xy()
    tr = poutine.trace(guide).get_trace(x, y)
    for name in SITES:
        assert name in tr.nodes
    assert guide.cov_factor.shape == (3 * 2 + 3 + 3 + 1 + 1, 2)
    # The joint location starts at the network's weights (sigma: a prior median, log scale).
    init = model.initial_values()
    flat = torch.cat([init[n].reshape(-1) for n in SITES[:-1]])
    assert_close(guide.loc[:-1], flat)
    assert abs(float(guide.loc[-1].detach()) + 1.0) < 1.0
    samples = pyro.infer.Predictive(guide, num_samples=4, parallel=True)(x, None)
    assert samples["net.0.weight"].shape == (4, 3, 2)
    assert bool((samples["sigma"] > 0).all())


def test_low_rank_rejects_bad_arguments():
    model = small_model()
    with pytest.raises(ValueError, match="rank"):
        low_rank(model, rank=0)
    with pytest.raises(TypeError, match="rank"):
        low_rank(model, rank=2.5)
    with pytest.raises(ValueError, match="init_scale"):
        low_rank(model, init_scale=-1.0)


def test_guides_work_on_a_plain_pyro_model():
    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(x @ w, 0.5), obs=y)

    x, y = torch.randn(6, 2), torch.randn(6)
    for guide in (MeanFieldNormal(model), low_rank(model, rank=1)):
        tr = poutine.trace(guide).get_trace(x, y)
        assert tr.nodes["w"]["value"].shape == (2,)
