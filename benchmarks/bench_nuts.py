"""NUTS on a small BNN: cost per potential gradient, and short runs with ESS per second.

Model (the one of the project's shared PERFORMANCE.md): MLP 1-10-1 tanh with ``N(0, 1)`` priors on its
31 weights, Gaussian likelihood with ``sigma ~ LogNormal(-1, 1)``, the 100 training points of
``bayesdl.data.bishop(125, noise_std=0.1)``.

``nuts_gradient`` times one potential gradient (``pyro.ops.integrator.potential_grad``: the
potential, then ``torch.autograd.grad``, which is what NUTS calls at every leapfrog step) of each
potential, interleaved like every other benchmark. The baseline is Pyro's own potential for the
model, ``pyro.infer.mcmc.util.initialize_model(model, model_args=(x, y))``, which is what
``NUTS(model)`` builds; bayesdl's is ``FlatPotential``, which ``run_mcmc`` hands to Pyro's NUTS.

``nuts_run`` runs each sampler once (1 chain, 100 warm-up + 100 draws, ``max_tree_depth=6``, the
same seed and the same starting point: ``run_mcmc``'s torch initialisation of the network and the
prior median of ``sigma``) and reports wall time per potential evaluation, divergences and the bulk
ESS of ``f(0.5)``, the network output at ``x = 0.5``, per second. One run per sampler is one
sample of a noisy quantity: read ESS/s to within a factor of about 2.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import arviz
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from _timing import Benchmark, Config, Prepared, Variant, quantiles, result, short_error
from pyro.infer import MCMC, NUTS
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import potential_grad

from bayesdl.data import bishop
from bayesdl.inference import predict
from bayesdl.inference.mcmc import FlatPotential, _chain_initialisation, run_mcmc
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP

HIDDEN = 10
SIGMA_PRIOR = (-1.0, 1.0)  # LogNormal(loc, scale) on sigma
SEED = 0
MAX_TREE_DEPTH = 6
WARMUP, DRAWS = 100, 100
QUICK_WARMUP, QUICK_DRAWS = 30, 30
REPEATS = 2  # runs per sampler (seeds SEED, SEED + 1); one with --quick
REPEAT_BUDGET_S = 75.0  # no new repetition after this many seconds
X_QUERY = 0.5


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    data = bishop(125, noise_std=0.1, seed=0)  # 100 training points
    return data.x_train, data.y_train


def _bnn(flat: bool = False) -> BNN:
    torch.manual_seed(SEED)
    likelihood = Homoscedastic(prior=dist.LogNormal(*SIGMA_PRIOR))
    return BNN(MLP(1, 1, (HIDDEN,), "tanh"), likelihood, flat=flat)


def _hand_model() -> Callable[..., Any]:
    """The same Pyro program written by hand with ``F.linear`` (same site names, shapes and
    priors as ``BNN``): ``torch.jit.trace`` accepts it, unlike ``functional_call``."""
    shapes = {
        "net.0.weight": (HIDDEN, 1),
        "net.0.bias": (HIDDEN,),
        "net.2.weight": (1, HIDDEN),
        "net.2.bias": (1,),
    }
    priors = {k: dist.Normal(0.0, 1.0).expand(s).to_event(len(s)) for k, s in shapes.items()}
    sigma_prior = dist.LogNormal(*SIGMA_PRIOR)

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        w = {site: pyro.sample(site, prior) for site, prior in priors.items()}
        h = torch.tanh(F.linear(x, w["net.0.weight"], w["net.0.bias"]))
        mu = F.linear(h, w["net.2.weight"], w["net.2.bias"])[..., 0]
        sigma = pyro.sample("sigma", sigma_prior)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mu, sigma), obs=y)

    return model


def _start(model: BNN, seed: int = SEED) -> dict[str, torch.Tensor]:
    """``run_mcmc(seed=seed)``'s starting point (chain 0), unconstrained, keyed by site."""
    x, y = _data()
    potential = FlatPotential(model, x, y)
    values = _chain_initialisation(model, seed)
    return {
        name: value if name in potential.real else potential.transforms[name].inv(value)
        for name, value in values.items()
    }


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- (i) one potential gradient -----------------------------------------------------------------


def _gradient_loop(
    potential: Callable[[dict[str, torch.Tensor]], torch.Tensor], z: dict[str, torch.Tensor]
) -> Callable[[int], None]:
    def run(k: int) -> None:
        for _ in range(k):
            potential_grad(potential, z)

    return run


def _pyro_potential(
    jit: bool, make_model: Callable[[], Any] = _bnn, threads: int | None = None
) -> Callable[[], Prepared]:
    def setup() -> Prepared:
        x, y = _data()
        model = make_model()
        _, potential, _, _ = initialize_model(
            model, model_args=(x, y), jit_compile=jit, skip_jit_warnings=True
        )
        start = _start(model if isinstance(model, BNN) else _bnn())
        z = {k: v.detach().clone() for k, v in start.items()}
        return Prepared(_gradient_loop(potential, z), lambda: _threads(threads))

    return setup


def _flat_potential(threads: int | None) -> Callable[[], Prepared]:
    def setup() -> Prepared:
        x, y = _data()
        model = _bnn()
        potential = FlatPotential(model, x, y)
        z = {"z": potential.flatten(_chain_initialisation(model, SEED)).detach().clone()}
        return Prepared(_gradient_loop(potential, z), lambda: _threads(threads))

    return setup


def _torch_potential() -> Prepared:
    """The floor: the same ``U(z)`` over one flat vector in a few plain torch expressions."""
    x, y = _data()
    model = _bnn()
    z = {"z": FlatPotential(model, x, y).flatten(_chain_initialisation(model, SEED)).clone()}
    sizes = [HIDDEN, HIDDEN, HIDDEN, 1]
    n_w = sum(sizes)
    n = x.shape[0]
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    mu0, s0 = SIGMA_PRIOR

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        v = params["z"]
        w0, b0, w1, b1 = v[:n_w].split(sizes)
        log_sigma = v[n_w]
        h = torch.tanh(torch.addmm(b0, x, w0.view(HIDDEN, 1).t()))
        mu = torch.addmm(b1, h, w1.view(1, HIDDEN).t()).squeeze(-1)
        nll = 0.5 * ((y - mu) * torch.exp(-log_sigma)).square().sum() + n * log_sigma
        # N(0, 1) weights; LogNormal prior on sigma plus the log-Jacobian of exp = N(mu0, s0) on
        # log sigma
        prior = 0.5 * v[:n_w].square().sum() + 0.5 * ((log_sigma - mu0) / s0).square()
        return nll + prior + (n + n_w + 1) * half_log_2pi + math.log(s0)

    return Prepared(_gradient_loop(potential, z))


BASELINE = "Pyro potential (initialize_model), BNN"

GRADIENT = Benchmark(
    name="nuts_gradient",
    description=(
        f"one potential gradient (potential_grad), BNN 1-{HIDDEN}-1 tanh, 100 points of "
        "bishop(125); torch's thread setting unless the row says 1 thread"
    ),
    unit="gradient",
    baseline=BASELINE,
    block=100,
    rounds=11,
    quick_block=20,
    quick_rounds=5,
    budget_s=30.0,
    quick_budget_s=5.0,
    variants=[
        Variant(BASELINE, _pyro_potential(False)),
        Variant("Pyro potential, jit_compile=True, BNN", _pyro_potential(True)),
        Variant("Pyro potential, BNN(flat=True)", _pyro_potential(False, lambda: _bnn(True))),
        Variant("Pyro potential, BNN, 1 thread", _pyro_potential(False, threads=1)),
        Variant("bayesdl FlatPotential", _flat_potential(None)),
        Variant("bayesdl FlatPotential, 1 thread (as in run_mcmc)", _flat_potential(1)),
        Variant(
            "ref: hand-written Pyro model (F.linear), Pyro potential",
            _pyro_potential(False, _hand_model),
        ),
        Variant(
            "ref: hand-written Pyro model, jit_compile=True", _pyro_potential(True, _hand_model)
        ),
        Variant("ref: plain torch U(z), one flat z, autograd", _torch_potential),
    ],
)


# -- (ii) short NUTS runs -----------------------------------------------------------------------


class _CountingNUTS(NUTS):
    """Pyro's NUTS, counting the calls of the potential that it builds from the model."""

    calls = 0

    def _initialize_model_properties(self, model_args: Any, model_kwargs: Any) -> None:
        super()._initialize_model_properties(model_args, model_kwargs)
        inner = self.potential_fn

        def counted(params: dict[str, torch.Tensor]) -> torch.Tensor:
            self.calls += 1
            return inner(params)

        self.potential_fn = counted


Sampled = tuple[dict[str, torch.Tensor], int, int, float]  # samples, evaluations, divergent, step


def _pyro_nuts(jit: bool, make_model: Callable[[], Any] = _bnn) -> Callable[[int, int, int], Any]:
    def sample(warmup: int, draws: int, seed: int) -> Sampled:
        x, y = _data()
        kernel = _CountingNUTS(
            make_model(),
            max_tree_depth=MAX_TREE_DEPTH,
            jit_compile=jit,
            ignore_jit_warnings=True,
        )
        mcmc = MCMC(
            kernel,
            num_samples=draws,
            warmup_steps=warmup,
            initial_params=_start(_bnn(), seed),
            disable_progbar=True,
        )
        pyro.set_rng_seed(seed)
        mcmc.run(x, y)
        divergences = len(mcmc.diagnostics().get("divergences", {}).get("chain 0", []))
        return mcmc.get_samples(), kernel.calls, divergences, float(kernel.step_size)

    return sample


def _run_mcmc(warmup: int, draws: int, seed: int) -> Sampled:
    x, y = _data()
    res = run_mcmc(
        _bnn(),
        x,
        y,
        num_samples=draws,
        warmup_steps=warmup,
        num_chains=1,
        max_tree_depth=MAX_TREE_DEPTH,
        seed=seed,
        progress=False,
        num_threads=1,
    )
    return res.flat(), res.num_gradients[0], int(res.divergences.sum()), res.step_size[0]


RUN_BASELINE = "Pyro MCMC(NUTS(model)), default potential"
RUNS: list[tuple[str, Callable[[int, int, int], Sampled]]] = [
    (RUN_BASELINE, _pyro_nuts(False)),
    ("Pyro NUTS(model, jit_compile=True, ignore_jit_warnings=True)", _pyro_nuts(True)),
    ("bayesdl run_mcmc (FlatPotential, num_threads=1)", _run_mcmc),
    ("ref: hand-written Pyro model, NUTS(jit_compile=True)", _pyro_nuts(True, _hand_model)),
]


def _f_query(samples: dict[str, torch.Tensor]) -> torch.Tensor:
    query = torch.tensor([[X_QUERY]])
    return predict(_bnn(), samples, query, num_samples=None).params["mean"][:, 0]


def _one_run(sample: Callable[[int, int, int], Sampled], warmup: int, draws: int, seed: int):
    start = time.perf_counter()
    samples, calls, divergences, step_size = sample(warmup, draws, seed)
    wall = time.perf_counter() - start
    f = _f_query(samples).double().numpy()
    ess = float(arviz.ess(f[None, :], method="bulk"))
    return {
        "seed": seed,
        "wall": wall,
        "calls": calls,
        "per": wall / calls,
        "divergences": divergences,
        "step": step_size,
        "ess": ess,
        "sigma": float(samples["sigma"].mean()),
    }


def nuts_run(config: Config) -> dict[str, Any]:
    """Short NUTS runs per sampler; prints its own table and returns time per evaluation.

    Repetition ``r`` uses seed ``SEED + r`` (and ``run_mcmc``'s start for that seed) for every
    sampler; the order of the samplers is reversed in odd repetitions. A repetition starts only
    while the elapsed time is under ``REPEAT_BUDGET_S``.
    """
    warmup, draws = (QUICK_WARMUP, QUICK_DRAWS) if config.quick else (WARMUP, DRAWS)
    repeats = config.rounds or (1 if config.quick else REPEATS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in RUNS}
    errors: dict[str, str] = {}
    began = time.perf_counter()
    for r in range(repeats):
        if r and not config.rounds and time.perf_counter() - began > REPEAT_BUDGET_S:
            break
        order = RUNS if r % 2 == 0 else RUNS[::-1]
        for name, sample in order:
            if name in errors:
                continue
            try:
                runs[name].append(_one_run(sample, warmup, draws, SEED + r))
            except Exception as exc:
                errors[name] = short_error(exc)

    rows: list[dict[str, Any]] = []
    lines: list[list[str]] = []
    base = runs[RUN_BASELINE]
    for name, _ in RUNS:
        if name in errors:
            rows.append({"variant": name, "error": errors[name]})
            lines.append([name, f"n/a: {errors[name]}"])
            continue
        done = runs[name]
        q1, median, q3 = quantiles([d["per"] for d in done])
        row: dict[str, Any] = {"variant": name, "median": median, "q1": q1, "q3": q3}
        row.update(rounds=len(done), block=round(statistics.mean(d["calls"] for d in done)))
        row["runs"] = done
        if len(base) == len(done):
            paired = [d["per"] / b["per"] for d, b in zip(done, base, strict=True)]
            row["ratio_q1"], row["ratio"], row["ratio_q3"] = quantiles(paired)
        rows.append(row)
        for i, d in enumerate(done):
            ratio = f"{d['per'] / base[i]['per']:.2f}" if i < len(base) else "-"
            lines.append(
                [
                    name,
                    str(d["seed"]),
                    f"{d['wall']:.1f}",
                    f"{d['calls']:,}",
                    f"{d['per'] * 1e3:.2f}",
                    ratio,
                    str(d["divergences"]),
                    f"{d['step']:.3g}",
                    f"{d['ess']:.0f}",
                    f"{d['ess'] / d['wall']:.2f}",
                    f"{d['sigma']:.3f}",
                ]
            )
    header = ["sampler", "seed", "wall s", "potential evals", "ms / eval", "x base"]
    header += ["divergent", "step size", f"ESS f({X_QUERY})", "ESS / s", "E[sigma]"]
    print(
        f"\nnuts_run: 1 chain, {warmup} warm-up + {draws} draws, max_tree_depth={MAX_TREE_DEPTH}, "
        f"same seed and start for every sampler; bulk ESS of f({X_QUERY}) over the {draws} "
        "draws; x base = ms / eval over the baseline's with the same seed"
    )
    _print_table(header, lines)
    notes = [
        "per-run wall time, divergences and ESS/s are in the nuts_run table printed above; "
        "an evaluation is one call of the potential (almost all with a gradient), and its "
        "time includes the sampler's own work per leapfrog step",
    ]
    for row in rows:
        if "runs" in row:
            ess_s = ", ".join(f"{d['ess'] / d['wall']:.2f}" for d in row["runs"])
            div = ", ".join(str(d["divergences"]) for d in row["runs"])
            notes.append(f"{row['variant']}: ESS/s of f({X_QUERY}) {ess_s}; divergent {div}")
    return result(
        "nuts_run",
        "potential evaluation",
        RUN_BASELINE,
        rows,
        description=(
            f"wall time per potential evaluation over whole NUTS runs ({warmup} + {draws}, "
            f"max_tree_depth={MAX_TREE_DEPTH}); ratio paired by seed"
        ),
        notes=notes,
    )


def _print_table(header: list[str], lines: list[list[str]]) -> None:
    full = [line for line in lines if len(line) == len(header)]
    widths = [max(len(r[i]) for r in [header, *full]) for i in range(len(header))]
    widths[0] = max(len(r[0]) for r in [header, *lines])
    for row in [header, ["-" * w for w in widths], *lines]:
        if len(row) != len(header):
            print(f"{row[0].ljust(widths[0])}  {row[1]}")
            continue
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    print()


nuts_run.name = "nuts_run"  # type: ignore[attr-defined]

BENCHMARKS = [GRADIENT, nuts_run]
