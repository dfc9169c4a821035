"""Tests of :func:`bayesdl.inference.fit`: convergence, minibatch scaling, NaN safety, inputs."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import JitTrace_ELBO, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from bayesdl import data
from bayesdl.guides import MeanFieldNormal
from bayesdl.inference import History, TrainingDivergedError, fit, scale_data_plate
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
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
    _assert_refused_before_the_model_runs(x, y, kwargs, error, match)


def _assert_refused_before_the_model_runs(x, y, kwargs, error, match):
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


# --- batches from a DataLoader or another re-iterable -------------------------------------------


def _point_mass(w=(0.3, -0.2)):
    """AutoDelta guide of ``linear_model`` that starts at ``w``: deterministic losses."""
    return AutoDelta(linear_model, init_loc_fn=init_to_value(values={"w": torch.tensor(w)}))


def test_loader_steps_equal_tensor_path_steps():
    # The tensor path with seed 0 draws the epoch order perm = randperm(n) after seeding; its
    # parameter-creating call takes perm[:b] and step k takes perm[k b:(k + 1) b]. A DataLoader
    # (shuffle=False) over exactly those rows must give the same steps, bit for bit.
    n, b, steps = 40, 10, 3
    x, y = linear_data(n, seed=4)
    tensor_history = fit(
        linear_model, _point_mass(), x, y, num_steps=steps, batch_size=b, seed=0, progress=False
    )
    tensor_params = current_params()

    pyro.set_rng_seed(0)
    rest = torch.randperm(n)[b:]
    loader = DataLoader(TensorDataset(x[rest], y[rest]), batch_size=b, shuffle=False)
    pyro.clear_param_store()
    history = fit(linear_model, _point_mass(), loader, num_data=n, num_steps=steps, progress=False)
    assert history.batch_size == b
    assert history.loss == tensor_history.loss
    params = current_params()
    assert params.keys() == tensor_params.keys()
    for name in params:
        assert torch.equal(params[name], tensor_params[name])
    # Step 1 is the point-mass loss on the loader's first batch with the likelihood scaled by
    # n / b: -log p(w) - (n / b) sum_batch log p(y_i | w).
    w = torch.tensor([0.3, -0.2])
    xb, yb = x[rest[:b]].squeeze(-1), y[rest[:b]]
    log_lik = dist.Normal(w[0] * xb + w[1], 0.5).log_prob(yb).double().sum().item()
    log_prior = dist.Normal(0.0, 1.0).log_prob(w).sum().item()
    assert_close(history.loss[0], -log_prior - n / b * log_lik, rtol=1e-6, atol=0)


def test_loader_scales_each_batch_by_its_own_size():
    # 25 rows in batches of 10, 10, 5: the short batch is scaled by 25 / 5, not 25 / 10. With a
    # frozen point mass every loss is the scaled ELBO of its batch, and passes repeat exactly.
    n, b = 25, 10
    x, y = linear_data(n, seed=6)
    loader = DataLoader(TensorDataset(x, y), batch_size=b)
    history = fit(
        linear_model,
        _point_mass(),
        loader,
        num_steps=7,
        optim=pyro.optim.SGD({"lr": 0.0}),
        progress=False,
        device="cpu",
    )
    assert history.num_steps == 7
    guide = _point_mass()
    for step, (xb, yb) in enumerate([(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])]):
        scale = n / xb.shape[0]
        expected = Trace_ELBO().loss(
            scale_data_plate(scale)(linear_model), scale_data_plate(scale)(guide), xb, yb
        )
        assert_close(history.loss[step], expected, rtol=1e-6, atol=0)
    assert history.loss[3:6] == history.loss[:3]  # the second pass restarts the loader
    assert history.loss[6] == history.loss[0]
    # The mean over one pass, weighted by batch size, is the full-data loss.
    full = Trace_ELBO().loss(linear_model, guide, x, y)
    assert_close(
        sum(h * r for h, r in zip(history.loss[:3], (10, 10, 5), strict=True)) / n, full, rtol=1e-5
    )


def test_loader_fit_matches_tensor_fit_on_bnn():
    n, b, steps = 500, 50, 300
    x, y = linear_data(n, seed=5)

    def run(source, **kwargs):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model = BNN(MLP(1, 1, hidden=(8,)), Homoscedastic(0.1), "normal")
        history = fit(
            model, MeanFieldNormal(model), source, num_steps=steps, lr=0.03, seed=1,
            progress=False, **kwargs,
        )  # fmt: skip
        sigma = pyro.param("bnn$$$likelihood.log_sigma").exp().item()
        return torch.tensor(history.loss, dtype=torch.float64) / n, sigma

    tensor_loss, tensor_sigma = run(x, y=y, batch_size=b)
    loader = DataLoader(TensorDataset(x, y), batch_size=b, shuffle=True)
    loader_loss, loader_sigma = run(loader)
    assert loader_loss.shape == (steps,)
    last_t, last_l = tensor_loss[-100:], loader_loss[-100:]
    # Both converge from ~8 nats per point to ~0.85 (log 0.5 + 1.42 = 0.73 plus the KL term).
    assert loader_loss[:20].mean() > 5 and last_l.mean() < 1.0
    se = math.sqrt((last_t.var() + last_l.var()).item() / 100)
    assert abs(last_t.mean() - last_l.mean()).item() < 3 * se  # se ~ 0.016 nats per point
    assert abs(loader_sigma / 0.5 - 1) < 0.1
    assert abs(loader_sigma / tensor_sigma - 1) < 0.05


class StreamedLinear(IterableDataset):
    """``linear_data`` generated batch by batch: fresh draws every pass, never all rows."""

    def __init__(self, batches, batch_size, seed=0):
        self.batches, self.batch_size, self.seed = batches, batch_size, seed
        self.passes = 0
        self.largest = 0

    def __iter__(self):
        self.passes += 1
        gen = torch.Generator().manual_seed(self.seed + self.passes)
        for _ in range(self.batches):
            x = torch.randn(self.batch_size, 1, generator=gen)
            y = 0.8 * x.squeeze(-1) - 0.3 + 0.5 * torch.randn(self.batch_size, generator=gen)
            self.largest = max(self.largest, x.shape[0])
            yield x, y


def test_fit_from_iterable_dataset_generated_on_the_fly():
    stream = StreamedLinear(batches=10, batch_size=100)
    optim = pyro.optim.ClippedAdam({"lr": 0.1, "lrd": 0.985})
    loader = DataLoader(stream, batch_size=None)  # the dataset yields whole batches
    history = fit(
        linear_model, delta_guide(), loader, num_data=1000, num_steps=300, optim=optim,
        progress=False,
    )  # fmt: skip
    assert history.num_steps == 300
    assert history.batch_size == 100
    assert stream.passes == 30  # 10 batches a pass, restarted at the end of each
    assert stream.largest == 100
    # The posterior of w given 1,000 points has sd ~ 0.016 around the truth (0.8, -0.3).
    assert_close(pyro.param("w_loc"), torch.tensor([0.8, -0.3]), atol=0.08, rtol=0)


def test_fit_from_iterable_with_a_huge_nominal_data_size():
    # N = 10^9 rows that are never materialised: only the batches in use exist.
    n = 10**9
    stream = StreamedLinear(batches=n // 100, batch_size=100)
    history = fit(linear_model, delta_guide(), stream, num_data=n, num_steps=5, progress=False)
    assert history.num_steps == 5
    assert stream.passes == 1
    assert all(math.isfinite(v) for v in history.loss)
    assert history.loss[0] > 1e8  # a full-data scale loss: about 10^9 nats


def test_fit_from_batches_of_a_density_model():
    # Batches of x alone: plain tensors, or the 1-tuples of a one-tensor TensorDataset.
    x = (3.0 + torch.linspace(-1, 1, 30)).unsqueeze(-1)

    def model(x, y=None):
        mu = pyro.param("mu", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x.squeeze(-1))

    opts = {"num_steps": 12, "optim": pyro.optim.SGD({"lr": 0.01}), "progress": False}
    as_tuples = fit(model, None, DataLoader(TensorDataset(x), batch_size=10), **opts)
    mu = pyro.param("mu").item()
    pyro.clear_param_store()
    as_tensors = fit(model, None, [x[:10], x[10:20], x[20:]], num_data=30, **opts)
    assert as_tuples.loss == as_tensors.loss
    assert pyro.param("mu").item() == mu
    # Each SGD step moves mu by lr * N * (batch mean - mu): the gradient of the N / B scaled
    # log-likelihood of the batch.
    expected = 0.0
    for step in range(12):
        batch = x[10 * (step % 3) : 10 * (step % 3 + 1)]
        expected += 0.01 * 30 * (batch.mean().item() - expected)
    assert_close(mu, expected, atol=1e-5, rtol=0)


def test_fit_from_loader_is_reproducible_with_seed():
    x, y = linear_data(60)

    def run(seed):
        pyro.clear_param_store()
        loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
        return fit(
            linear_model, AutoNormal(linear_model), loader, num_steps=10, seed=seed,
            progress=False,
        ).loss  # fmt: skip

    first = run(3)
    torch.randn(5)
    assert run(3) == first
    assert run(4) != first


def _loader(x, y=None, **kwargs):
    dataset = TensorDataset(x) if y is None else TensorDataset(x, y)
    return DataLoader(dataset, batch_size=kwargs.pop("batch_size", 4), **kwargs)


class _Unsized(IterableDataset):
    def __iter__(self):
        yield X[:4], Y[:4]


@pytest.mark.parametrize(
    "x, y, kwargs, error, match",
    [
        (_loader(X, Y), Y, {}, ValueError, r"^y must be None when x is a DataLoader"),
        (_loader(X, Y), None, {"batch_size": 4}, ValueError, r"^batch_size must be None"),
        ([(X, Y)], None, {}, TypeError, r"^x must be a torch.Tensor, got list; .*num_data="),
        (DataLoader(_Unsized(), batch_size=None), None, {}, ValueError, r"^num_data .* required"),
        (_loader(X, Y), None, {"num_data": 0}, ValueError, r"^num_data must be > 0"),
        ([(X, Y)], None, {"num_data": -1}, ValueError, r"^num_data must be > 0"),
        ([(X, Y)], None, {"num_data": 10.0}, TypeError, r"^num_data must be an int"),
        ([(X, Y)], None, {"num_data": True}, TypeError, r"^num_data must be an int"),
        (_loader(X[:0], Y[:0]), None, {}, ValueError, r"^x is an empty DataLoader"),
        (_loader(X[:0], Y[:0]), None, {"num_data": 10}, ValueError, r"yielded no batches$"),
        ([], None, {"num_data": 10}, ValueError, r"^x \(list\) yielded no batches$"),
        (iter([(X, Y)]), None, {"num_data": 10}, TypeError, r"^x is a one-shot iterator"),
        ([(X, Y, Y)], None, {"num_data": 10}, TypeError, r"^batch 0 of x must be a tensor"),
        (
            [(X.tolist(), Y)],
            None,
            {"num_data": 10},
            TypeError,
            r"^x of batch 0 must be a torch.Tensor",
        ),
        ([(X, Y[:9])], None, {"num_data": 10}, ValueError, r"length mismatch"),
        ([(X, _with_nan(Y, 2))], None, {"num_data": 10}, ValueError, r"^y of batch 0 contains 1"),
        ([(X, Y)], None, {"num_data": 5}, ValueError, r"10 rows, more than num_data=5"),
        ([(X, Y)], None, {"num_data": 10, "num_steps": 0}, ValueError, r"^num_steps"),
        ([(X, Y)], None, {"num_data": 10, "lr": -1.0}, ValueError, r"^lr"),
        (X, Y, {"num_data": 11}, ValueError, r"^num_data=11 differs .* \(10\)"),
        (X, Y, {"num_data": 1.5}, TypeError, r"^num_data must be an int"),
    ],
)
def test_bad_batch_inputs(x, y, kwargs, error, match):
    _assert_refused_before_the_model_runs(x, y, kwargs, error, match)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_bad_batches_mid_fit():
    x, y = linear_data(10)
    # A NaN in a later batch stops the fit at that batch.
    with pytest.raises(ValueError, match=r"^x of batch 2 contains 1 NaN"):
        fit(linear_model, delta_guide(), [(x, y), (x, y), (_with_nan(x, 0), y)], num_data=10,
            num_steps=5, progress=False)  # fmt: skip

    # An iterable that is empty on its second pass.
    class Once:
        def __init__(self):
            self.done = False

        def __iter__(self):
            if not self.done:
                self.done = True
                yield x, y

    with pytest.raises(ValueError, match="yielded no batches when a new pass started"):
        fit(linear_model, delta_guide(), Once(), num_data=10, num_steps=3, progress=False)

    # A JIT ELBO compiles the first batch's shapes and scale: unequal batches are refused.
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"batch 2 of x has 5 rows, the first had 10.*drop_last"):
        fit(linear_model, delta_guide(), DataLoader(TensorDataset(*linear_data(25)), batch_size=10),
            num_steps=4, loss=JitTrace_ELBO(), progress=False)  # fmt: skip
