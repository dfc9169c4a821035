"""Tests of :func:`bayesdl.inference.fit`: convergence, minibatch scaling, NaN safety, inputs."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value

from bayesdl import data
from bayesdl.inference import History, TrainingDivergedError, fit, scale_data_plate
from bayesdl.nn import MLP
from tests.common import assert_close

NAN = float("nan")

# --- models -----------------------------------------------------------------------------------


def linear_model(x, y=None):
    """Bayesian linear regression ``y ~ N(w0 x + w1, 0.5^2)`` with a global ``w ~ N(0, I)``."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    mean = w[..., 0:1] * x.squeeze(-1) + w[..., 1:2]
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mean, 0.5), obs=y)


def linear_data(n=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=gen)
    y = 0.8 * x.squeeze(-1) - 0.3 + 0.5 * torch.randn(n, generator=gen)
    return x, y


def delta_guide(record=None):
    """A hand-written point-mass guide for ``linear_model``; optionally records its batches."""

    def guide(x, y=None):
        if record is not None:
            record.append(x.detach().clone())
        loc = pyro.param("w_loc", torch.zeros(2))
        pyro.sample("w", dist.Delta(loc).to_event(1))

    return guide


def counting_model(hook):
    """Maximum-likelihood model ``y ~ N(mu, scale^2)`` that calls ``hook(step, mu, scale)``.

    ``fit`` calls the model once to create the parameters and then once per step (no guide), so
    call ``c`` belongs to step ``c - 1``. The hook returns an extra log-factor or ``None``.
    """
    calls = 0

    def model(x, y=None):
        nonlocal calls
        calls += 1
        mu = pyro.param("mu", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        extra = hook(calls - 1, mu, scale)
        if extra is not None:
            with pyro.validation_enabled(False):
                pyro.factor("extra", extra)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, scale), obs=y)

    return model


def mean_data(n=20, loc=3.0):
    y = loc + torch.linspace(-1, 1, n)
    return y.unsqueeze(-1), y


def current_params():
    store = pyro.get_param_store()
    return {k: store[k].detach().clone() for k in store}


# --- fit learns -------------------------------------------------------------------------------


def test_fit_recovers_homoscedastic_noise():
    d = data.homoscedastic(2000, noise_std=0.2, seed=0)
    net = MLP(1, 1, hidden=(16, 16), activation="tanh")

    def model(x, y=None):
        pyro.module("net", net)
        sigma = pyro.param("sigma", torch.tensor(1.0), constraint=constraints.positive)
        mean = net(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)

    history = fit(model, None, d.x_train, d.y_train, num_steps=400, lr=0.03, progress=False)
    assert isinstance(history, History)
    assert history.num_steps == 400
    assert history.batch_size == d.x_train.shape[0]
    assert not history.interrupted
    assert history.wall_time > 0
    assert all(math.isfinite(v) for v in history.loss)
    n = d.x_train.shape[0]
    first, last = sum(history.loss[:50]) / 50, sum(history.loss[-50:]) / 50
    # Per point: from ~0.5 (sigma ~ 1, poor mean) to log(0.2) + 1.42 ~ -0.19 at the optimum.
    assert last < first - 0.5 * n
    assert last / n < -0.15
    sigma = pyro.param("sigma").item()
    assert abs(sigma / 0.2 - 1) < 0.1
    # Sharper: the maximum-likelihood sigma is the realised residual scale of the training set.
    realised = (d.y_train - d.mean_fn(d.x_train.squeeze(-1))).square().mean().sqrt().item()
    assert abs(sigma / realised - 1) < 0.03
    with torch.no_grad():
        error = net(d.x_test).squeeze(-1) - d.mean_fn(d.x_test.squeeze(-1))
    assert error.square().mean().sqrt() < 0.1


def test_fit_conjugate_normal_posterior():
    # mu ~ N(0, tau^2), y_i ~ N(mu, s^2): the posterior is Gaussian, so AutoNormal is exact and
    # the converged loss is minus the log evidence.
    tau, s, n = 2.0, 1.0, 50
    y = 1.0 + s * torch.randn(n, generator=torch.Generator().manual_seed(1))

    def model(x, y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, tau))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, s), obs=y)

    post_var = 1 / (1 / tau**2 + n / s**2)
    post_mean = post_var * y.sum().item() / s**2
    cov = s**2 * torch.eye(n, dtype=torch.float64) + tau**2
    log_evidence = dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov)
    log_evidence = log_evidence.log_prob(y.double()).item()

    guide = AutoNormal(model)
    elbo = Trace_ELBO(num_particles=32, vectorize_particles=True, max_plate_nesting=1)
    history = fit(
        model,
        guide,
        y.unsqueeze(-1),
        y,
        num_steps=400,
        optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.99}),
        loss=elbo,
        seed=0,
        progress=False,
    )
    last = sum(history.loss[-50:]) / 50
    assert history.loss[0] > last + 10
    assert abs(last + log_evidence) < 0.05
    loc = pyro.param("AutoNormal.locs.mu").item()
    scale = pyro.param("AutoNormal.scales.mu").item()
    sd = math.sqrt(post_var)
    assert abs(loc - post_mean) < 0.1 * sd
    assert abs(scale / sd - 1) < 0.05


def _ridge_solution(x, y):
    """Minimiser of -log p(w) - log p(y | w) for ``linear_model``: ridge regression."""
    features = torch.cat([x, torch.ones_like(x)], dim=-1).double()
    precision = features.T @ features / 0.25 + torch.eye(2, dtype=torch.float64)
    return torch.linalg.solve(precision, features.T @ y.double() / 0.25)


def test_fit_full_batch_map_matches_closed_form():
    # With a point-mass guide the loss is the negative log joint: its minimiser is ridge regression.
    x, y = linear_data(200)
    history = fit(linear_model, delta_guide(), x, y, num_steps=200, lr=0.1, progress=False)
    assert history.loss[-1] < history.loss[0]
    assert_close(pyro.param("w_loc"), _ridge_solution(x, y), atol=1e-3, rtol=0)


# --- minibatches ------------------------------------------------------------------------------


def test_scale_data_plate_scales_only_the_data_plate():
    x, y = linear_data(10)
    trace = poutine.trace(scale_data_plate(7.0)(linear_model)).get_trace(x, y)
    assert trace.nodes["w"]["scale"] == 1.0
    assert trace.nodes["obs"]["scale"] == 7.0
    other = poutine.trace(scale_data_plate(7.0, plate="batch")(linear_model)).get_trace(x, y)
    assert other.nodes["obs"]["scale"] == 1.0
    trace.compute_log_prob()
    plain = poutine.trace(poutine.replay(linear_model, trace=trace)).get_trace(x, y)
    plain.compute_log_prob()
    assert_close(trace.nodes["obs"]["log_prob_sum"], 7.0 * plain.nodes["obs"]["log_prob_sum"])


def test_minibatch_loss_is_unbiased():
    n, b, num_batches = 100, 10, 800
    x, y = linear_data(n, seed=3)
    w = torch.tensor([0.3, -0.2])
    guide = AutoDelta(linear_model, init_loc_fn=init_to_value(values={"w": w}))
    elbo = Trace_ELBO()
    full = elbo.loss(linear_model, guide, x, y)
    # With a point mass the loss is exactly -log p(w) - sum_i log p(y_i | w).
    per_point = dist.Normal(w[0] * x.squeeze(-1) + w[1], 0.5).log_prob(y).double()
    log_prior = dist.Normal(0.0, 1.0).log_prob(w).sum().item()
    assert_close(full, -log_prior - per_point.sum().item(), rtol=1e-5, atol=1e-3)

    scale = n / b
    model_b, guide_b = scale_data_plate(scale)(linear_model), scale_data_plate(scale)(guide)
    wrong_model = poutine.scale(linear_model, scale)  # scales the prior on w as well
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(n, generator=gen)[:b] for _ in range(num_batches)]
    losses = [elbo.loss(model_b, guide_b, x[idx], y[idx]) for idx in batches]
    wrong = [elbo.loss(wrong_model, guide, x[idx], y[idx]) for idx in batches]
    # Only the batch is random: the same batch gives the same loss.
    idx = batches[-1]
    assert elbo.loss(model_b, guide_b, x[idx], y[idx]) == losses[-1]
    # Sampling b of n without replacement: Var[(n/b) sum_batch l_i] = n^2 (1 - b/n) S^2 / b.
    se = math.sqrt(n**2 * (1 - b / n) * per_point.var().item() / b / num_batches)
    assert abs(sum(losses) / num_batches - full) < 4 * se
    # The test has the power to tell: scaling the prior too biases the estimate by
    # -(n/b - 1) log p(w) ~ 17, about 11 standard errors here.
    assert abs(sum(wrong) / num_batches - full) > 6 * se


def test_fit_minibatches():
    n, b, steps = 10, 3, 12
    x = torch.arange(float(n)).unsqueeze(-1)
    y = torch.zeros(n)
    record = []
    history = fit(
        linear_model, delta_guide(record), x, y, num_steps=steps, batch_size=b, progress=False
    )
    assert history.batch_size == b
    assert len(history.loss) == steps
    # One call to create the parameters, then one per step; every batch has b distinct points.
    assert len(record) == steps + 1
    batches = [set(r.flatten().long().tolist()) for r in record]
    assert all(len(batch) == b for batch in batches)
    # Epoch-wise shuffling: the n // b batches of one epoch are disjoint.
    per_epoch = n // b
    for start in range(0, len(batches) - per_epoch + 1, per_epoch):
        epoch = batches[start : start + per_epoch]
        assert len(set().union(*epoch)) == per_epoch * b
    assert len(set().union(*batches)) == n


def test_fit_minibatch_loss_on_full_data_scale():
    # For a fixed point-mass guide (lr ~ 0) the reported minibatch losses average to the full loss.
    x, y = linear_data(200, seed=1)
    history = fit(
        linear_model,
        delta_guide(),
        x,
        y,
        num_steps=400,
        batch_size=20,
        optim=pyro.optim.SGD({"lr": 0.0}),
        progress=False,
    )
    full = Trace_ELBO().loss(linear_model, delta_guide(), x, y)
    losses = torch.tensor(history.loss, dtype=torch.float64)
    assert abs(losses.mean().item() - full) < 4 * losses.std().item() / math.sqrt(len(losses))
    assert abs(losses.mean().item() - full) < 0.05 * abs(full)


def test_fit_minibatch_converges_to_full_batch_solution():
    x, y = linear_data(400, seed=2)
    optim = pyro.optim.ClippedAdam({"lr": 0.1, "lrd": 0.985})
    history = fit(
        linear_model, delta_guide(), x, y, num_steps=300, batch_size=40, optim=optim, progress=False
    )
    assert history.batch_size == 40
    assert_close(pyro.param("w_loc"), _ridge_solution(x, y), atol=0.03, rtol=0)


# --- divergence -------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("fail_step", [1, 7])
def test_nan_loss_stops_and_restores(fail_step):
    seen = {}

    def hook(step, mu, scale):
        seen[step] = {"mu": mu.detach().clone(), "scale": scale.detach().clone()}
        # NaN loss and, through mu, NaN gradients: Adam would write NaN into the parameters.
        return mu * NAN if step == fail_step else None

    x, y = mean_data()
    with pytest.raises(TrainingDivergedError, match=f"step {fail_step}") as info:
        fit(counting_model(hook), None, x, y, num_steps=50, lr=0.1, progress=False)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert err.step == fail_step
    assert math.isnan(err.loss)
    assert len(err.history.loss) == fail_step - 1
    assert all(math.isfinite(v) for v in err.history.loss)
    # The store holds the finite values the failing step started from.
    params = current_params()
    assert set(params) == {"mu", "scale"}
    for name, value in params.items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, seen[fail_step][name])
    if fail_step > 1:
        assert params["mu"] > 0.3  # training had moved mu towards the data mean 3


@pytest.mark.parametrize("fail_step", [1, 5])
def test_nan_gradient_with_finite_loss_stops_and_restores(fail_step):
    seen = {}

    def hook(step, mu, scale):
        seen[step] = mu.detach().clone()
        if step == fail_step:
            # Finite loss, NaN gradient: only the parameter check can catch it.
            zero = mu * 0.0
            zero.register_hook(lambda g: g * NAN)
            return zero
        return None

    x, y = mean_data()
    with pytest.raises(TrainingDivergedError) as info:
        fit(counting_model(hook), None, x, y, num_steps=50, lr=0.1, progress=False)
    assert info.value.step == fail_step
    assert math.isfinite(info.value.loss)
    assert len(info.value.history.loss) == fail_step - 1
    assert torch.equal(pyro.param("mu").detach(), seen[fail_step])


def test_infinite_loss_stops():
    def hook(step, mu, scale):
        return mu * 0.0 - math.inf if step == 4 else None

    x, y = mean_data()
    with pytest.raises(TrainingDivergedError) as info:
        fit(counting_model(hook), None, x, y, num_steps=50, lr=0.1, progress=False)
    assert info.value.step == 4
    assert info.value.loss == math.inf
    assert len(info.value.history.loss) == 3


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_when_parameter_crosses_threshold():
    # The log-density is NaN once mu > 1 (sqrt of a negative number); the data pull mu to 3.
    seen = {}

    def hook(step, mu, scale):
        seen[step] = mu.detach().clone()
        return 0.0 * torch.sqrt(1.0 - mu)

    x, y = mean_data()
    with pytest.raises(TrainingDivergedError) as info:
        fit(counting_model(hook), None, x, y, num_steps=200, lr=0.1, progress=False)
    step = info.value.step
    assert step > 5
    assert all(seen[k] <= 1 for k in range(1, step))
    assert seen[step] > 1  # the first step that starts past the threshold fails
    assert len(info.value.history.loss) == step - 1
    mu = pyro.param("mu").detach()
    assert torch.isfinite(mu)
    assert torch.equal(mu, seen[step])


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_in_step_that_creates_a_parameter():
    seen = {}

    def hook(step, mu, scale):
        seen[step] = mu.detach().clone()
        if step == 3:
            late = pyro.param("late", torch.tensor(1.0))
            return (mu + late) * NAN
        return None

    x, y = mean_data()
    with pytest.raises(TrainingDivergedError) as info:
        fit(counting_model(hook), None, x, y, num_steps=20, lr=0.1, progress=False)
    assert info.value.step == 3
    assert torch.equal(pyro.param("mu").detach(), seen[3])
    assert "late" not in pyro.get_param_store()


# --- interruption -----------------------------------------------------------------------------


@pytest.mark.parametrize("stop_step", [1, 6])
def test_keyboard_interrupt_returns_history(stop_step):
    seen = {}

    def hook(step, mu, scale):
        seen[step] = mu.detach().clone()
        if step == stop_step:
            raise KeyboardInterrupt
        return None

    x, y = mean_data()
    history = fit(counting_model(hook), None, x, y, num_steps=50, lr=0.1, progress=False)
    assert history.interrupted
    assert history.num_steps == stop_step - 1
    assert len(history.loss) == stop_step - 1
    assert all(math.isfinite(v) for v in history.loss)
    assert history.wall_time >= 0
    # The interrupted step made no update.
    assert torch.equal(pyro.param("mu").detach(), seen[stop_step])


# --- bad inputs -------------------------------------------------------------------------------

X, Y = linear_data(10)


def _with_nan(t, index, value=NAN):
    t = t.clone()
    t.view(-1)[index] = value
    return t


@pytest.mark.parametrize(
    "x, y, kwargs, error, match",
    [
        (X, Y[:9], {}, ValueError, r"length mismatch.*'x': 10.*'y': 9"),
        (X[:0], Y[:0], {}, ValueError, r"empty data: x, y"),
        (X[:0], None, {}, ValueError, r"empty data: x"),
        (torch.tensor(1.0), None, {}, ValueError, r"leading data dimension"),
        (_with_nan(X, 3), Y, {}, ValueError, r"^x contains 1 NaN"),
        (X, _with_nan(Y, 0, math.inf), {}, ValueError, r"^y contains 1 NaN or infinite"),
        (X, _with_nan(Y, 1, -math.inf), {}, ValueError, r"^y contains"),
        (X.tolist(), Y, {}, TypeError, r"^x must be a torch.Tensor, got list"),
        (X.numpy(), Y, {}, TypeError, r"^x must be a torch.Tensor, got ndarray"),
        (X, Y.tolist(), {}, TypeError, r"^y must be a torch.Tensor"),
        (X, Y, {"batch_size": 11}, ValueError, r"batch_size=11 exceeds .* \(10\)"),
        (X, Y, {"batch_size": 0}, ValueError, r"^batch_size must be > 0"),
        (X, Y, {"batch_size": 2.0}, TypeError, r"^batch_size must be an int"),
        (X, Y, {"num_steps": 0}, ValueError, r"^num_steps must be > 0"),
        (X, Y, {"num_steps": -3}, ValueError, r"^num_steps"),
        (X, Y, {"num_steps": 10.0}, TypeError, r"^num_steps must be an int"),
        (X, Y, {"lr": 0.0}, ValueError, r"^lr must be > 0"),
        (X, Y, {"lr": NAN}, ValueError, r"^lr"),
    ],
)
def test_bad_inputs(x, y, kwargs, error, match):
    called = []

    def model(x, y=None):
        called.append(True)
        linear_model(x, y)

    with pytest.raises(error, match=match):
        fit(model, delta_guide(), x, y, progress=False, **kwargs)
    assert not called  # checked before the model runs


def test_model_without_parameters():
    def model(x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="no parameters"):
        fit(model, None, X, Y, num_steps=5, progress=False)


# --- reproducibility and output ---------------------------------------------------------------


def _seeded_run(seed, batch_size=16):
    pyro.clear_param_store()
    x, y = linear_data(64)
    guide = AutoNormal(linear_model)  # initialised lazily, inside fit, after seeding
    history = fit(
        linear_model, guide, x, y, num_steps=40, batch_size=batch_size, seed=seed, progress=False
    )
    return history.loss, current_params()


def test_seed_reproducibility():
    loss_a, params_a = _seeded_run(3)
    torch.randn(10)  # move the global generator: fit(seed=...) must not depend on it
    loss_b, params_b = _seeded_run(3)
    assert loss_a == loss_b
    assert params_a.keys() == params_b.keys()
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name])
    loss_c, _ = _seeded_run(4)
    assert loss_c != loss_a


def test_progress_false_is_silent(capsys):
    x, y = linear_data(32)
    fit(linear_model, delta_guide(), x, y, num_steps=20, progress=False)
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ""
    pyro.clear_param_store()
    fit(linear_model, delta_guide(), x, y, num_steps=20, progress=True)
    out, err = capsys.readouterr()
    assert "SVI" in err  # the tqdm bar exists and goes to stderr


def test_fit_accepts_optim_loss_and_device():
    x, y = linear_data(50)
    history = fit(
        linear_model,
        AutoNormal(linear_model),
        x,
        y,
        num_steps=30,
        optim=pyro.optim.ClippedAdam({"lr": 0.01}),
        loss=Trace_ELBO(num_particles=2),
        device="cpu",
        progress=False,
    )
    assert history.num_steps == 30
    assert history.batch_size == 50


def test_history_smoothed():
    history = History(loss=[float(v) for v in range(10)])
    assert history.num_steps == 10
    assert_close(history.smoothed(3), torch.arange(1.0, 9.0, dtype=torch.float64))
    assert_close(
        history.smoothed(50),
        torch.arange(10.0, dtype=torch.float64).cumsum(0) / torch.arange(1, 11),
    )
    with pytest.raises(ValueError, match="window"):
        history.smoothed(0)
    with pytest.raises(TypeError, match="window"):
        history.smoothed(2.5)
