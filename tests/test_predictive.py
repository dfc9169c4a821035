"""Tests of :func:`bayesdl.inference.predict`: one vectorised predictive for guides, MCMC samples
and point estimates, checked against closed forms and hand computations."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from torch import nn

from bayesdl.guides import MeanFieldNormal, low_rank
from bayesdl.inference import Prediction, posterior_samples, predict
from bayesdl.likelihoods import Categorical, Heteroscedastic, Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP
from bayesdl.priors import normal
from bayesdl.uncertainty import ClassificationUncertainty, RegressionUncertainty
from tests.common import assert_close

SITES = ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias")


def regression_model(noise_prior=True, dropout=0.0):
    torch.manual_seed(0)
    likelihood = (
        Homoscedastic(prior=dist.LogNormal(-1.0, 0.5)) if noise_prior else Homoscedastic(0.3)
    )
    return BNN(MLP(2, 1, hidden=(4,), dropout=dropout), likelihood, prior=normal(1.0))


def xy(n=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=gen), torch.randn(n, generator=gen)


def prior_samples(model, num, seed=0):
    """A dict of ``num`` draws of every latent site from the prior (a stand-in for MCMC)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for site, prior in model.priors().items():
        out[site] = torch.randn(num, *prior.event_shape, generator=gen)
    if "sigma" in model.latent_sites:
        out["sigma"] = 0.1 + torch.rand(num, generator=gen)
    return out


def ready(guide, x, y):
    """Create an autoguide's parameters with an *observed* y (as fitting does)."""
    guide(x, y)
    return guide


# --- shapes and vectorisation -----------------------------------------------------------------


def test_regression_shapes():
    model = regression_model()
    x, y = xy()
    pred = predict(model, ready(MeanFieldNormal(model), x, y), x, num_samples=7, seed=0)
    assert isinstance(pred, Prediction)
    assert pred.task == "regression"
    assert pred.num_samples == 7
    assert pred.output.shape == (7, 9, 1)
    assert pred.params["mean"].shape == (7, 9)
    assert pred.params["variance"].shape == (7, 9)
    assert pred.distribution.batch_shape == (7, 9)
    assert isinstance(pred.uncertainty, RegressionUncertainty)
    for value in (pred.mean, pred.aleatoric, pred.epistemic, pred.total):
        assert value.shape == (9,)
    assert pred.sample().shape == (7, 9)
    assert pred.sample(3).shape == (21, 9)
    assert pred.log_prob(y).shape == (9,)


def test_classification_and_heteroscedastic_shapes():
    torch.manual_seed(0)
    x, _ = xy()
    clf = BNN(MLP(2, 3, hidden=(4,)), Categorical(3), prior=normal(1.0))
    pred = predict(clf, prior_samples(clf, 5), x, num_samples=None)
    assert pred.output.shape == (5, 9, 3)
    assert pred.params["probs"].shape == (5, 9, 3)
    assert_close(pred.params["probs"].sum(-1), torch.ones(5, 9))
    assert isinstance(pred.uncertainty, ClassificationUncertainty)
    assert pred.mean.shape == (9, 3)
    assert pred.total.shape == pred.aleatoric.shape == pred.epistemic.shape == (9,)
    assert pred.sample(2).shape == (10, 9)

    het = BNN(MLP(2, 2, hidden=(4,)), Heteroscedastic(min_scale=0.01), prior=normal(1.0))
    pred = predict(het, prior_samples(het, 6), x, num_samples=None)
    assert pred.output.shape == (6, 9, 2)
    scale = torch.nn.functional.softplus(pred.output[..., 1]) + 0.01
    assert_close(pred.params["variance"], scale**2, rtol=1e-5)
    assert_close(pred.params["mean"], pred.output[..., 0])


def test_all_samples_pass_through_the_network_in_one_call():
    """No Python loop over samples: the network's forward runs once per chunk of inputs,
    whatever the number of posterior samples."""
    model = regression_model()
    x, y = xy(n=10)
    calls = []
    assert model.is_mlp  # an MLP runs as broadcasting matmuls over the sample dimension
    batched = model._mlp_output

    def spy(inputs, params):
        calls.append(inputs.shape)
        return batched(inputs, params)

    model._mlp_output = spy
    samples = prior_samples(model, 50)
    full = predict(model, samples, x, num_samples=None)
    assert len(calls) == 1
    assert full.output.shape == (50, 10, 1)
    calls.clear()
    chunked = predict(model, samples, x, num_samples=None, chunk_size=4)
    assert len(calls) == 3  # 4 + 4 + 2 rows
    assert chunked.output.shape == (50, 10, 1)
    assert_close(chunked.output, full.output, atol=1e-6)
    assert_close(chunked.log_prob(y), full.log_prob(y), atol=1e-5)
    for name in ("mean", "variance"):
        assert_close(chunked.params[name], full.params[name], atol=1e-6)


def test_chunking_a_guide_gives_the_same_draws():
    model = regression_model()
    x, y = xy(n=10)
    guide = ready(MeanFieldNormal(model, init_scale=0.3), x, y)
    full = predict(model, guide, x, num_samples=20, seed=5)
    chunked = predict(model, guide, x, num_samples=20, seed=5, chunk_size=3)
    assert_close(chunked.output, full.output, atol=1e-6)
    assert_close(chunked.epistemic, full.epistemic, atol=1e-6)


# --- every posterior kind ---------------------------------------------------------------------


def test_meanfield_predictive_matches_the_closed_form():
    """For a linear network under a fully factorised Normal q, f(x) = x w + b is Normal with mean
    x m_w + m_b and variance sum_j x_j^2 s_j^2 + s_b^2; the noise is known."""
    torch.manual_seed(0)
    model = BNN(nn.Linear(2, 1), Homoscedastic(sigma=0.3, learn=False), prior=normal(1.0))
    x, y = xy(n=6)
    guide = ready(MeanFieldNormal(model, init_scale=0.5), x, y)
    m_w, s_w = (t.detach() for t in guide._get_loc_and_scale("net.weight"))
    m_b, s_b = (t.detach() for t in guide._get_loc_and_scale("net.bias"))
    pred = predict(model, guide, x, num_samples=20000, seed=0)
    mean = (x @ m_w.T + m_b).squeeze(-1)
    var = (x.square() @ s_w.square().T + s_b.square()).squeeze(-1)
    # Monte Carlo: sd of the mean estimate sqrt(var / S) <= 0.006; relative sd of a variance
    # estimate sqrt(2 / S) = 1%.
    assert_close(pred.mean, mean, atol=0.03, rtol=0)
    assert_close(pred.epistemic, var, rtol=0.06, atol=0)
    assert_close(pred.aleatoric, torch.full((6,), 0.09), rtol=1e-5)
    assert_close(pred.total, var + 0.09, rtol=0.06, atol=0)


def test_autonormal_and_low_rank_guides():
    model = regression_model()
    x, y = xy()
    values = {**model.initial_values(), "sigma": torch.tensor(0.25)}
    auto = ready(AutoNormal(model, init_loc_fn=init_to_value(values=values), init_scale=0.2), x, y)
    pred = predict(model, auto, x, num_samples=4000, seed=0)
    assert pred.output.shape == (4000, 9, 1)
    # Around the network's own output; noise variance E[sigma^2] of a LogNormal(log 0.25, 0.2).
    assert_close(pred.mean, model.net(x).detach().squeeze(-1), atol=0.1, rtol=0)
    assert_close(pred.aleatoric, torch.full((9,), 0.25**2 * math.exp(2 * 0.2**2)), rtol=0.03)
    assert bool((pred.epistemic > 0).all())

    pyro.clear_param_store()
    guide = ready(low_rank(model, rank=2, init_scale=0.05), x, y)
    pred = predict(model, guide, x, num_samples=30, seed=0)
    assert pred.output.shape == (30, 9, 1)
    assert bool(torch.isfinite(pred.total).all())
    assert bool((pred.epistemic > 0).all())


def test_autodelta_has_no_epistemic_uncertainty():
    model = regression_model()
    x, y = xy()
    values = {**model.initial_values(), "sigma": torch.tensor(0.4)}
    guide = ready(AutoDelta(model, init_loc_fn=init_to_value(values=values)), x, y)
    pred = predict(model, guide, x, num_samples=5, seed=0)
    assert pred.output.shape == (5, 9, 1)
    assert_close(pred.epistemic, torch.zeros(9), atol=1e-10)
    assert_close(pred.mean, model.net(x).detach().squeeze(-1), atol=1e-6)
    assert_close(pred.aleatoric, torch.full((9,), 0.16), rtol=1e-5)


def test_sample_dict_is_used_sample_by_sample_and_thinned_evenly():
    model = regression_model()
    x, _ = xy()
    samples = prior_samples(model, 11)
    pred = predict(model, samples, x, num_samples=None)
    assert pred.num_samples == 11
    for s in (0, 5, 10):
        weights = {site: samples[site][s] for site in SITES}
        f = model.network_output(x, weights).squeeze(-1)
        assert_close(pred.params["mean"][s], f, atol=1e-6)
        assert_close(pred.params["variance"][s], samples["sigma"][s].square().expand(9))
    # Thinning picks evenly spaced draws, first and last included: 0, 5, 10.
    thinned = predict(model, samples, x, num_samples=3)
    assert_close(thinned.params["mean"], pred.params["mean"][[0, 5, 10]])
    kept = posterior_samples(model, samples, x, num_samples=3)
    assert torch.equal(kept["sigma"], samples["sigma"][[0, 5, 10]])
    # Asking for more draws than there are keeps them all; extra sites are ignored.
    assert (
        predict(model, {**samples, "other": torch.zeros(11)}, x, num_samples=50).num_samples == 11
    )


def test_point_estimate_model_has_one_sample():
    torch.manual_seed(0)
    model = BNN(MLP(2, 1, hidden=(4,)), Homoscedastic(sigma=0.3), prior=None)
    x, y = xy()
    pred = predict(model, None, x)
    assert pred.num_samples == 1
    assert pred.output.shape == (1, 9, 1)
    assert_close(pred.mean, model.net(x).detach().squeeze(-1))
    assert_close(pred.epistemic, torch.zeros(9))
    assert_close(pred.aleatoric, torch.full((9,), 0.09), rtol=1e-5)
    expected = dist.Normal(model.net(x).detach().squeeze(-1), 0.3).log_prob(y)
    assert_close(pred.log_prob(y), expected, atol=1e-5)


# --- log density of the predictive mixture ----------------------------------------------------


def test_log_prob_is_a_log_mean_exp_over_samples():
    model = regression_model()
    x, y = xy()
    samples = prior_samples(model, 8)
    pred = predict(model, samples, x, num_samples=None)
    mu = pred.params["mean"].double()
    sigma = samples["sigma"].double().unsqueeze(-1)
    log_n = -0.5 * ((y.double() - mu) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)
    by_hand = torch.log(log_n.exp().mean(0))
    assert_close(pred.log_prob(y), by_hand, atol=1e-5)


def test_classification_log_prob_is_the_log_of_the_mean_probability():
    torch.manual_seed(0)
    model = BNN(MLP(2, 3, hidden=(4,)), Categorical(3), prior=normal(1.0))
    x, _ = xy()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    pred = predict(model, prior_samples(model, 6), x, num_samples=None)
    probs = torch.softmax(pred.output.double(), dim=-1)
    by_hand = probs.mean(0).gather(-1, labels.unsqueeze(-1)).squeeze(-1).log()
    assert_close(pred.log_prob(labels), by_hand, atol=1e-5)
    assert_close(pred.mean, probs.mean(0), atol=1e-6)


# --- seeds, modes ---------------------------------------------------------------------------


def test_seed_makes_guide_draws_reproducible():
    model = regression_model()
    x, y = xy()
    guide = ready(MeanFieldNormal(model, init_scale=0.3), x, y)
    a = predict(model, guide, x, num_samples=10, seed=1)
    b = predict(model, guide, x, num_samples=10, seed=1)
    c = predict(model, guide, x, num_samples=10, seed=2)
    assert torch.equal(a.output, b.output)
    assert not torch.equal(a.output, c.output)


def test_dropout_is_off_and_training_mode_restored():
    model = regression_model(dropout=0.5)
    x, y = xy()
    values = {**model.initial_values(), "sigma": torch.tensor(0.4)}
    guide = ready(AutoDelta(model, init_loc_fn=init_to_value(values=values)), x, y)
    model.train()
    pred = predict(model, guide, x, num_samples=6, seed=0)
    assert model.training
    # Identical weights in every sample and no dropout noise: no spread at all.
    assert_close(pred.epistemic, torch.zeros(9), atol=1e-10)
    model.eval()
    predict(model, guide, x, num_samples=2, seed=0)
    assert not model.training


# --- bad input --------------------------------------------------------------------------------


def test_bad_input_is_named():
    model = regression_model()
    x, y = xy()
    samples = prior_samples(model, 4)
    with pytest.raises(TypeError, match="model"):
        predict(model.net, samples, x)
    with pytest.raises(TypeError, match="x"):
        predict(model, samples, x.numpy())
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        predict(model, samples, bad)
    with pytest.raises(ValueError, match="x is empty"):
        predict(model, samples, x[:0])
    guide = ready(MeanFieldNormal(model), x, y)
    with pytest.raises(ValueError, match="num_samples"):
        predict(model, guide, x, num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        predict(model, guide, x, num_samples=2.5)
    with pytest.raises(ValueError, match="chunk_size"):
        predict(model, samples, x, chunk_size=0)
    missing = {k: v for k, v in samples.items() if k != "sigma"}
    with pytest.raises(ValueError, match=r"lack the model's latent sites \['sigma'\]"):
        predict(model, missing, x)
    ragged = {**samples, "sigma": samples["sigma"][:3]}
    with pytest.raises(ValueError, match="leading"):
        predict(model, ragged, x)
    with pytest.raises(ValueError, match="pass a guide or samples"):
        predict(model, None, x)
    with pytest.raises(TypeError, match="posterior"):
        predict(model, 3, x)


def test_guide_missing_a_site_is_reported():
    model = regression_model()
    x, y = xy()
    other = BNN(MLP(2, 1, hidden=(4,)), Homoscedastic(0.3), prior=normal(1.0))
    guide = ready(MeanFieldNormal(other), x, y)  # no "sigma" site
    with pytest.raises(ValueError, match=r"latent sites \['sigma'\]"):
        predict(model, guide, x, num_samples=2)
    # The guide was traced on its own model only.
    assert "sigma" not in poutine.trace(guide).get_trace(x, y).nodes


class _Residual(nn.Module):
    """Not an MLP (a skip connection): the predictive falls back to vmap over functional_call."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(1, 6)
        self.outer = nn.Linear(6, 1)

    def forward(self, x):
        return self.outer(torch.tanh(self.inner(x))) + x


@pytest.mark.parametrize("net", ["mlp", "residual"])
def test_vectorised_outputs_equal_a_loop_of_plain_forwards(net):
    torch.manual_seed(0)
    module = MLP(1, 1, hidden=(6,)) if net == "mlp" else _Residual()
    model = BNN(module, Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)))
    assert model.is_mlp == (net == "mlp")
    samples = prior_samples(model, 7)
    x = torch.linspace(-2, 2, 9).unsqueeze(-1)
    pred = predict(model, samples, x, num_samples=None)
    for s in range(7):
        weights = {name: samples[name][s] for name in model.weight_sites}
        with torch.no_grad():
            expected = torch.func.functional_call(
                model.net, {k[4:]: v for k, v in weights.items()}, (x,)
            )
        assert_close(pred.output[s], expected, atol=1e-6)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("bayesian", ["all", "last"])
def test_per_sample_forwards_equal_the_batched_pass(flat, bayesian):
    """Above ``LOOP_MIN_ROWS`` inputs an MLP runs its samples as plain forwards; the outputs
    equal the batched broadcasting pass (which smaller inputs take) to float tolerance."""
    torch.manual_seed(0)
    net = MLP(2, 3, hidden=(16, 8), activation="relu")
    model = BNN(net, Categorical(3), prior="normal", bayesian=bayesian, flat=flat)
    rows = BNN.LOOP_MIN_ROWS + 5
    x = torch.randn(rows, 2)
    samples = {site: torch.randn(7, *prior.event_shape) for site, prior in model.priors().items()}
    with torch.no_grad():
        assert model.loops_over_samples(rows) and not model.loops_over_samples(rows - 10)
        looped = model.network_output(x, samples)
        batched = torch.cat([model.network_output(xc, samples) for xc in x.split(rows - 10)], dim=1)
    assert looped.shape == (7, rows, 3)
    assert_close(looped, batched, rtol=1e-5, atol=1e-5)
    with torch.enable_grad():
        assert not model.loops_over_samples(rows)
    pred = predict(model, samples, x, num_samples=None)
    assert_close(pred.output, looped, rtol=1e-6, atol=1e-6)


def test_a_guide_of_another_network_is_refused():
    """Guides read their parameters from Pyro's global store by name: a guide built for a
    second, smaller network without clearing the store picks up the first one's parameters.
    The predictive must refuse the mismatched draws instead of using them silently."""
    x, y = torch.randn(50, 1), torch.randn(50)

    def make(hidden):
        return BNN(MLP(1, 1, hidden=hidden), Homoscedastic(sigma=0.1, learn=False), prior="normal")

    pyro.clear_param_store()
    big = make((8, 8))
    guide = MeanFieldNormal(big)
    guide(x, y)
    small = make((4, 4))
    stale = MeanFieldNormal(small)
    stale(x, y)
    with pytest.raises(ValueError, match=r"net\.\d\.weight.*clear_param_store"):
        predict(small, stale, x, num_samples=3)
    with pytest.raises(ValueError, match="another network"):
        predict(small, posterior_samples(big, guide, x, num_samples=3), x, num_samples=None)


def test_a_guide_that_was_never_set_up_is_refused_with_a_clear_error():
    model = BNN(MLP(2, 3, hidden=(4,)), Categorical(3), "normal")
    with pytest.raises(ValueError, match="has not been set up"):
        predict(model, MeanFieldNormal(model), torch.zeros(5, 2))
