"""Tests of :mod:`bayesdl.likelihoods`: the lecture's objectives hold literally in the Pyro model."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from bayesdl.inference import fit
from bayesdl.likelihoods import Categorical, Heteroscedastic, Homoscedastic, MixtureDensity
from bayesdl.models import BNN
from bayesdl.nn import MLP
from tests.common import assert_close

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def toy(n: int = 64, seed: int = 0, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=gen, dtype=dtype) * 6 - 3
    y = torch.sin(2 * x[:, 0]) + 0.3 * torch.randn(n, generator=gen, dtype=dtype)
    return x, y


def trace_log_lik(model: BNN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The model's log-likelihood as Pyro sees it (no latent sites: the whole log-joint)."""
    return poutine.trace(model).get_trace(x, y).log_prob_sum()


# --- Homoscedastic: sum (y - mu)^2 / (2 sigma^2) + log sigma + C -------------------------------


@pytest.mark.parametrize("sigma", [0.05, 0.37, 1.0, 4.0])
def test_homoscedastic_log_likelihood_is_the_lecture_objective(sigma):
    x, y = toy()
    model = BNN(MLP(1, 1, hidden=(8,)), Homoscedastic(sigma=sigma), prior=None).double()
    mu = model.net(x)[:, 0].detach()
    # The module stores log sigma (initialised in float32): use the value it holds.
    s = model.likelihood.sigma.detach()
    assert_close(s, sigma, rtol=1e-6, atol=0)
    n = len(y)
    expected = -((y - mu).square() / (2 * s**2) + s.log()).sum() - n * HALF_LOG_2PI
    assert_close(trace_log_lik(model, x, y), expected, atol=1e-5, rtol=0)
    assert model.likelihood.log_sigma.requires_grad  # sigma is learned by maximum likelihood


def test_fixed_sigma_is_squared_error():
    """The lecture's exercise: with sigma^2 fixed at 1 the objective is the squared error / 2."""
    x, y = toy()
    likelihood = Homoscedastic(sigma=1.0, learn=False)
    model = BNN(MLP(1, 1, hidden=(8,)), likelihood, prior=None).double()
    mu = model.net(x)[:, 0].detach()
    expected = -0.5 * (y - mu).square().sum() - len(y) * HALF_LOG_2PI
    assert_close(trace_log_lik(model, x, y), expected, atol=1e-5, rtol=0)
    assert "log_sigma" not in dict(model.named_parameters())  # a buffer: nothing to learn
    assert "likelihood.log_sigma" in dict(model.named_buffers())


def test_maximum_likelihood_loss_is_the_negative_objective():
    """``fit(model, None, ...)`` minimises exactly -log p(d | theta, sigma): the loss of the first
    step (evaluated before the update) equals the negative objective at the initial weights."""
    x, y = toy()
    model = BNN(MLP(1, 1, hidden=(8,)), Homoscedastic(sigma=0.5), prior=None).double()
    expected = -trace_log_lik(model, x, y).item()
    history = fit(model, None, x, y, num_steps=1, progress=False)
    assert history.loss[0] == pytest.approx(expected, rel=1e-10)


def test_homoscedastic_sigma_mle_is_residual_rms():
    """For fixed mu the objective is stationary in sigma exactly at sigma^2 = mean (y - mu)^2."""
    x, y = toy(200)
    model = BNN(MLP(1, 1, hidden=(8,)), Homoscedastic(), prior=None).double()
    rms = (y - model.net(x)[:, 0]).square().mean().sqrt().item()
    grads = {}
    for factor in (0.5, 1.0, 2.0):
        with torch.no_grad():
            model.likelihood.log_sigma.fill_(math.log(factor * rms))
        model.zero_grad()
        trace_log_lik(model, x, y).backward()
        grads[factor] = model.likelihood.log_sigma.grad.item()
    assert abs(grads[1.0]) < 1e-8
    # d log p / d log sigma = sum (y - mu)^2 / sigma^2 - N: positive below the optimum.
    assert grads[0.5] > 1 and grads[2.0] < -1


# --- Heteroscedastic: sum (y - mu(x))^2 / (2 sigma^2(x)) + log sigma(x) + C --------------------


@pytest.mark.parametrize("min_scale", [1e-3, 0.1])
def test_heteroscedastic_log_likelihood_is_the_lecture_objective(min_scale):
    x, y = toy()
    model = BNN(MLP(1, 2, hidden=(8,)), Heteroscedastic(min_scale=min_scale), prior=None).double()
    out = model.net(x).detach()
    mu, sigma = out[:, 0], F.softplus(out[:, 1]) + min_scale
    expected = -((y - mu).square() / (2 * sigma**2) + sigma.log()).sum() - len(y) * HALF_LOG_2PI
    assert_close(trace_log_lik(model, x, y), expected, atol=1e-5, rtol=0)


def test_heteroscedastic_scale_respects_floor_and_stays_finite():
    lik = Heteroscedastic(min_scale=0.01)
    out = torch.tensor([[0.0, -1e4], [0.0, 0.0], [0.0, 1e4]], requires_grad=True)
    d = lik(out)
    assert torch.all(d.scale >= 0.01)
    assert_close(d.scale[1], math.log(2) + 0.01, atol=1e-6, rtol=0)
    d.log_prob(torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.isfinite(out.grad).all()


# --- Mixture density: log sum_k pi_k N(y; mu_k, sigma_k^2) ------------------------------------


def hand_mixture_log_prob(out: torch.Tensor, y: torch.Tensor, k: int, min_scale: float):
    logits, mu, raw = out[..., :k], out[..., k : 2 * k], out[..., 2 * k :]
    # log pi_k = l_k - logsumexp(l): softmax(l).log() would underflow to -inf for extreme l.
    log_pi = logits - torch.logsumexp(logits, -1, keepdim=True)
    sigma = F.softplus(raw) + min_scale
    z = (y.unsqueeze(-1) - mu) / sigma
    log_comp = -0.5 * z.square() - sigma.log() - HALF_LOG_2PI
    return torch.logsumexp(log_pi + log_comp, -1)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_mixture_density_log_prob_is_hand_logsumexp(k):
    gen = torch.Generator().manual_seed(k)
    out = torch.randn(50, 3 * k, generator=gen, dtype=torch.float64) * 2
    y = torch.randn(50, generator=gen, dtype=torch.float64) * 3
    lik = MixtureDensity(k, min_scale=1e-3)
    d = lik(out)
    assert isinstance(d, dist.MixtureSameFamily)
    assert d.batch_shape == (50,)
    assert_close(d.log_prob(y), hand_mixture_log_prob(out, y, k, 1e-3), atol=1e-10, rtol=0)
    # Weights sum to one and the moments follow the law of total variance.
    log_pi, mu, sigma = lik.components(out)
    assert_close(log_pi.exp().sum(-1), torch.ones(50, dtype=torch.float64))
    mean, var = lik.moments(out)
    pi = log_pi.exp()
    assert_close(mean, (pi * mu).sum(-1))
    assert_close(var, (pi * (sigma**2 + (mu - mean.unsqueeze(-1)) ** 2)).sum(-1), atol=1e-10)


def test_mixture_density_in_bnn_trace():
    """The Pyro model's log-likelihood with a mixture head is the sum of mixture log-densities."""
    x, y = toy()
    model = BNN(MLP(1, 9, hidden=(8,)), MixtureDensity(3), prior=None).double()
    out = model.net(x).detach()
    expected = hand_mixture_log_prob(out, y, 3, 1e-3).sum()
    assert_close(trace_log_lik(model, x, y), expected, atol=1e-5, rtol=0)


def test_mixture_density_no_nan_on_extreme_logits():
    k = 3
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [80.0, -80.0, 30.0]])
    mu = torch.tensor([[0.0, 1e3, -1e3], [0.0, 0.0, 0.0], [5.0, -5.0, 0.0]])
    raw = torch.tensor([[-1e4, 1e4, 0.0], [-50.0, -50.0, -50.0], [100.0, -100.0, 0.0]])
    out = torch.cat([logits, mu, raw], -1).requires_grad_(True)
    lik = MixtureDensity(k, min_scale=1e-3)
    y = torch.tensor([1e3, 0.5, -7.0])
    log_p = lik(out).log_prob(y)
    assert torch.isfinite(log_p).all(), log_p
    log_p.sum().backward()
    assert torch.isfinite(out.grad).all()
    _, _, sigma = lik.components(out)
    assert torch.all(sigma >= 1e-3)
    # Exact in log space: e.g. the first point's density comes from the component whose
    # weight is exp(-2e4) but whose scale reaches y = 1e3: log p = -2e4 - log(1e4) - 0.92.
    assert_close(log_p, hand_mixture_log_prob(out.double(), y.double(), k, 1e-3), rtol=1e-6)
    assert log_p[0].item() == pytest.approx(-2e4 - math.log(1e4) - HALF_LOG_2PI, rel=1e-6)


# --- Output sizes and constructor arguments ---------------------------------------------------


@pytest.mark.parametrize(
    "likelihood, expected",
    [
        (Homoscedastic(), 1),
        (Heteroscedastic(), 2),
        (Categorical(4), 4),
        (MixtureDensity(1), 3),
        (MixtureDensity(5), 15),
    ],
)
def test_output_size_and_wrong_width(likelihood, expected):
    assert likelihood.output_size() == expected
    likelihood(torch.zeros(3, expected))  # the right width works
    with pytest.raises(ValueError, match=f"must output {expected} value"):
        likelihood(torch.zeros(3, expected + 1))


def test_bnn_with_mismatched_network_raises():
    model = BNN(MLP(1, 2, hidden=(4,)), MixtureDensity(3), prior=None)
    with pytest.raises(ValueError, match="must output 9 value"):
        model(torch.zeros(5, 1), torch.zeros(5))


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: Homoscedastic(sigma=0.0), "sigma"),
        (lambda: Homoscedastic(sigma=-1.0), "sigma"),
        (lambda: Heteroscedastic(min_scale=0.0), "min_scale"),
        (lambda: MixtureDensity(0), "num_components"),
        (lambda: MixtureDensity(-2), "num_components"),
        (lambda: MixtureDensity(3, min_scale=-1e-3), "min_scale"),
        (lambda: Categorical(1), "num_classes"),
    ],
)
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_non_integer_components_is_a_type_error():
    with pytest.raises(TypeError, match="num_components"):
        MixtureDensity(2.5)


def test_homoscedastic_with_prior_samples_sigma():
    lik = Homoscedastic(prior=dist.LogNormal(-1.0, 0.5))
    model = BNN(MLP(1, 1, hidden=(4,)), lik, prior=None)
    x, y = toy(dtype=torch.float32)
    tr = poutine.trace(model).get_trace(x, y)
    assert "sigma" in tr.nodes and not tr.nodes["sigma"]["is_observed"]
    sigma = tr.nodes["sigma"]["value"]
    mu = model.net(x)[:, 0].detach()
    expected = dist.Normal(mu, sigma).log_prob(y).sum()
    assert_close(tr.nodes["obs"]["fn"].log_prob(y).sum(), expected, atol=1e-4, rtol=1e-6)
    pyro.clear_param_store()
