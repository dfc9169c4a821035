"""Infinite networks: prior sampling, NNGP kernels against wide networks, GP regression, studies."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from bayesdl import data
from bayesdl.inference import predict
from bayesdl.infinite import (
    ArcCosineKernel,
    DeepReLUKernel,
    ErfKernel,
    MonteCarloKernel,
    bnn_vs_gp,
    empirical_kernel,
    fit_gp,
    gp_predict,
    gp_regression,
    hidden_moments,
    kernel_convergence,
    kernel_for,
    kurtosis_theory,
    log_marginal_likelihood,
    neal_figure_2_2,
    prior_kurtosis,
    prior_variance,
    sample_prior_functions,
)
from bayesdl.infinite import prior as prior_module
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP
from bayesdl.priors import NealPrior
from tests.common import assert_close

HYPER = {"sigma_u": 1.5, "sigma_a": 0.7, "omega_v": 1.3, "sigma_b": 0.4}

# Pairs that matter: x = x' (the diagonal), nearby points, opposite signs, and very different
# norms (0.05 against 8 and 20), in two input dimensions.
X2 = torch.tensor([[0.0, 0.0], [0.05, -0.02], [1.0, 0.5], [-1.0, 0.3], [8.0, -4.0], [-20.0, 15.0]])


def _squared_relu(z: torch.Tensor) -> torch.Tensor:
    return torch.relu(z).square()


CLOSED_FORMS = [
    (ErfKernel, {}, "erf"),
    (ArcCosineKernel, {"order": 0}, "step"),
    (ArcCosineKernel, {"order": 1}, "relu"),
    (ArcCosineKernel, {"order": 2}, _squared_relu),
]


# -- kernels against wide networks ---------------------------------------------------------------


@pytest.mark.parametrize(("cls", "extra", "activation"), CLOSED_FORMS)
def test_closed_form_kernel_matches_a_network_of_100k_units(cls, extra, activation):
    kernel = cls(2, **extra, **HYPER).double()
    with torch.no_grad():
        k = kernel(X2.double())
    k_q, se = empirical_kernel(X2, 100_000, activation=activation, seed=1, **HYPER)
    # Each entry is a mean over 1e5 independent units: within 5 standard errors (the chance that
    # any of the 21 distinct entries strays further is below 1e-4), plus float64 rounding.
    z = (k_q - k).abs() / (se + 1e-9 * k.abs())
    assert z.max() < 5, f"max |K_q - K| / se = {z.max():.2f}"
    # The standard errors are small enough for the check to bite: an error of 2% of the scale
    # sqrt(K(x, x) K(x', x')) is visible (heavy-tailed squared ReLU units need 2%).
    scale = torch.sqrt(k.diag()[:, None] * k.diag()[None, :])
    assert (se / scale).max() < 0.02


def test_deep_relu_kernel_with_one_layer_is_the_order_one_arc_cosine_kernel():
    d = X2.shape[1]
    deep = DeepReLUKernel(d, depth=1, sigma_w=1.7, sigma_b=0.3).double()
    arc = ArcCosineKernel(
        d, 1, sigma_u=1.7 / math.sqrt(d), sigma_a=0.3, omega_v=1.7, sigma_b=0.3
    ).double()
    with torch.no_grad():
        # Equal up to rounding, which acos amplifies near x = x' (cos theta = 1).
        assert_close(deep(X2.double()), arc(X2.double()), atol=1e-9, rtol=1e-6)


def test_deep_relu_kernel_matches_wide_deep_networks():
    depth, width, networks, sigma_w, sigma_b = 3, 2000, 8, 1.5, 0.2
    x = X2[:5].double()
    gen = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(networks):
        h, fan_in = x, x.shape[1]
        for _ in range(depth):
            w = torch.randn(fan_in, width, generator=gen, dtype=torch.float64)
            b = torch.randn(width, generator=gen, dtype=torch.float64)
            h = torch.relu(h @ w * (sigma_w / math.sqrt(fan_in)) + sigma_b * b)
            fan_in = width
        # The output layer's covariance given the last hidden layer, averaged over networks.
        estimates.append(sigma_b**2 + sigma_w**2 * h @ h.T / width)
    est = torch.stack(estimates)
    mean, se = est.mean(0), est.std(0) / math.sqrt(networks)
    with torch.no_grad():
        k = DeepReLUKernel(2, depth, sigma_w, sigma_b).double()(x)
    # Monte Carlo error across networks, plus the O(1/width) finite-width bias (measured below
    # 0.5% here); 2% of K bounds both with room.
    assert ((mean - k).abs() <= 5 * se + 0.02 * k.abs()).all(), (mean - k) / k


def test_monte_carlo_kernel_matches_the_closed_form_for_erf():
    mc = MonteCarloKernel(2, "erf", num_features=200_000, seed=3, **HYPER).double()
    exact = ErfKernel(2, **HYPER).double()
    with torch.no_grad():
        assert_close(mc(X2.double()), exact(X2.double()), atol=0.02, rtol=0.01)
        assert_close(mc(X2.double(), diag=True), mc(X2.double()).diag(), atol=1e-10, rtol=1e-10)


def test_tanh_kernel_agrees_with_the_erf_kernel_at_small_weights():
    # tanh(z) ~ z ~ erf(z) * sqrt(pi) / 2 near 0: the kernels agree to O(sigma^4).
    small = {"sigma_u": 0.05, "sigma_a": 0.05, "omega_v": 1.0, "sigma_b": 0.0001}
    x = torch.tensor([[-1.0], [0.3], [1.0]], dtype=torch.float64)
    with torch.no_grad():
        tanh = MonteCarloKernel(1, "tanh", 100_000, **small).double()(x)
        erf = ErfKernel(1, **small).double()(x) * math.pi / 4
    assert_close(tanh, erf, atol=2e-4, rtol=0.02)


KERNELS = [
    lambda d: ErfKernel(d, **HYPER),
    lambda d: ArcCosineKernel(d, 0, **HYPER),
    lambda d: ArcCosineKernel(d, 1, **HYPER),
    lambda d: ArcCosineKernel(d, 2, **HYPER),
    lambda d: DeepReLUKernel(d, depth=4),
    lambda d: MonteCarloKernel(d, "tanh", 2048, **HYPER),
]
KERNEL_IDS = ["erf", "arccos0", "arccos1", "arccos2", "deep-relu", "mc-tanh"]


@pytest.mark.parametrize("make", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_matrices_are_symmetric_positive_semidefinite(make, dtype):
    gen = torch.Generator().manual_seed(0)
    x = (
        torch.randn(60, 3, generator=gen, dtype=dtype)
        * torch.logspace(-2, 1, 60, dtype=dtype)[:, None]
    )
    x = torch.cat([x, x[:5]])  # repeated rows: exactly singular directions
    kernel = make(3).to(dtype)
    with torch.no_grad():
        k = kernel(x)
        assert k.dtype == dtype and k.shape == (65, 65)
        assert torch.isfinite(k).all()
        assert_close(k, k.T, atol=0, rtol=1e-12)
        eig = torch.linalg.eigvalsh(k.double())
        assert eig.min() >= -1e-6 * eig.max(), f"min eigenvalue {eig.min():.3g} of {eig.max():.3g}"
        assert_close(kernel(x, diag=True), k.diag(), atol=1e-5, rtol=1e-5)
        z = x[:7]
        assert_close(kernel(x, z), k[:, :7], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", KERNELS, ids=KERNEL_IDS)
def test_gp_marginal_likelihood_is_finite_and_reaches_every_hyperparameter(make):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(30, 2, generator=gen, dtype=torch.float64) * 4 - 2
    y = torch.sin(x.sum(-1)) + 0.1 * torch.randn(30, generator=gen, dtype=torch.float64)
    kernel = make(2)
    gp = gp_regression(x, y, kernel, noise=0.2).double()
    lml = log_marginal_likelihood(gp)
    assert torch.isfinite(lml)
    names = [n for n, _ in kernel.named_parameters()]
    assert len(names) >= 2
    lml.backward()
    for name, p in kernel.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_each_kernel_keeps_its_own_hyperparameters():
    # Pyro keeps PyroParams in a global store by name: two kernels must not share values.
    a = ErfKernel(1, sigma_u=2.0)
    b = ErfKernel(1, sigma_u=0.5)
    x = torch.tensor([[1.0]])
    assert a.sigma_u.item() == pytest.approx(2.0)
    assert b.sigma_u.item() == pytest.approx(0.5)
    assert not torch.allclose(a(x), b(x))
    g1 = gp_regression(x[:, 0], torch.zeros(1), ErfKernel(1, sigma_b=3.0), noise=0.1)
    g2 = gp_regression(x[:, 0], torch.zeros(1), ErfKernel(1, sigma_b=0.1), noise=0.5)
    assert g1.kernel.sigma_b.item() == pytest.approx(3.0)
    assert g2.kernel.sigma_b.item() == pytest.approx(0.1)
    assert g2.noise.item() == pytest.approx(0.25)


# -- prior sampling -----------------------------------------------------------------------------


def test_prior_variance_is_the_limit_and_not_the_slides_expression():
    x = torch.tensor([-2.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    width, draws = 500, 20_000
    f = sample_prior_functions(x, draws, width, activation="tanh", seed=0, **HYPER)
    variance = f.var(0)
    limit = prior_variance(x, activation="tanh", **HYPER)
    # sd of a sample variance: var * sqrt((2 + excess kurtosis) / n); the kurtosis is ~0.
    tol = 5 * limit * math.sqrt(2.2 / draws)
    assert ((variance - limit).abs() < tol).all(), (variance, limit)
    # The slide's sigma_b^2 + omega_v^2 sigma_v^2 V(x), sigma_v = omega_v / sqrt(q), is far off.
    v, _ = hidden_moments("tanh", HYPER["sigma_a"] ** 2 + HYPER["sigma_u"] ** 2 * x.square())
    slide = HYPER["sigma_b"] ** 2 + HYPER["omega_v"] ** 2 * (HYPER["omega_v"] ** 2 / width) * v
    assert ((variance - slide).abs() > 10 * tol).all()


def test_prior_variance_matches_the_erf_closed_form():
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [30.0, 40.0]], dtype=torch.float64)
    with torch.no_grad():
        exact = ErfKernel(2, **HYPER).double()(x, diag=True)
    assert_close(prior_variance(x, activation="erf", **HYPER), exact, atol=1e-9, rtol=1e-6)
    step = prior_variance(x, activation="step", **HYPER)
    assert_close(step, torch.full((3,), HYPER["sigma_b"] ** 2 + HYPER["omega_v"] ** 2 / 2))


def test_prior_functions_do_not_depend_on_the_memory_blocks(monkeypatch):
    x = torch.linspace(-1, 1, 7)
    whole = sample_prior_functions(x, 3, 50, seed=4)
    monkeypatch.setattr(prior_module, "_BLOCK", 21)  # three units of one function per block
    assert_close(sample_prior_functions(x, 3, 50, seed=4), whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sample_prior_functions(x, 3, 50, seed=5), whole)


def test_bnn_with_neal_prior_has_the_kernel_as_prior_covariance():
    # The same prior through the package's BNN: the covariance of f over prior draws is K.
    width, draws = 300, 20_000
    model = BNN(
        MLP(1, 1, hidden=(width,), activation="erf"),
        Homoscedastic(0.1, learn=False),
        NealPrior(**HYPER),
    )
    pyro.set_rng_seed(0)
    samples = {name: p.sample((draws,)) for name, p in model.priors().items()}
    x = torch.tensor([[-1.0], [0.2], [2.5]])
    f = predict(model, samples, x, num_samples=None).params["mean"].double()
    with torch.no_grad():
        k = ErfKernel(1, **HYPER).double()(x.double())
    cov = torch.cov(f.T)
    # Entrywise sd of a sample covariance ~ sqrt((K_ii K_jj + K_ij^2) / n).
    tol = 5 * torch.sqrt((k.diag()[:, None] * k.diag()[None, :] + k.square()) / draws)
    assert ((cov - k).abs() < tol).all(), (cov, k)


def test_neal_figure_shares_the_seed_and_sigma_u_makes_rougher_functions():
    fig = neal_figure_2_2(width=2000)
    assert set(fig.functions) == {5.0, 20.0}
    smooth, rough = fig.functions[5.0], fig.functions[20.0]
    assert smooth.shape == rough.shape == (2, 500)

    def roughness(f: torch.Tensor) -> torch.Tensor:
        return f.diff(dim=-1).abs().sum(-1)  # total variation on the grid

    assert (roughness(rough) > 1.5 * roughness(smooth)).all()
    # Same seed: the same networks, only the input weights rescaled, so the output biases agree
    # and sigma_u = 20 at x is sigma_u = 5 at 4x (where both are defined).
    again = neal_figure_2_2(width=2000)
    assert_close(again.functions[5.0], smooth, atol=0, rtol=0)
    x = torch.tensor([0.1, 0.25])
    at_5 = sample_prior_functions(4 * x, 2, 2000, sigma_u=5.0, sigma_a=20.0, seed=1995)
    at_20 = sample_prior_functions(x, 2, 2000, sigma_u=20.0, sigma_a=20.0, seed=1995)
    assert_close(at_5, at_20, atol=1e-5, rtol=1e-5)


# -- convergence studies -------------------------------------------------------------------------


def test_prior_kurtosis_matches_the_exact_value_and_falls_like_one_over_q():
    rows = prior_kurtosis(
        torch.tensor([1.0]), (1, 4), activation="tanh", sigma_b=0.1, num_draws=200_000, seed=0
    )
    for row in rows:
        assert abs(row["kurtosis"] - row["theory"]) < 4 * row["standard_error"], row
    assert rows[0]["theory"] == pytest.approx(4 * rows[1]["theory"], rel=1e-12)
    # The exact value against a direct integral of the fourth cumulant for ReLU units:
    # E[h^2] = s/2, E[h^4] = 3 s^2 / 2, so with sigma_b -> 0 the kurtosis is 15 / q.
    k = kurtosis_theory(torch.tensor([1.0]), 3, activation="relu", sigma_b=1e-6)
    assert k == pytest.approx(5.0, rel=1e-6)


def test_one_network_kernel_error_shrinks_like_one_over_sqrt_q():
    x = torch.linspace(-3, 3, 20).unsqueeze(-1)
    rows = kernel_convergence(x, (100, 10_000), activation="erf", seed=0)
    ratio = rows[0]["relative_error"] / rows[1]["relative_error"]
    assert 3 < ratio < 30, ratio  # sqrt(100) = 10 expected
    assert rows[1]["max_z"] < 5


@pytest.mark.slow
def test_finite_bnns_approach_the_gp_posterior_as_they_widen():
    toy = data.homoscedastic(40, gap=(-1.0, 1.0), noise_std=0.2, seed=0)
    result = bnn_vs_gp(
        toy,
        (2, 100),
        num_samples=100,
        warmup_steps=100,
        num_chains=2,
        progress=False,
        warn_tree_depth=1.0,
    )
    narrow, wide = result.rows
    assert wide["mean_distance"] < narrow["mean_distance"], result.rows
    assert wide["sd_log_ratio"] < narrow["sd_log_ratio"], result.rows
    assert wide["mean_distance"] < 0.5 and abs(math.log(wide["sd_ratio"])) < 0.3, wide


# -- GP regression -------------------------------------------------------------------------------


def test_gp_regression_predictive_splits_noise_from_function_uncertainty():
    toy = data.homoscedastic(60, gap=(-1.0, 1.0), noise_std=0.2, seed=0)
    gp = gp_regression(toy.x_train, toy.y_train, ErfKernel(1), noise=0.5)
    before = float(log_marginal_likelihood(gp))
    history = fit_gp(gp, num_steps=200, lr=0.05, progress=False)
    after = float(log_marginal_likelihood(gp))
    assert after > before and len(history.loss) == 200
    assert gp.noise.sqrt().item() == pytest.approx(0.2, rel=0.35)  # learnt from 48 points
    pred = gp_predict(gp, torch.tensor([[-2.5], [0.0], [2.5]]))
    assert_close(pred.aleatoric, gp.noise.detach().expand(3), atol=1e-7, rtol=1e-6)
    # Epistemic variance is larger in the gap (x = 0) than among the data.
    assert pred.epistemic[1] > 3 * pred.epistemic[0] and pred.epistemic[1] > 3 * pred.epistemic[2]
    rmse = (gp_predict(gp, toy.x_test).mean - toy.y_test).square().mean().sqrt()
    assert rmse < 0.35


def test_gp_with_fixed_noise_keeps_it():
    x = torch.linspace(-1, 1, 10)
    gp = gp_regression(x, x.sin(), ArcCosineKernel(1, 1), noise=0.3, learn_noise=False)
    fit_gp(gp, num_steps=20, progress=False)
    assert gp.noise.item() == pytest.approx(0.09)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ErfKernel(0), ValueError, "input_dim"),
        (lambda: ErfKernel(1, sigma_u=-1.0), ValueError, "sigma_u"),
        (lambda: ArcCosineKernel(1, order=3), ValueError, "order"),
        (lambda: DeepReLUKernel(1, depth=0), ValueError, "depth"),
        (lambda: MonteCarloKernel(1, "softplus"), ValueError, "activation"),
        (lambda: MonteCarloKernel(1, 3), TypeError, "activation"),
        (lambda: ErfKernel(2)(torch.zeros(3, 1)), ValueError, "2 active columns"),
        (lambda: ErfKernel(1)([[1.0]]), TypeError, "X must be a torch.Tensor"),
        (lambda: kernel_for("softplus"), ValueError, "activation"),
        (lambda: sample_prior_functions(torch.zeros(3), width=0), ValueError, "width"),
        (lambda: sample_prior_functions(torch.zeros(3, 1, 1)), ValueError, "x"),
        (lambda: sample_prior_functions(torch.zeros(3), sigma_u=-1.0), ValueError, "sigma_u"),
        (lambda: gp_regression(torch.zeros(3), torch.zeros(3), "rbf"), TypeError, "kernel"),
        (lambda: gp_regression(torch.zeros(3), torch.zeros(4), ErfKernel(1)), ValueError, "x"),
        (lambda: prior_kurtosis(torch.zeros(1), ()), ValueError, "widths"),
        (lambda: kurtosis_theory(torch.zeros(2, 1), 3), ValueError, "one input"),
        (lambda: bnn_vs_gp("toy"), TypeError, "RegressionData"),
        (lambda: NealPrior(omega_v=0.0), ValueError, "omega_v"),
        (lambda: NealPrior().scale_for(torch.zeros(2), "0.bias"), ValueError, "bound"),
        (lambda: NealPrior().bind(["0.weight", "0.bias"]), ValueError, "hidden layer"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_neal_prior_scales_each_layer_as_in_the_lecture():
    prior = NealPrior(sigma_u=5.0, sigma_a=4.0, omega_v=2.0, sigma_b=0.5)
    model = BNN(MLP(2, 1, hidden=(100,)), Homoscedastic(0.1), prior)
    scales = {n: float(d.base_dist.scale.reshape(-1)[0]) for n, d in model.priors().items()}
    assert scales == pytest.approx(
        {"net.0.weight": 5.0, "net.0.bias": 4.0, "net.2.weight": 0.2, "net.2.bias": 0.5}
    )
    flat = BNN(MLP(2, 1, hidden=(100,)), Homoscedastic(0.1), prior, flat=True)
    assert sorted(set(flat.priors()["weights"].base_dist.scale.tolist())) == pytest.approx(
        [0.2, 0.5, 4.0, 5.0]
    )


def test_a_kernel_hyperparameter_can_have_a_prior():
    import pyro.distributions as dist
    from pyro.nn import PyroSample

    x = torch.linspace(-2, 2, 20)
    kernel = ErfKernel(1)
    kernel.sigma_u = PyroSample(dist.LogNormal(0.0, 1.0))
    gp = gp_regression(x, torch.sin(2 * x), kernel, noise=0.1)
    history = fit_gp(gp, num_steps=200, progress=False)
    assert history.loss[-1] < history.loss[0] - 10
    # pyro.contrib.gp fits a hyperparameter with a prior by MAP (a Delta autoguide).
    assert any("sigma_u_map" in name for name, _ in gp.named_parameters())
    assert torch.isfinite(gp_predict(gp, torch.tensor([0.5])).mean).all()
