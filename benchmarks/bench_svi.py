"""One full-batch SVI step on a small Bayesian MLP, against hand-written Bayes-by-backprop.

Model: MLP 1-50-50-1 tanh, ``N(0, 1)`` priors on all 2,701 weights and biases, Gaussian likelihood
with a learned noise scale ``sigma ~ LogNormal(-1, 1)``, 1,000 points of
``bayesdl.data.homoscedastic``. Guide: mean-field Normal, initial scale 0.01. Optimiser: Adam, lr
1e-2. Every Pyro variant is built from the package's own ``BNN``/``MLP``/``Homoscedastic``, exactly
as a user would write it; each keeps its own param store (switched outside the timer).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from _timing import Benchmark, Prepared, Variant
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer import JitTraceMeanField_ELBO as PyroJitTraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.elbo import ELBO
from pyro.optim import Adam

import bayesdl
from bayesdl.data import homoscedastic
from bayesdl.guides import MeanFieldNormal
from bayesdl.inference import JitTraceMeanField_ELBO
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP

N = 1000
HIDDEN = (50, 50)
LR = 1e-2
INIT_SCALE = 0.01
SIGMA_PRIOR = (-1.0, 1.0)  # LogNormal(loc, scale) on sigma
FIT_STEPS = 50


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    data = homoscedastic(N, test_fraction=0.0, seed=0)
    return data.x_train, data.y_train


def _bnn() -> BNN:
    likelihood = Homoscedastic(prior=dist.LogNormal(*SIGMA_PRIOR))
    return BNN(MLP(1, 1, HIDDEN, "tanh"), likelihood)


# -- (a) hand-written Bayes-by-backprop ---------------------------------------------------------


def _bbb() -> Callable[[int], Any]:
    """Mean-field Gaussian over one flat vector of all weights plus ``log sigma``.

    One ``randn`` draws every weight, one softplus gives every scale, the closed-form KL of the
    whole vector is one expression (``log sigma`` has a ``N(-1, 1)`` prior in log space, which is
    the KL of the LogNormal guide on sigma against the LogNormal prior), and one Adam updates two
    tensors.
    """
    x, y = _data()
    shapes = [(HIDDEN[0], 1), (HIDDEN[0],), (HIDDEN[1], HIDDEN[0]), (HIDDEN[1],), (1, HIDDEN[1])]
    shapes.append((1,))
    sizes = [math.prod(s) for s in shapes]
    dim = sum(sizes) + 1  # + log sigma
    net = MLP(1, 1, HIDDEN, "tanh")  # torch's initialisation for the means
    init = torch.cat([p.detach().flatten() for p in net.parameters()] + [torch.zeros(1)])
    loc = init.clone().requires_grad_()
    rho = torch.full((dim,), math.log(math.expm1(INIT_SCALE))).requires_grad_()
    prior_loc = torch.zeros(dim)
    prior_loc[-1] = SIGMA_PRIOR[0]
    prior_scale = torch.ones(dim)
    prior_scale[-1] = SIGMA_PRIOR[1]
    log_prior_scale = prior_scale.log()
    optimizer = torch.optim.Adam([loc, rho], lr=LR)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    n = x.shape[0]

    def step() -> float:
        scale = F.softplus(rho)
        w = loc + scale * torch.randn(dim)
        w0, b0, w1, b1, w2, b2, log_sigma = torch.split(w, [*sizes, 1])
        h = torch.tanh(torch.addmm(b0, x, w0.view(shapes[0]).t()))
        h = torch.tanh(torch.addmm(b1, h, w1.view(shapes[2]).t()))
        mu = torch.addmm(b2, h, w2.view(shapes[4]).t()).squeeze(-1)
        sq = ((y - mu) * torch.exp(-log_sigma)).square().sum()
        nll = 0.5 * sq + n * (log_sigma.squeeze() + half_log_2pi)
        kl = (
            log_prior_scale
            - scale.log()
            + 0.5 * ((scale.square() + (loc - prior_loc).square()) / prior_scale.square() - 1)
        ).sum()
        loss = nll + kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    def run(k: int) -> None:
        for _ in range(k):
            step()

    return run


# -- (b)-(d) Pyro SVI with the package's model --------------------------------------------------


@contextlib.contextmanager
def _pyro_state(state: dict[str, Any], validate: bool) -> Iterator[None]:
    """This variant's param store and validation flag, restored afterwards."""
    old = pyro.infer.util.is_validation_enabled()
    pyro.enable_validation(validate)
    try:
        with pyro.get_param_store().scope(state):
            yield
    finally:
        pyro.enable_validation(old)


def _autonormal(model: Any) -> Any:
    return AutoNormal(model, init_scale=INIT_SCALE)


def _meanfield(model: Any) -> Any:
    return MeanFieldNormal(model, init_scale=INIT_SCALE)


def _flat_bnn() -> BNN:
    likelihood = Homoscedastic(prior=dist.LogNormal(*SIGMA_PRIOR))
    return BNN(MLP(1, 1, HIDDEN, "tanh"), likelihood, flat=True)


def _svi(
    loss: Callable[[], ELBO],
    validate: bool,
    make_model: Callable[[], Any] = _bnn,
    make_guide: Callable[[Any], Any] = _autonormal,
) -> Callable[[], Prepared]:
    def setup() -> Prepared:
        x, y = _data()
        model = make_model()
        guide = make_guide(model)
        svi = SVI(model, guide, Adam({"lr": LR}), loss())
        state: dict[str, Any] = {"params": {}, "constraints": {}}

        def run(k: int) -> None:
            for _ in range(k):
                svi.step(x, y)

        return Prepared(run, lambda: _pyro_state(state, validate))

    return setup


def _plain_model() -> Callable[..., Any]:
    """The same Pyro program written by hand: same sites, priors and shapes as ``BNN``, with the
    layers as explicit ``F.linear`` calls instead of ``functional_call`` on an ``nn.Module``
    (a reference for what the wrapper costs, and one that ``torch.jit.trace`` accepts)."""
    shapes = {
        "net.0.weight": (HIDDEN[0], 1),
        "net.0.bias": (HIDDEN[0],),
        "net.2.weight": (HIDDEN[1], HIDDEN[0]),
        "net.2.bias": (HIDDEN[1],),
        "net.4.weight": (1, HIDDEN[1]),
        "net.4.bias": (1,),
    }
    priors = {k: dist.Normal(0.0, 1.0).expand(s).to_event(len(s)) for k, s in shapes.items()}
    sigma_prior = dist.LogNormal(*SIGMA_PRIOR)

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        w = {site: pyro.sample(site, prior) for site, prior in priors.items()}
        h = torch.tanh(F.linear(x, w["net.0.weight"], w["net.0.bias"]))
        h = torch.tanh(F.linear(h, w["net.2.weight"], w["net.2.bias"]))
        mu = F.linear(h, w["net.4.weight"], w["net.4.bias"])[..., 0]
        sigma = pyro.sample("sigma", sigma_prior)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mu, sigma), obs=y)

    return model


def _flat_model() -> Callable[..., Any]:
    """The same posterior with all 2,701 weights in one sample site ``"w"`` (``N(0, I)`` prior),
    cut into layers inside the model: 2 latent sites instead of 7, so every per-site cost of
    Pyro (effect-handler messages, AutoNormal parameters, log-densities, Adam instances) is paid
    twice instead of seven times."""
    shapes = [(HIDDEN[0], 1), (HIDDEN[0],), (HIDDEN[1], HIDDEN[0]), (HIDDEN[1],), (1, HIDDEN[1])]
    shapes.append((1,))
    sizes = [math.prod(s) for s in shapes]
    prior = dist.Normal(0.0, 1.0).expand((sum(sizes),)).to_event(1)
    sigma_prior = dist.LogNormal(*SIGMA_PRIOR)

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        w = pyro.sample("w", prior)
        w0, b0, w1, b1, w2, b2 = (
            t.view(s) for t, s in zip(torch.split(w, sizes), shapes, strict=True)
        )
        h = torch.tanh(F.linear(x, w0, b0))
        h = torch.tanh(F.linear(h, w1, b1))
        mu = F.linear(h, w2, b2)[..., 0]
        sigma = pyro.sample("sigma", sigma_prior)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mu, sigma), obs=y)

    return model


def _one_adam(loss: Callable[[], ELBO], make_model: Callable[[], Any]) -> Callable[[], Prepared]:
    """``loss.differentiable_loss`` and one ``torch.optim.Adam`` over all guide parameters
    (Pyro's ``Adam`` keeps one torch optimiser per parameter). Validation off."""

    def setup() -> Prepared:
        x, y = _data()
        model = make_model()
        guide = AutoNormal(model, init_scale=INIT_SCALE)
        elbo = loss()
        state: dict[str, Any] = {"params": {}, "constraints": {}}
        optimizer: list[torch.optim.Optimizer] = []

        def run(k: int) -> None:
            if not optimizer:  # the first call creates the guide's parameters
                elbo.differentiable_loss(model, guide, x, y)
                optimizer.append(torch.optim.Adam(list(guide.parameters()), lr=LR))
            opt = optimizer[0]
            for _ in range(k):
                value = elbo.differentiable_loss(model, guide, x, y)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()

        return Prepared(run, lambda: _pyro_state(state, False))

    return setup


def _fit(progress: bool) -> Callable[[], Prepared]:
    """``bayesdl.fit`` as a user calls it: a fresh SVI and Adam per call, NaN checks, progress bar
    (written to a buffer so the table stays readable; tqdm still formats and writes it)."""

    def setup() -> Prepared:
        x, y = _data()
        model = _bnn()
        guide = AutoNormal(model, init_scale=INIT_SCALE)
        state: dict[str, Any] = {"params": {}, "constraints": {}}
        sink = io.StringIO()

        def run(k: int) -> None:
            sink.seek(0)
            sink.truncate()
            with contextlib.redirect_stderr(sink):
                bayesdl.fit(model, guide, x, y, num_steps=k, progress=progress)

        return Prepared(run, lambda: _pyro_state(state, True))

    return setup


BASELINE = "hand-written BBB (torch, eager)"

BENCHMARKS = [
    Benchmark(
        name="svi_step",
        description=(
            f"one full-batch SVI step, BNN 1-50-50-1 tanh, N={N}, learned noise "
            "(AutoNormal unless named; Adam lr 1e-2)"
        ),
        unit="step",
        baseline=BASELINE,
        block=20,
        rounds=21,
        quick_block=10,
        quick_rounds=5,
        variants=[
            Variant(BASELINE, _bbb),
            Variant("Trace_ELBO, validation on", _svi(Trace_ELBO, True)),
            Variant("Trace_ELBO, validation off", _svi(Trace_ELBO, False)),
            Variant("JitTrace_ELBO", _svi(JitTrace_ELBO, True)),
            Variant("TraceMeanField_ELBO, validation on", _svi(TraceMeanField_ELBO, True)),
            Variant(
                "BNN(flat=True) + MeanFieldNormal, TraceMeanField_ELBO, validation on",
                _svi(TraceMeanField_ELBO, True, _flat_bnn, _meanfield),
            ),
            Variant(
                "BNN(flat=True) + MeanFieldNormal, TraceMeanField_ELBO, validation off",
                _svi(TraceMeanField_ELBO, False, _flat_bnn, _meanfield),
            ),
            Variant(
                "BNN(flat=True) + MeanFieldNormal, bayesdl JitTraceMeanField_ELBO",
                _svi(JitTraceMeanField_ELBO, False, _flat_bnn, _meanfield),
            ),
            Variant(
                "BNN(flat=True) + MeanFieldNormal, pyro JitTraceMeanField_ELBO (re-traces)",
                _svi(PyroJitTraceMeanField_ELBO, False, _flat_bnn, _meanfield),
            ),
            Variant("bayesdl.fit, num_steps={block}", _fit(True), block=FIT_STEPS),
            Variant("bayesdl.fit, num_steps={block}, progress=False", _fit(False), block=FIT_STEPS),
            Variant(
                "ref: hand-written model, 7 sites, Trace_ELBO, validation off",
                _svi(Trace_ELBO, False, _plain_model),
            ),
            Variant(
                "ref: hand-written model, 7 sites, JitTrace_ELBO",
                _svi(JitTrace_ELBO, True, _plain_model),
            ),
            Variant(
                "ref: one flat weight site, Trace_ELBO, validation off",
                _svi(Trace_ELBO, False, _flat_model),
            ),
            Variant(
                "ref: one flat weight site, JitTrace_ELBO",
                _svi(JitTrace_ELBO, True, _flat_model),
            ),
            Variant(
                "ref: one flat weight site, JitTrace_ELBO, one torch Adam",
                _one_adam(JitTrace_ELBO, _flat_model),
            ),
        ],
    )
]
