"""Tests of :class:`bayesdl.guides.DropoutGuide`: dropout training is an SVI step of the dropout
guide, MC dropout through the package's predictive, weight scaling, the Gaussian and Concrete
families, and the argument checks."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from bayesdl.data import homoscedastic
from bayesdl.guides import DropoutGuide, dropped_weights
from bayesdl.inference import fit, posterior_samples, predict
from bayesdl.io import load_posterior, save_posterior
from bayesdl.likelihoods import Categorical, Heteroscedastic, Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP
from bayesdl.priors import normal
from tests.common import assert_close

LAYERS = ("0", "2", "4")  # the Linear layers of MLP(..., hidden=(5, 4))


def deep_model(prior_scale=0.8, flat=False, likelihood=None):
    torch.manual_seed(0)
    return BNN(
        MLP(3, 1, hidden=(5, 4), activation="tanh"),
        Homoscedastic(sigma=0.5, learn=False) if likelihood is None else likelihood,
        prior=normal(prior_scale),
        flat=flat,
    )


def xy(n=16, d=3):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=gen), torch.randn(n, generator=gen)


def bernoulli_entropy(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


# --- dropout training is variational inference ------------------------------------------------


def test_svi_step_is_a_dropout_training_step():
    """One SVI step (Trace_ELBO, SGD, full batch) of the Bernoulli guide with a N(0, s^2) prior
    equals one SGD step of a plain torch network trained with dropout (the same per-batch masks,
    intercepted with poutine.trace) on the summed negative log-likelihood plus the L2 term
    ||M diag(z)||^2 / (2 s^2) on the *masked* weights and ||b||^2 / (2 s^2) on the biases.
    Agreement to 1e-6; the step moves some weight by 0.14, so a missing term would show."""
    s, sigma, lr = 0.8, 0.5, 0.01
    model = deep_model(prior_scale=s)
    guide = DropoutGuide(model, p=0.5, drop_inputs=True)
    x, y = xy()
    guide(x, y)
    start = guide.variational_parameters()

    traced = poutine.trace(guide)
    svi = SVI(model, traced, pyro.optim.SGD({"lr": lr}), Trace_ELBO(max_plate_nesting=1))
    pyro.set_rng_seed(3)
    loss = svi.step(x, y)
    masks = {i: traced.trace.nodes[f"net.{i}.weight_mask"]["value"] for i in LAYERS}
    dropped = torch.cat(list(masks.values()))
    assert 0 < float(dropped.mean()) < 1, "the test needs masks with both kept and dropped units"

    # Standard dropout training of the same network in plain torch.
    params = {k[4:]: v.clone().requires_grad_() for k, v in start.items()}
    h = x
    penalty = torch.zeros(())
    log_prior = torch.zeros(())
    for i in LAYERS:
        weight = params[f"{i}.weight"] * masks[i]  # drop the input units of layer i
        bias = params[f"{i}.bias"]
        h = F.linear(h, weight, bias)
        if i != LAYERS[-1]:
            h = torch.tanh(h)
        penalty = penalty + (weight.square().sum() + bias.square().sum()) / (2 * s**2)
        log_prior = (
            log_prior + dist.Normal(0.0, s).log_prob(torch.cat([weight.flatten(), bias])).sum()
        )
    log_lik = dist.Normal(h[:, 0], sigma).log_prob(y).sum()
    torch_loss = -log_lik + penalty
    optimiser = torch.optim.SGD(list(params.values()), lr=lr)
    optimiser.zero_grad()
    torch_loss.backward()
    optimiser.step()

    # The ELBO loss is that objective up to the prior's normalising constant.
    assert_close(loss, float(-(log_lik + log_prior).detach()), atol=1e-4, rtol=1e-6)
    after = guide.variational_parameters()
    moved = max(float((after[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-3, moved
    for name, value in params.items():
        assert_close(after[f"net.{name}"], value.detach(), atol=1e-6, rtol=0, msg=name)


def test_guide_draws_lie_on_the_support_of_q():
    """W_i = M_i diag(z_i): every sampled column is either 0 or the column of M_i, dropped with
    frequency p (2000 networks x 5 or 4 units: sd of the frequency 0.005, tolerance 0.03); biases are
    point masses."""
    model = deep_model()
    guide = DropoutGuide(model, p=0.3)
    x, y = xy()
    guide(x, y)
    assert guide.dropped == ("2.weight", "4.weight")
    means = guide.variational_parameters()
    samples = posterior_samples(model, guide, x, num_samples=2000, seed=0)
    for site in ("net.2.weight", "net.4.weight"):
        w = samples[site]
        zero = (w == 0).all(-2)
        kept = (w == means[site]).all(-2)
        assert bool((zero | kept).all())
        assert abs(float(zero.float().mean()) - 0.3) < 0.03
    for site in ("net.0.weight", "net.0.bias", "net.4.bias"):
        assert bool((samples[site] == means[site]).all())


# --- test-time prediction ---------------------------------------------------------------------


def test_mc_dropout_predictive_variance():
    """predict(model, guide, x, T) is MC dropout: T sampled networks (one mask per unit each,
    shared by all test points), E[y] = mean_t f_t and V[y] = sigma^2 + mean_t f_t^2 - E[y]^2
    exactly (1e-6) on the returned outputs, with the known sigma = 0.3."""
    torch.manual_seed(0)
    model = BNN(MLP(3, 1, hidden=(8,)), Homoscedastic(sigma=0.3, learn=False), prior=normal(1.0))
    guide = DropoutGuide(model, p=0.2)
    x, y = xy(32)
    fit(model, guide, x, y, num_steps=20, seed=0, progress=False)
    pred = predict(model, guide, x, num_samples=64, seed=4)
    f = pred.output[..., 0]
    u = pred.uncertainty
    assert_close(u.mean, f.mean(0), atol=1e-6)
    assert_close(u.total, 0.3**2 + f.square().mean(0) - f.mean(0).square(), atol=1e-6)
    assert_close(u.total, 0.3**2 + f.var(0, unbiased=False), atol=1e-6)
    assert float(u.epistemic.min()) > 0
    # Each of the T outputs is one whole network: the same draws through network_output.
    samples = posterior_samples(model, guide, x, num_samples=64, seed=4)
    for t in (0, 17, 63):
        weights = {s: samples[s][t] for s in model.weight_sites}
        assert_close(pred.output[t], model.network_output(x, weights), atol=1e-6)


def test_weight_scaling_matches_mc_average_on_a_linear_model():
    """For a linear model E_q[f(x; W)] = f(x; (1 - p) M) exactly, so the MC-dropout mean converges
    to the weight-scaling prediction; its RMS error over 200 inputs and 20 repeats is the
    theoretical sqrt(mean_x sum_k p (1 - p) m_k^2 x_k^2 / T) within 15% and shrinks like
    1/sqrt(T): ratio for T = 100 vs 10,000 in [4, 20] (ideal 10). Observed: RMS / theory 1.02
    and 0.98, ratio 10.4."""
    torch.manual_seed(0)
    model = BNN(nn.Linear(20, 1), Homoscedastic(sigma=0.3, learn=False), prior=normal(1.0))
    p = 0.5
    guide = DropoutGuide(model, p=p, drop_inputs=True)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(200, 20, generator=gen)
    guide(x, torch.zeros(200))
    scaled = predict(model, guide.weight_scaling(), x, num_samples=None)
    assert scaled.num_samples == 1
    assert_close(scaled.mean, guide.scaled_network()(x)[:, 0].detach(), atol=1e-6)
    m = guide.variational_parameters()["net.weight"][0]
    assert_close(scaled.mean, x @ ((1 - p) * m) + model.net.bias.detach(), atol=1e-5)

    rms = {}
    for num_samples in (100, 10_000):
        errors = torch.stack(
            [
                predict(model, guide, x, num_samples=num_samples, seed=r).mean - scaled.mean
                for r in range(20)
            ]
        )
        rms[num_samples] = float(errors.square().mean().sqrt())
        theory = math.sqrt(float((p * (1 - p) * m**2 * x**2).sum(-1).mean()) / num_samples)
        assert abs(rms[num_samples] / theory - 1) < 0.15, (num_samples, rms[num_samples], theory)
    ratio = rms[100] / rms[10_000]
    assert 4 <= ratio <= 20, rms
    assert rms[10_000] < 0.02 * float(scaled.mean.std()), rms


@pytest.mark.slow
def test_mc_dropout_epistemic_grows_in_the_gap():
    """On the 1-D toy with a gap in (-1, 1), the MC-dropout epistemic sd (T = 500) inside the
    gap, |x| <= 0.5, is >= 1.5x its mean on the training inputs. Three ReLU layers: with one
    hidden layer dropout's in-between uncertainty stays flat (Foong et al., 2019; observed ratios
    0.3-0.9). Observed for seeds 0-6 (800 steps): 1.7-2.5; ~4 s."""
    data = homoscedastic(200, noise_std=0.2, gap=(-1.0, 1.0), seed=0)
    torch.manual_seed(0)
    model = BNN(
        MLP(1, 1, hidden=(32, 32, 32), activation="relu"),
        Homoscedastic(sigma=0.2, learn=False),
        prior=normal(1.0),
    )
    guide = DropoutGuide(model, p=0.1)
    fit(model, guide, data.x_train, data.y_train, num_steps=800, lr=0.01, seed=0, progress=False)
    on_data = predict(model, guide, data.x_train, num_samples=500, seed=1).epistemic.sqrt()
    gap = torch.linspace(-0.5, 0.5, 41).unsqueeze(-1)
    in_gap = predict(model, guide, gap, num_samples=500, seed=1).epistemic.sqrt()
    ratio = float(in_gap.mean() / on_data.mean())
    assert ratio >= 1.5, (ratio, float(in_gap.mean()), float(on_data.mean()))


def test_combined_heteroscedastic_dropout_model():
    """Kendall & Gal's combined model: a heteroscedastic likelihood with MC dropout; the
    aleatoric part is the mean over networks of sigma_t(x)^2, the epistemic part the variance of
    mu_t(x)."""
    torch.manual_seed(0)
    model = BNN(MLP(1, 2, hidden=(16,)), Heteroscedastic(), prior=normal(1.0))
    guide = DropoutGuide(model, p=0.2)
    x = torch.linspace(-2, 2, 40).unsqueeze(-1)
    y = torch.sin(x[:, 0]) + 0.1 * (1 + x[:, 0].abs()) * torch.randn(40)
    fit(model, guide, x, y, num_steps=50, seed=0, progress=False)
    pred = predict(model, guide, x, num_samples=30, seed=0)
    mu, sigma = pred.output[..., 0], model.likelihood.scale(pred.output)
    assert_close(pred.aleatoric, sigma.square().mean(0), atol=1e-6)
    assert_close(pred.epistemic, mu.var(0, unbiased=False), atol=1e-6)
    assert float(pred.aleatoric.std()) > 0


# --- the families -----------------------------------------------------------------------------


def test_gaussian_family_noise():
    """z ~ N(1, alpha), alpha = p / (1 - p) = 1/3 for p = 0.25: recovered from 4000 sampled
    networks x 4 units, mean 1 +- 0.03 and variance alpha +- 10%; weight scaling keeps M (E[z] =
    1); an explicit alpha overrides p."""
    model = deep_model()
    guide = DropoutGuide(model, p=0.25, family="gaussian")
    x, y = xy()
    fit(model, guide, x, y, num_steps=10, seed=0, progress=False)
    assert guide.dropout_rates() == {"net.2.weight": 0.25, "net.4.weight": 0.25}
    m = guide.variational_parameters()["net.4.weight"]
    w = posterior_samples(model, guide, x, num_samples=4000, seed=0)["net.4.weight"]
    z = w[:, 0, :] / m[0]
    assert abs(float(z.mean()) - 1) < 0.03
    assert abs(float(z.var()) / (1 / 3) - 1) < 0.1
    assert_close(guide.weight_scaling()["net.4.weight"][0], m)
    pred = predict(model, guide, x, num_samples=10)
    assert pred.output.shape == (10, 16, 1)
    pyro.clear_param_store()
    other = DropoutGuide(deep_model(), p=0.25, family="gaussian", alpha=0.01)
    other(x, y)
    assert other.dropout_rates()["net.4.weight"] == pytest.approx(0.01 / 1.01)
    m = other.variational_parameters()["net.4.weight"]
    w = posterior_samples(other.bnn, other, x, num_samples=4000, seed=0)["net.4.weight"]
    assert abs(float((w[:, 0, :] / m[0]).var()) / 0.01 - 1) < 0.1


def test_concrete_objective_includes_the_bernoulli_entropy():
    """Trace_ELBO's loss with the Concrete guide is the paper's objective at one relaxed draw:
    -log p(d | w) - log p(w) - sum_i K_i H(p_i), with w = M_bar diag(z) / (1 - p); and the
    gradient reaches every layer's dropout rate."""
    model = deep_model()
    guide = DropoutGuide(model, p=0.2, family="concrete", temperature=0.1)
    x, y = xy()
    guide(x, y)
    elbo = Trace_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(5)
    loss = elbo.loss(model, guide, x, y)
    pyro.set_rng_seed(5)
    guide_trace = poutine.trace(guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    model_trace.compute_log_prob()
    log_p = sum(s["log_prob_sum"] for s in model_trace.nodes.values() if s["type"] == "sample")
    entropy = sum(k * bernoulli_entropy(0.2) for k in (5, 4))  # input units of layers 2 and 4
    assert_close(loss, float((-log_p - entropy).detach()), atol=1e-4, rtol=1e-6)
    # The relaxed masks lie strictly inside (0, 1), and the weights are M_bar z / (1 - p).
    z = guide_trace.nodes["net.2.weight_mask"]["value"]
    assert bool(((z > 0) & (z < 1)).all())
    mean = pyro.param("DropoutGuide.means.2.weight").detach()
    assert_close(guide_trace.nodes["net.2.weight"]["value"], mean * z / 0.8, atol=1e-6)
    # Gradients reach the dropout rates.
    loss = elbo.differentiable_loss(model, guide, x, y)
    logits = [pyro.param(f"DropoutGuide.dropout_logits.{i}.weight") for i in ("2", "4")]
    grads = torch.autograd.grad(loss, logits)
    assert all(float(g.abs()) > 0 for g in grads)


def _concrete_rate(n: int) -> float:
    pyro.clear_param_store()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, generator=gen) * 6 - 3
    y = torch.sin(2 * x[:, 0]) + 0.3 * x[:, 0] + 0.2 * torch.randn(n, generator=gen)
    torch.manual_seed(0)
    model = BNN(MLP(1, 1, hidden=(32,)), Homoscedastic(sigma=0.2, learn=False), prior=normal(1.0))
    guide = DropoutGuide(model, p=0.2, family="concrete")
    fit(model, guide, x, y, num_steps=600, lr=0.01, seed=0, progress=False)
    return guide.dropout_rates()["net.2.weight"]


@pytest.mark.slow
def test_concrete_dropout_rate_shrinks_with_more_data():
    """Gal, Hron & Kendall's qualitative result: the learned p of the same architecture is
    smaller with 10x more data (the likelihood outweighs the entropy term). Observed (600
    steps, from p = 0.2): 0.11 with 20 points, 0.05 with 200; ~4 s."""
    little, more = _concrete_rate(20), _concrete_rate(200)
    assert more < 0.7 * little, f"learned p: {little:.4f} with 20 points, {more:.4f} with 200"


# --- contract ---------------------------------------------------------------------------------


def test_works_with_fit_minibatches_and_vectorised_particles():
    model = deep_model(likelihood=Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)))
    guide = DropoutGuide(model, p=0.1)
    x, y = xy(40)
    history = fit(model, guide, x, y, num_steps=30, batch_size=10, seed=0, progress=False)
    assert all(math.isfinite(v) for v in history.loss)
    loss = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    fit(model, guide, x, y, num_steps=5, loss=loss, seed=0, progress=False)
    # sigma is a point mass at a learned positive value.
    values = guide.variational_parameters()
    samples = posterior_samples(model, guide, x, num_samples=5, seed=0)
    assert bool((samples["sigma"] == values["sigma"]).all()) and float(values["sigma"]) > 0
    pred = predict(model, guide, x, num_samples=8)
    assert pred.output.shape == (8, 40, 1)
    assert guide.weight_scaling()["sigma"].shape == (1,)


def test_save_and_load_round_trip(tmp_path):
    """A fitted Concrete guide (means, learned rates, sigma) saved and loaded into a fresh model
    and guide predicts identically."""
    x, y = xy(40)
    likelihood = Homoscedastic(prior=dist.LogNormal(-1.0, 1.0))
    model = deep_model(likelihood=likelihood)
    guide = DropoutGuide(model, p=0.2, family="concrete")
    fit(model, guide, x, y, num_steps=30, lr=0.05, seed=0, progress=False)
    before = predict(model, guide, x, num_samples=10, seed=2)
    rates = guide.dropout_rates()
    path = save_posterior(tmp_path / "dropout.pt", model, guide, example_input=x, example_target=y)
    pyro.clear_param_store()
    torch.manual_seed(1)
    fresh_model = BNN(MLP(3, 1, hidden=(5, 4), activation="tanh"), likelihood, prior=normal(0.8))
    fresh = load_posterior(path, fresh_model, DropoutGuide(fresh_model, p=0.5, family="concrete"))
    assert fresh.dropout_rates() == rates
    after = predict(fresh_model, fresh, x, num_samples=10, seed=2)
    assert_close(after.output, before.output, atol=1e-6)


def test_flat_model_gives_the_same_guide():
    """flat=True: the "weights" vector is assembled from the same per-layer pieces, so the
    loss at a seed and the weight-scaling prediction match the per-site model."""
    x, y = xy()
    results = []
    for flat in (False, True):
        pyro.clear_param_store()
        model = deep_model(flat=flat)
        guide = DropoutGuide(model, p=0.3, drop_inputs=True)
        guide(x, y)
        pyro.set_rng_seed(7)
        loss = Trace_ELBO(max_plate_nesting=1).loss(model, guide, x, y)
        mean = predict(model, guide.weight_scaling(), x, num_samples=None).mean
        mc = predict(model, guide, x, num_samples=6, seed=1).output
        results.append((loss, mean, mc))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert_close(results[0][1], results[1][1], atol=1e-6)
    assert_close(results[0][2], results[1][2], atol=1e-6)


def test_classification():
    torch.manual_seed(0)
    model = BNN(MLP(2, 3, hidden=(8,)), Categorical(3), prior=normal(1.0))
    guide = DropoutGuide(model, p=0.3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=gen)
    y = torch.randint(0, 3, (30,), generator=gen)
    fit(model, guide, x, y, num_steps=20, seed=0, progress=False)
    pred = predict(model, guide, x, num_samples=16)
    assert pred.params["probs"].shape == (16, 30, 3)
    u = pred.uncertainty
    assert_close(u.total, u.aleatoric + u.epistemic, atol=1e-5)
    assert float(u.epistemic.max()) > 0
    scaled = predict(model, guide.weight_scaling(), x, num_samples=None)
    assert scaled.params["probs"].shape == (1, 30, 3)


def test_dropped_weights_and_dropout_rates():
    model = deep_model()
    assert dropped_weights(model) == ("2.weight", "4.weight")
    assert dropped_weights(model, drop_inputs=True) == ("0.weight", "2.weight", "4.weight")
    torch.manual_seed(0)
    last = BNN(MLP(3, 1, hidden=(5, 4)), Homoscedastic(), prior=normal(1.0), bayesian="last")
    assert dropped_weights(last) == ("4.weight",)
    guide = DropoutGuide(model, p=0.3, family="concrete")
    with pytest.raises(RuntimeError, match="fit it first"):
        guide.dropout_rates()
    guide(*xy())
    assert guide.dropout_rates() == pytest.approx({"net.2.weight": 0.3, "net.4.weight": 0.3})


def test_bad_arguments():
    model = deep_model()
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="p must lie in"):
            DropoutGuide(model, p=p)
    with pytest.raises(TypeError, match="p must be a number"):
        DropoutGuide(model, p="0.1")
    with pytest.raises(ValueError, match="family"):
        DropoutGuide(model, family="spike-and-slab")
    with pytest.raises(ValueError, match="alpha"):
        DropoutGuide(model, family="gaussian", alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        DropoutGuide(model, family="bernoulli", alpha=0.5)
    with pytest.raises(ValueError, match="p must be > 0"):
        DropoutGuide(model, p=0.0, family="gaussian")
    with pytest.raises(ValueError, match=r"p must lie in \(0, 1\)"):
        DropoutGuide(model, p=0.0, family="concrete")
    with pytest.raises(ValueError, match="temperature"):
        DropoutGuide(model, family="concrete", temperature=0.0)
    with pytest.raises(TypeError, match=r"model must be a bayesdl\.models\.BNN"):
        DropoutGuide(model.net, p=0.1)
    linear = BNN(nn.Linear(3, 1), Homoscedastic(), prior=normal(1.0))
    with pytest.raises(ValueError, match="drop_inputs=True"):
        DropoutGuide(linear, p=0.1)
    with pytest.warns(UserWarning, match=r"nn\.Dropout"):
        DropoutGuide(BNN(MLP(3, 1, hidden=(4,), dropout=0.1), Homoscedastic()), p=0.1)


def test_p_zero_is_a_map_point_estimate():
    """With p = 0 no unit is ever dropped: every draw is M, weight scaling is M."""
    model = deep_model()
    guide = DropoutGuide(model, p=0.0)
    x, y = xy()
    guide(x, y)
    samples = posterior_samples(model, guide, x, num_samples=5, seed=0)
    means = guide.variational_parameters()
    assert bool((samples["net.4.weight"] == means["net.4.weight"]).all())
    assert_close(guide.weight_scaling()["net.4.weight"][0], means["net.4.weight"])
