"""Tests of :class:`bayesdl.models.BNN`: sites, parameter selection, priors, the log joint."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from torch import nn

from bayesdl.guides import MeanFieldNormal
from bayesdl.inference import fit
from bayesdl.likelihoods import Categorical, Heteroscedastic, Homoscedastic
from bayesdl.models import BNN, select_parameters
from bayesdl.nn import MLP
from bayesdl.priors import fan_in_normal, laplace, normal
from tests.common import assert_close

MLP_SITES = ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias")


def mlp(in_features=2, out_features=1, hidden=(3,)):
    return MLP(in_features, out_features, hidden=hidden, activation="tanh")


def xy(n=6, d=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen), torch.randn(n, generator=gen)


def trace(model, *args):
    return poutine.trace(model).get_trace(*args)


def sample_sites(tr):
    return [n for n, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]


# --- sites ------------------------------------------------------------------------------------


def test_site_names_shapes_and_plate():
    model = BNN(mlp(), Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)))
    x, y = xy()
    tr = trace(model, x, y)
    assert sample_sites(tr) == [*MLP_SITES, "sigma", "obs"]
    params = dict(model.net.named_parameters())
    for site in MLP_SITES:
        node = tr.nodes[site]
        assert node["value"].shape == params[site[4:]].shape
        assert node["fn"].event_shape == params[site[4:]].shape
        assert node["fn"].batch_shape == ()
        assert not node["cond_indep_stack"]  # global: outside the data plate
    assert tr.nodes["sigma"]["value"].shape == ()
    assert not tr.nodes["sigma"]["cond_indep_stack"]
    obs = tr.nodes["obs"]
    assert obs["is_observed"]
    assert [(f.name, f.size, f.dim) for f in obs["cond_indep_stack"]] == [("data", 6, -1)]
    assert obs["fn"].batch_shape == (6,)
    assert torch.equal(obs["value"], y)
    assert model.weight_sites == MLP_SITES
    assert model.latent_sites == (*MLP_SITES, "sigma")
    assert model.task == "regression"


def test_without_noise_prior_sigma_is_a_point_estimate():
    model = BNN(mlp(), Homoscedastic(sigma=0.3))
    tr = trace(model, *xy())
    assert "sigma" not in tr.nodes
    assert model.latent_sites == MLP_SITES
    store = pyro.get_param_store()
    assert list(store.keys()) == ["bnn$$$likelihood.log_sigma"]
    assert_close(store["bnn$$$likelihood.log_sigma"], torch.tensor(math.log(0.3)))
    # With learn=False the noise is a fixed buffer: nothing to fit.
    pyro.clear_param_store()
    fixed = BNN(mlp(), Homoscedastic(sigma=0.3, learn=False))
    trace(fixed, *xy())
    assert len(pyro.get_param_store()) == 0


def test_forward_returns_observed_or_sampled_targets():
    model = BNN(mlp(out_features=3), Categorical(3))
    x, _ = xy()
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    assert torch.equal(model(x, y), y)
    sampled = model(x)
    assert sampled.shape == (6,)
    assert sampled.dtype == torch.long
    assert model.task == "classification"


def test_log_joint_of_bayesian_linear_regression_by_hand():
    """The model's log joint is log N(w; 0, tau^2) + log N(b; 0, tau^2) + sum log N(y; x w + b, s^2)."""
    tau, s = 2.0, 0.5
    model = BNN(nn.Linear(2, 1), Homoscedastic(sigma=s, learn=False), prior=normal(tau))
    x, y = xy(n=8)
    tr = trace(model, x, y)
    w, b = tr.nodes["net.weight"]["value"], tr.nodes["net.bias"]["value"]
    by_hand = (
        dist.Normal(0.0, tau).log_prob(w).sum()
        + dist.Normal(0.0, tau).log_prob(b).sum()
        + dist.Normal((x @ w.T + b).squeeze(-1), s).log_prob(y).sum()
    )
    assert_close(tr.log_prob_sum(), by_hand, atol=1e-5)


def test_heteroscedastic_output_and_log_likelihood():
    model = BNN(mlp(out_features=2), Heteroscedastic(min_scale=0.01), prior=None)
    x, y = xy()
    tr = trace(model, x, y)
    out = model.net(x)
    expected = dist.Normal(out[:, 0], torch.nn.functional.softplus(out[:, 1]) + 0.01)
    assert_close(tr.nodes["obs"]["fn"].log_prob(y), expected.log_prob(y))


# --- which parameters are Bayesian ------------------------------------------------------------


def test_bayesian_last_makes_earlier_layers_point_estimates():
    model = BNN(mlp(), Homoscedastic(sigma=0.5, learn=False), bayesian="last")
    assert model.bayesian_names == ("2.weight", "2.bias")
    assert model.weight_sites == ("net.2.weight", "net.2.bias")
    tr = trace(model, *xy())
    assert sample_sites(tr) == ["net.2.weight", "net.2.bias", "obs"]
    store = pyro.get_param_store()
    assert sorted(store.keys()) == ["bnn$$$net.0.bias", "bnn$$$net.0.weight"]
    # The store holds the network's own parameters (not copies), so SVI updates the network.
    assert store["bnn$$$net.0.weight"] is model.net[0].weight
    assert store["bnn$$$net.0.bias"] is model.net[0].bias


def test_existing_param_store_entry_wins():
    model = BNN(mlp(), Homoscedastic(sigma=0.5, learn=False), bayesian="last", name="m")
    stored = pyro.param("m$$$net.0.weight", torch.full((3, 2), 0.25))
    trace(model, *xy())
    assert model.net[0].weight is stored
    assert_close(model.net[0].weight, torch.full((3, 2), 0.25))


def test_custom_name_prefixes_the_param_store():
    model = BNN(mlp(), Homoscedastic(), bayesian="none", name="point")
    trace(model, *xy())
    names = ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "likelihood.log_sigma")
    assert sorted(pyro.get_param_store().keys()) == sorted(f"point$$${n}" for n in names)


def test_bayesian_list_and_callable_selection():
    net = mlp()
    # An explicit list comes back in network order.
    model = BNN(net, Homoscedastic(), bayesian=["2.bias", "0.weight"])
    assert model.weight_sites == ("net.0.weight", "net.2.bias")
    assert sample_sites(trace(model, *xy())) == ["net.0.weight", "net.2.bias", "obs"]
    pyro.clear_param_store()
    weights_only = BNN(mlp(), Homoscedastic(), bayesian=lambda name, p: p.ndim == 2)
    assert weights_only.weight_sites == ("net.0.weight", "net.2.weight")
    assert BNN(mlp(), Homoscedastic(), bayesian="none").weight_sites == ()
    assert BNN(mlp(), Homoscedastic(), bayesian="all").weight_sites == MLP_SITES


def test_select_parameters_last_with_nested_modules_and_no_bias():
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)))
    assert select_parameters(net, "last") == ["2.1.weight", "2.1.bias"]
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1, bias=False), nn.Tanh())
    assert select_parameters(net, "last") == ["2.weight"]
    assert select_parameters(nn.Tanh(), "last") == []


def test_unknown_parameter_names_raise():
    with pytest.raises(ValueError, match=r"unknown parameters \['1.weight'\]"):
        BNN(mlp(), Homoscedastic(), bayesian=["0.weight", "1.weight"])
    with pytest.raises(ValueError, match="bayesian"):
        BNN(mlp(), Homoscedastic(), bayesian="first")


def test_prior_none_has_no_latent_weights():
    model = BNN(mlp(), Homoscedastic(), prior=None)
    assert model.weight_sites == ()
    assert model.latent_sites == ()
    assert model.priors() == {}
    tr = trace(model, *xy())
    assert sample_sites(tr) == ["obs"]
    assert len(pyro.get_param_store()) == 5  # four network tensors and log_sigma


# --- priors as seen by the model --------------------------------------------------------------


def test_normal_prior_on_every_site():
    model = BNN(mlp(), Homoscedastic(), prior=normal(0.5))
    priors = model.priors()
    assert list(priors) == list(MLP_SITES)
    for site, prior in priors.items():
        shape = dict(model.net.named_parameters())[site[4:]].shape
        assert prior.event_shape == shape
        assert_close(prior.stddev, torch.full(shape, 0.5))


def test_fan_in_prior_scales_weight_matrices():
    model = BNN(mlp(in_features=4, hidden=(9,)), Homoscedastic(), prior=fan_in_normal(1.5))
    p = model.priors()
    assert_close(p["net.0.weight"].stddev, torch.full((9, 4), 1.5 / math.sqrt(4)))
    assert_close(p["net.0.bias"].stddev, torch.full((9,), 1.5))
    assert_close(p["net.2.weight"].stddev, torch.full((1, 9), 1.5 / math.sqrt(9)))
    assert_close(p["net.2.bias"].stddev, torch.full((1,), 1.5))
    # By name, with scale 1.
    named = BNN(mlp(in_features=4, hidden=(9,)), Homoscedastic(), prior="fan_in").priors()
    assert_close(named["net.2.weight"].stddev, torch.full((1, 9), 1 / 3))


def test_laplace_prior_log_density():
    model = BNN(mlp(), Homoscedastic(sigma=0.5, learn=False), prior=laplace(0.2))
    tr = trace(model, *xy())
    for site in MLP_SITES:
        value = tr.nodes[site]["value"]
        expected = (-value.abs() / 0.2 - math.log(0.4)).sum()
        assert_close(tr.nodes[site]["fn"].log_prob(value), expected, atol=1e-4)


def test_scalar_distribution_prior_is_expanded():
    base = dist.StudentT(4.0, 0.0, 0.3)
    model = BNN(mlp(), Homoscedastic(), prior=base)
    tr = trace(model, *xy())
    for site in MLP_SITES:
        node = tr.nodes[site]
        assert node["fn"].event_shape == node["value"].shape
        assert node["fn"].batch_shape == ()
        expected = base.log_prob(node["value"]).sum()
        assert_close(node["fn"].log_prob(node["value"]), expected, atol=1e-5)


def test_prior_cache_follows_dtype():
    model = BNN(mlp(), Homoscedastic())
    assert model.priors() is model.priors()
    assert model.priors()["net.0.weight"].mean.dtype == torch.float32
    model.double()
    assert model.priors()["net.0.weight"].mean.dtype == torch.float64
    tr = trace(model, *(t.double() for t in xy()))
    assert tr.nodes["net.0.weight"]["value"].dtype == torch.float64


# --- network output ---------------------------------------------------------------------------


def test_network_output_substitutes_weights_and_vectorises_over_samples():
    model = BNN(mlp(), Homoscedastic())
    x, _ = xy()
    gen = torch.Generator().manual_seed(5)
    params = dict(model.net.named_parameters())
    weights = {s: torch.randn(4, *params[s[4:]].shape, generator=gen) for s in MLP_SITES}
    out = model.network_output(x, weights)
    assert out.shape == (4, 6, 1)
    for i in range(4):
        w1, b1 = weights["net.0.weight"][i], weights["net.0.bias"][i]
        w2, b2 = weights["net.2.weight"][i], weights["net.2.bias"][i]
        by_hand = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        assert_close(out[i], by_hand, atol=1e-5)
    single = model.network_output(x, {s: w[0] for s, w in weights.items()})
    assert_close(single, out[0], atol=1e-6)
    assert_close(model.network_output(x), model.net(x))
    # The module's own parameters are untouched.
    assert all(torch.equal(params[n], p) for n, p in model.net.named_parameters())


def test_initial_values_are_detached_copies():
    model = BNN(mlp(), Homoscedastic(), bayesian="last")
    init = model.initial_values()
    assert list(init) == ["net.2.weight", "net.2.bias"]
    assert torch.equal(init["net.2.weight"], model.net[2].weight)
    assert not init["net.2.weight"].requires_grad
    init["net.2.weight"].add_(1.0)
    assert not torch.equal(init["net.2.weight"], model.net[2].weight)


def test_conditional_uses_current_weights():
    model = BNN(mlp(), Homoscedastic(sigma=0.4), prior=None)
    x, _ = xy()
    d = model.conditional(x)
    assert_close(d.mean, model.net(x).squeeze(-1))
    assert_close(d.stddev, torch.full((6,), 0.4))


# --- one flat weight site ---------------------------------------------------------------------


def test_flat_model_has_one_weight_site_and_the_same_log_joint():
    x, y = xy()
    torch.manual_seed(0)
    per_param = BNN(
        mlp(hidden=(4,)), Homoscedastic(sigma=0.5, learn=False), prior=fan_in_normal(2.0)
    )
    torch.manual_seed(0)
    flat = BNN(
        mlp(hidden=(4,)), Homoscedastic(sigma=0.5, learn=False), prior=fan_in_normal(2.0), flat=True
    )
    assert flat.weight_sites == ("weights",)
    assert flat.latent_sites == ("weights",)
    init = flat.initial_values()["weights"]
    assert init.shape == (4 * 2 + 4 + 4 + 1,)
    per_init = per_param.initial_values()
    assert torch.equal(init, torch.cat([per_init[s].reshape(-1) for s in MLP_SITES]))
    prior = flat.priors()["weights"]
    assert prior.event_shape == (17,)
    expected_sd = torch.cat(
        [
            torch.full((8,), 2.0 / math.sqrt(2)),
            torch.full((4,), 2.0),
            torch.full((4,), 2.0 / math.sqrt(4)),
            torch.full((1,), 2.0),
        ]
    )
    assert_close(prior.stddev, expected_sd)
    # Conditioning both models on the same weights gives the same log joint and outputs.
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(17, generator=gen)
    pieces = dict(zip(MLP_SITES, w.split([8, 4, 4, 1]), strict=True))
    params = dict(per_param.net.named_parameters())
    values = {s: pieces[s].reshape(params[s[4:]].shape) for s in MLP_SITES}
    tr_flat = trace(poutine.condition(flat, data={"weights": w}), x, y)
    tr_per = trace(poutine.condition(per_param, data=values), x, y)
    assert sample_sites(tr_flat) == ["weights", "obs"]
    assert_close(tr_flat.log_prob_sum(), tr_per.log_prob_sum(), atol=1e-4)
    assert_close(flat.network_output(x, {"weights": w}), per_param.network_output(x, values))
    batch = torch.randn(5, 17, generator=gen)
    assert flat.network_output(x, {"weights": batch}).shape == (5, 6, 1)


def test_flat_needs_a_factorised_prior():
    def prior(name, param):
        return dist.Normal(torch.zeros_like(param), 1.0).to_event(param.ndim)

    with pytest.raises(ValueError, match="flat=True"):
        BNN(mlp(), Homoscedastic(), prior=prior, flat=True)
    scalar = BNN(mlp(), Homoscedastic(), prior=dist.Laplace(0.0, 0.5), flat=True)
    assert scalar.priors()["weights"].event_shape == (13,)  # 3 * 2 + 3 + 3 + 1
    # Nothing Bayesian: flat is ignored.
    assert BNN(mlp(), Homoscedastic(), prior=None, flat=True).weight_sites == ()


def test_param_store_shape_clash_is_reported():
    trace(BNN(mlp(hidden=(3,)), Homoscedastic(), bayesian="last"), *xy())
    other = BNN(mlp(hidden=(5,)), Homoscedastic(), bayesian="last")
    with pytest.raises(ValueError, match=r"'bnn\$\$\$net.0.weight' with shape \(3, 2\)"):
        trace(other, *xy())


# --- in Pyro's inference machinery -----------------------------------------------------------


def test_svi_with_several_particles_in_a_loop():
    model = BNN(mlp(), Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)))
    x, y = xy()
    history = fit(
        model,
        MeanFieldNormal(model),
        x,
        y,
        num_steps=3,
        loss=TraceMeanField_ELBO(num_particles=3),
        progress=False,
    )
    assert all(math.isfinite(v) for v in history.loss)


def test_svi_with_vectorized_particles():
    model = BNN(mlp(), Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)))
    x, y = xy()
    loss = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    history = fit(model, MeanFieldNormal(model), x, y, num_steps=3, loss=loss, progress=False)
    assert all(math.isfinite(v) for v in history.loss)


def test_vectorized_particles_agree_with_one_particle_at_a_point_mass():
    # With a (numerically) point-mass guide every particle has the same weights, so the
    # vectorised 4-particle ELBO must equal the 1-particle ELBO: a check that the particle
    # dimension broadcasts through the network and the data plate without mixing them.
    model = BNN(mlp(), Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)))
    x, y = xy()
    guide = MeanFieldNormal(model, init_scale=1e-7)
    guide(x, y)
    one = TraceMeanField_ELBO().loss(model, guide, x, y)
    four = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1).loss(
        model, guide, x, y
    )
    assert abs(four - one) <= 1e-3 * abs(one), (one, four)


# --- bad arguments ----------------------------------------------------------------------------


def test_bad_net_or_likelihood_raise_type_error():
    with pytest.raises(TypeError, match="net"):
        BNN(lambda x: x, Homoscedastic())
    with pytest.raises(TypeError, match="likelihood"):
        BNN(mlp(), nn.MSELoss())
    with pytest.raises(TypeError, match="likelihood"):
        BNN(mlp(), dist.Normal(0.0, 1.0))
    with pytest.raises(TypeError, match="prior"):
        BNN(mlp(), Homoscedastic(), prior=3.0)
    with pytest.raises(ValueError, match="name"):
        BNN(mlp(), Homoscedastic(), name="a$$$b")


def test_output_size_mismatch_is_reported():
    model = BNN(mlp(out_features=1), Heteroscedastic())
    with pytest.raises(ValueError, match="2 value"):
        model(*xy())
