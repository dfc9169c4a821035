"""Tests of :class:`bayesdl.distributions.MixtureDensityNetwork` and its helpers."""

from __future__ import annotations

import io
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from bayesdl.distributions import MixtureDensityNetwork, find_modes, gaussian_mixture_crps
from bayesdl.inference import fit, predict
from bayesdl.likelihoods import MixtureDensity
from bayesdl.metrics import crps_gaussian, crps_samples
from bayesdl.models import BNN
from bayesdl.nn import MLP
from tests.common import assert_close


def set_mixture(mdn: MixtureDensityNetwork, weights, means, scales) -> None:
    """Make the MDN output the same mixture for every input (zero output weights)."""
    k = mdn.num_components
    with torch.no_grad():
        last = mdn.net[-1]
        last.weight.zero_()
        last.bias[:k] = torch.tensor(weights).log()
        last.bias[k : 2 * k] = torch.tensor(means)
        raw = torch.tensor(scales) - mdn.likelihood.min_scale
        last.bias[2 * k :] = raw + torch.log(-torch.expm1(-raw))  # inverse softplus


# --- the distribution interface -----------------------------------------------------------------


@pytest.mark.parametrize("in_features, k", [(1, 1), (1, 3), (3, 5)])
def test_shapes_sample_and_log_prob(in_features, k):
    mdn = MixtureDensityNetwork(in_features, num_components=k, hidden=(16, 8))
    x = torch.randn(7, in_features)
    d = mdn(x)
    assert isinstance(d, dist.MixtureSameFamily)
    assert d.batch_shape == (7,) and d.event_shape == ()
    assert d.sample().shape == (7,)
    assert d.sample((4,)).shape == (4, 7)
    y = torch.randn(7)
    assert d.log_prob(y).shape == (7,)
    assert_close(mdn.log_prob(x, y), d.log_prob(y))
    weights = mdn.mixture_weights(x)
    assert weights.shape == (7, k)
    assert_close(weights.sum(-1), torch.ones(7))
    log_pi, mu, sigma = mdn.components(x)
    assert log_pi.shape == mu.shape == sigma.shape == (7, k)
    assert torch.all(sigma >= mdn.likelihood.min_scale)
    assert isinstance(mdn.net, MLP) and mdn.net.out_features == 3 * k
    assert isinstance(mdn.likelihood, MixtureDensity) and mdn.likelihood.num_components == k
    # Extra leading batch dimensions pass through, as for nn.Linear.
    assert mdn(torch.randn(2, 7, in_features)).batch_shape == (2, 7)


def test_one_component_is_a_gaussian():
    mdn = MixtureDensityNetwork(2, num_components=1, hidden=(8,))
    x, y = torch.randn(20, 2), torch.randn(20)
    _, mu, sigma = mdn.components(x)
    normal = dist.Normal(mu[:, 0], sigma[:, 0])
    assert_close(mdn(x).log_prob(y), normal.log_prob(y), atol=1e-6, rtol=1e-6)
    assert_close(mdn(x).mean, normal.mean)


def test_log_prob_matches_hand_mixture():
    mdn = MixtureDensityNetwork(1, num_components=3, hidden=(4,))
    set_mixture(mdn, [0.2, 0.5, 0.3], [-1.0, 0.0, 2.0], [0.5, 0.1, 1.0])
    y = torch.linspace(-3, 3, 25)
    x = torch.zeros(25, 1)
    expected = sum(
        w * dist.Normal(m, s).log_prob(y).exp()
        for w, m, s in zip([0.2, 0.5, 0.3], [-1.0, 0.0, 2.0], [0.5, 0.1, 1.0], strict=True)
    ).log()
    assert_close(mdn(x).log_prob(y), expected, atol=1e-5, rtol=1e-5)


def test_samples_follow_the_mixture():
    mdn = MixtureDensityNetwork(1, num_components=2, hidden=(4,))
    set_mixture(mdn, [0.25, 0.75], [-2.0, 3.0], [0.1, 0.1])
    with torch.no_grad():
        draws = mdn(torch.zeros(20000, 1)).sample()
    assert (draws > 0.5).float().mean().item() == pytest.approx(0.75, abs=0.02)
    assert draws[draws > 0.5].mean().item() == pytest.approx(3.0, abs=0.01)


def test_gradients_reach_every_parameter():
    mdn = MixtureDensityNetwork(2, num_components=4, hidden=(8, 8))
    x, y = torch.randn(30, 2), torch.randn(30)
    mdn(x).log_prob(y).sum().backward()
    for name, p in mdn.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_state_dict_round_trip_and_float64():
    mdn = MixtureDensityNetwork(1, num_components=3, hidden=(8,))
    buffer = io.BytesIO()
    torch.save(mdn.state_dict(), buffer)
    buffer.seek(0)
    other = MixtureDensityNetwork(1, num_components=3, hidden=(8,))
    other.load_state_dict(torch.load(buffer))
    x, y = torch.randn(5, 1), torch.randn(5)
    assert_close(other(x).log_prob(y), mdn(x).log_prob(y), atol=0, rtol=0)
    mdn.double()
    assert mdn(x.double()).log_prob(y.double()).dtype == torch.float64


# --- the Pyro program -----------------------------------------------------------------------------


def test_model_shares_the_modules_and_the_observation_site():
    mdn = MixtureDensityNetwork(1, num_components=3, hidden=(8,))
    model = mdn.model()
    assert isinstance(model, BNN)
    assert model.net is mdn.net and model.likelihood is mdn.likelihood
    assert model.latent_sites == ()
    x, y = torch.randn(12, 1), torch.randn(12)
    tr = poutine.trace(model).get_trace(x, y)
    obs = tr.nodes["obs"]
    assert obs["is_observed"]
    assert isinstance(obs["fn"], dist.MixtureSameFamily)
    assert_close(tr.log_prob_sum(), mdn(x).log_prob(y).sum(), atol=1e-4, rtol=1e-6)
    # The predictive of the point estimate is the module's own distribution.
    pred = predict(model, None, x)
    assert pred.distribution.batch_shape == (1, 12)
    assert_close(pred.log_prob(y), mdn(x).log_prob(y), atol=1e-5, rtol=1e-5)
    mean, _ = mdn.likelihood.moments(mdn.net(x))
    assert_close(pred.mean, mean, atol=1e-6, rtol=1e-6)


def test_fitting_the_model_trains_the_module():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, generator=gen)
    # Two branches: y = +-x (+ noise), a relation no function can fit.
    sign = torch.where(torch.rand(200, generator=gen) < 0.5, -1.0, 1.0)
    y = sign * x[:, 0] + 0.05 * torch.randn(200, generator=gen)
    mdn = MixtureDensityNetwork(1, num_components=2, hidden=(16,)).initialize(y, x)
    before = [p.detach().clone() for p in mdn.parameters()]
    nll0 = -mdn(x).log_prob(y).mean().item()
    history = fit(mdn.model(), None, x, y, num_steps=300, lr=0.02, progress=False)
    nll1 = -mdn(x).log_prob(y).mean().item()
    assert any(not torch.equal(b, p) for b, p in zip(before, mdn.parameters(), strict=True))
    assert nll1 < nll0 - 0.5
    assert history.loss[-1] == pytest.approx(nll1 * 200, rel=0.05)
    assert set(pyro.get_param_store().keys()) == {f"mdn$$${n}" for n, _ in mdn.named_parameters()}


def test_model_with_prior_has_weight_sites():
    mdn = MixtureDensityNetwork(1, num_components=2, hidden=(4,))
    model = mdn.model(prior="normal", bayesian="last", name="bayes_mdn")
    assert model.latent_sites == ("net.2.weight", "net.2.bias")
    tr = poutine.trace(model).get_trace(torch.randn(3, 1), torch.randn(3))
    assert tr.nodes["net.2.weight"]["value"].shape == (6, 4)


# --- modes, initialisation, CRPS ------------------------------------------------------------------


def test_modes_are_the_separated_component_means():
    mdn = MixtureDensityNetwork(1, num_components=3, hidden=(4,))
    set_mixture(mdn, [0.3, 0.4, 0.3], [-1.0, 0.5, 2.0], [0.1, 0.1, 0.1])
    modes = mdn.modes(0.0)
    assert_close(modes, torch.tensor([-1.0, 0.5, 2.0]), atol=0.01, rtol=0)
    grid = torch.linspace(-3, 3, 6001)
    assert_close(mdn.modes(torch.zeros(1), grid), torch.tensor([-1.0, 0.5, 2.0]), atol=2e-3, rtol=0)
    # A tiny component is dropped by the threshold, kept without it.
    set_mixture(mdn, [0.499, 0.499, 0.002], [-1.0, 0.5, 2.0], [0.1, 0.1, 0.1])
    assert len(mdn.modes(0.0, grid, threshold=0.01)) == 2
    assert len(mdn.modes(0.0, grid, threshold=0.0)) == 3
    # Two overlapping components make one mode.
    set_mixture(mdn, [0.5, 0.5, 1e-9], [0.0, 0.1, 5.0], [0.5, 0.5, 0.1])
    assert_close(mdn.modes(0.0, grid), torch.tensor([0.05]), atol=2e-3, rtol=0)


def test_find_modes_validates():
    grid = torch.linspace(0, 1, 11)
    with pytest.raises(ValueError, match="same shape"):
        find_modes(grid, torch.zeros(10))
    with pytest.raises(ValueError, match="increasing"):
        find_modes(grid.flip(0), torch.zeros(11))
    with pytest.raises(ValueError, match="threshold"):
        find_modes(grid, torch.zeros(11), threshold=1.5)
    with pytest.raises(ValueError, match="at least 3"):
        find_modes(grid[:2], torch.zeros(2))
    assert find_modes(grid, torch.zeros(11)).numel() == 0  # flat: no strict maximum


def test_initialize_spreads_components_over_the_data():
    gen = torch.Generator().manual_seed(1)
    x = 10 + 5 * torch.rand(500, 1, generator=gen)  # far from torch's default input scale
    y = 3 * torch.rand(500, generator=gen)
    mdn = MixtureDensityNetwork(1, num_components=3, hidden=(32,)).initialize(y, x, gain=2.0)
    _, mu, sigma = mdn.components(x)
    assert_close(mu.mean(0), torch.quantile(y, torch.tensor([1 / 6, 0.5, 5 / 6])), atol=0.1, rtol=0)
    assert_close(sigma.mean(0), (y.std() / 3).expand(3), atol=0.05, rtol=0)
    assert_close(mdn.mixture_weights(x).mean(0), torch.full((3,), 1 / 3), atol=0.02, rtol=0)
    pre = mdn.net[0](x)  # every hidden unit bends inside the data
    assert_close(pre.std(0).mean(), 2.0, atol=0.8, rtol=0)
    assert bool(((pre.min(0).values < 0) & (pre.max(0).values > 0)).all())


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((torch.zeros(5, 2),), {}, "y"),
        ((torch.ones(1),), {}, "y"),
        ((torch.zeros(5),), {"x": torch.zeros(4, 1)}, "x"),
        ((torch.zeros(5),), {"x": torch.zeros(5, 2)}, "x"),
        ((torch.zeros(5),), {"gain": 0.0}, "gain"),
    ],
)
def test_initialize_rejects_bad_data(args, kwargs, name):
    mdn = MixtureDensityNetwork(1, num_components=2, hidden=(4,))
    with pytest.raises(ValueError, match=name):
        mdn.initialize(*args, **kwargs)


def test_mixture_crps_closed_form():
    gen = torch.Generator().manual_seed(2)
    mu = torch.randn(6, 1, generator=gen, dtype=torch.float64)
    sigma = torch.rand(6, 1, generator=gen, dtype=torch.float64) + 0.1
    y = torch.randn(6, generator=gen, dtype=torch.float64)
    one = dist.MixtureSameFamily(dist.Categorical(torch.ones(6, 1)), dist.Normal(mu, sigma))
    expected = crps_gaussian(mu[:, 0], sigma[:, 0], y, reduction="none")
    assert_close(gaussian_mixture_crps(one, y), expected, atol=1e-12, rtol=0)
    # K = 3 against the empirical CRPS of many draws.
    logits = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    mu3 = 2 * torch.randn(6, 3, generator=gen, dtype=torch.float64)
    sigma3 = torch.rand(6, 3, generator=gen, dtype=torch.float64) + 0.1
    mix = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(mu3, sigma3))
    pyro.set_rng_seed(3)
    draws = mix.sample((100000,))
    assert_close(
        gaussian_mixture_crps(mix, y), crps_samples(draws, y, reduction="none"), atol=0.01, rtol=0
    )
    with pytest.raises(ValueError, match="batch shape"):
        gaussian_mixture_crps(mix, y[:3])
    with pytest.raises(TypeError, match="Normal components"):
        gaussian_mixture_crps(dist.Normal(mu[:, 0], sigma[:, 0]), y)


# --- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_components": 0}, "num_components"),
        ({"num_components": -1}, "num_components"),
        ({"hidden": (0,)}, "hidden"),
        ({"hidden": (16, -4)}, "hidden"),
        ({"hidden": (16, 2.5)}, "hidden"),
        ({"activation": "sine"}, "activation"),
        ({"min_scale": 0.0}, "min_scale"),
        ({"in_features": 0}, "in_features"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    args = {"in_features": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        MixtureDensityNetwork(**args)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"num_components": 1.5}, "num_components"), ({"hidden": "64"}, "hidden")],
)
def test_wrong_types_raise_type_error_naming_them(kwargs, name):
    with pytest.raises(TypeError, match=name):
        MixtureDensityNetwork(1, **kwargs)


def test_wrong_input_width_names_x():
    mdn = MixtureDensityNetwork(3, num_components=2, hidden=(4,))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        mdn(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="x"):
        mdn.modes(0.5)  # a number is an input only for in_features == 1
    with pytest.raises(TypeError, match="x"):
        mdn([[0.0, 0.0, 0.0]])


def test_output_layer_is_linear_with_3k_outputs():
    mdn = MixtureDensityNetwork(2, num_components=4, hidden=(8, 8), activation="relu")
    assert isinstance(mdn.net[-1], nn.Linear) and mdn.net[-1].out_features == 12
    assert mdn.net.activation_name == "relu"
    assert "num_components=4" in repr(mdn)
    assert math.isfinite(mdn(torch.zeros(1, 2)).log_prob(torch.zeros(1)).item())
