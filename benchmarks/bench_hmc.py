"""NUTS that users can afford: effective samples per second, bayesdl's fast path against Pyro's
default potential and against NumPyro (when it is installed).

Model (issue 5): MLP 1-10-1 tanh with ``N(0, 1)`` priors on its 31 weights, Gaussian likelihood
with ``sigma ~ LogNormal(-1, 1)``, N = 100 points of ``y = x + 0.3 sin(4 pi x) + N(0, 0.1^2)``,
``x ~ U(0, 1)``. Every sampler runs 300 warm-up + 300 draws per chain at tree depth 10.

* **bayesdl run_mcmc**: the package's defaults (hand-differentiated, traced potential in Pyro's
  NUTS, MAP start per chain, ``chain_method="vectorized"``: 4 chains as 2 groups of 2, one
  group per worker process, each group one NUTS chain on the product of two posterior copies).
  ``BAYESDL_BENCH_PARALLEL=1`` adds a row with ``chain_method="parallel"`` (one process per
  chain, 2 at a time; about 10 minutes).
* **Pyro NUTS(model)**: Pyro's default potential. A full run takes about half an hour here, so
  this row times a short run (20 + 20 iterations) and reports the cost per gradient only.
* **NumPyro NUTS**: the same model in JAX, 4 chains on 4 virtual host devices
  (``chain_method="parallel"``) sharing the same 2 cores as bayesdl's workers. It runs twice: the first run includes compilation; the
  second (``jit_model_args=True``, same shapes) is the compiled run that the target refers to.

ESS is ArviZ's bulk ESS over all chains of the network output ``f(x)`` at x = 0.25, 0.5, 0.75
and of ``sigma``; ESS/s divides the ESS of ``f(0.5)`` by the run's wall time.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from _timing import Config, result, short_error
from bench_nuts import _CountingNUTS
from pyro.infer import MCMC

from bayesdl.inference import predict
from bayesdl.inference.mcmc import SamplerWarning, run_mcmc
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz

HIDDEN = 10
N = 100
CHAINS, WARMUP, DRAWS, DEPTH = 4, 300, 300, 10
QUICK = dict(chains=2, warmup=50, draws=50, depth=6)
PYRO_DEFAULT_ITERATIONS = 20  # warm-up and draws of the cost-per-gradient run
QUERY = (0.25, 0.5, 0.75)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(N, 1, generator=gen)
    noise = 0.1 * torch.randn(N, generator=gen)
    y = x[:, 0] + 0.3 * torch.sin(4 * math.pi * x[:, 0]) + noise
    return x, y


def _bnn() -> BNN:
    torch.manual_seed(0)
    return BNN(MLP(1, 1, (HIDDEN,), "tanh"), Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)))


def _summary(f: np.ndarray, sigma: np.ndarray, wall: float) -> dict[str, Any]:
    """``f`` of shape (chains, draws, len(QUERY)), ``sigma`` (chains, draws)."""
    ess = [float(arviz.ess(f[..., i], method="bulk")) for i in range(len(QUERY))]
    rhat = [float(arviz.rhat(f[..., i])) for i in range(len(QUERY))]
    rhat.append(float(arviz.rhat(sigma)))
    return {
        "ess": ess,
        "ess_sigma": float(arviz.ess(sigma, method="bulk")),
        "rhat": max(rhat),
        "ess_per_s": ess[1] / wall,
        "sigma": float(sigma.mean()),
    }


def _bayesdl(chains: int, warmup: int, draws: int, depth: int, method: str) -> dict[str, Any]:
    x, y = _data()
    model = _bnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplerWarning)  # reported in the table instead
        res = run_mcmc(
            model,
            x,
            y,
            num_samples=draws,
            warmup_steps=warmup,
            num_chains=chains,
            max_tree_depth=depth,
            chain_method=method,
            progress=False,
        )
    query = torch.tensor(QUERY).unsqueeze(-1)
    f = predict(model, res.flat(), query, num_samples=None).params["mean"]
    f = f.reshape(chains, draws, len(QUERY)).double().numpy()
    sigma = res.samples["sigma"].double().numpy()
    grads = sum(res.num_gradients)
    return {
        "wall": res.wall_time,
        "gradients": grads,
        "divergences": int(res.divergences.sum()),
        "depth_hits": float(res.tree_depth_hits.float().mean()),
        **_summary(f, sigma, res.wall_time),
    }


def _pyro_default(iterations: int, depth: int) -> dict[str, Any]:
    x, y = _data()
    kernel = _CountingNUTS(_bnn(), max_tree_depth=depth)
    mcmc = MCMC(kernel, num_samples=iterations, warmup_steps=iterations, disable_progbar=True)
    pyro.set_rng_seed(0)
    start = time.perf_counter()
    mcmc.run(x, y)
    wall = time.perf_counter() - start
    return {"wall": wall, "gradients": kernel.calls}


def _numpyro(chains: int, warmup: int, draws: int, depth: int) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.infer import MCMC as NMCMC
    from numpyro.infer import NUTS as NNUTS

    def model(x: Any, y: Any = None) -> None:
        w0 = numpyro.sample("w0", ndist.Normal(0, 1).expand([1, HIDDEN]).to_event(2))
        b0 = numpyro.sample("b0", ndist.Normal(0, 1).expand([HIDDEN]).to_event(1))
        w1 = numpyro.sample("w1", ndist.Normal(0, 1).expand([HIDDEN, 1]).to_event(2))
        b1 = numpyro.sample("b1", ndist.Normal(0, 1).expand([1]).to_event(1))
        sigma = numpyro.sample("sigma", ndist.LogNormal(-1.0, 1.0))
        mu = (jnp.tanh(x @ w0 + b0) @ w1 + b1)[:, 0]
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("obs", ndist.Normal(mu, sigma), obs=y)

    x, y = _data()
    xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
    method = "parallel" if jax.local_device_count() >= 2 else "sequential"
    mcmc = NMCMC(
        NNUTS(model, max_tree_depth=depth),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method=method,
        progress_bar=False,
        jit_model_args=True,
    )
    rows = []
    for run, label in enumerate(("first run (compiles)", "compiled run")):
        start = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(run), xj, yj, extra_fields=("num_steps", "diverging"))
        samples = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(samples["sigma"])
        wall = time.perf_counter() - start
        extra = mcmc.get_extra_fields(group_by_chain=True)
        q = jnp.asarray(QUERY)[:, None]
        h = jnp.tanh(q @ samples["w0"] + samples["b0"][:, :, None, :])  # (chains, draws, 3, H)
        f = (h @ samples["w1"] + samples["b1"][:, :, None, :])[..., 0]
        rows.append(
            {
                "label": f"NumPyro NUTS, {chains} chains ({method}), {label}",
                "wall": wall,
                "gradients_draws": int(np.asarray(extra["num_steps"]).sum()),
                "divergences": int(np.asarray(extra["diverging"]).sum()),
                "depth_hits": float((np.asarray(extra["num_steps"]) >= 2**depth - 1).mean()),
                **_summary(np.asarray(f, dtype=np.float64), np.asarray(samples["sigma"]), wall),
            }
        )
    return rows


def _format(name: str, r: dict[str, Any]) -> str:
    ess = " / ".join(f"{e:.0f}" for e in r["ess"])
    return (
        f"  {name:<54} {r['wall']:7.1f} s  div {r['divergences']:>3}  depth-hit "
        f"{100 * r['depth_hits']:3.0f}%  ESS f {ess:>15}  ESS sigma {r['ess_sigma']:5.0f}  "
        f"R-hat {r['rhat']:.3f}  ESS/s {r['ess_per_s']:6.2f}  E[sigma] {r['sigma']:.3f}"
    )


def hmc_ess(config: Config) -> dict[str, Any]:
    """Whole NUTS runs; prints its own table, returns wall time per gradient per sampler."""
    if config.quick:
        chains, warmup, draws, depth = (QUICK[k] for k in ("chains", "warmup", "draws", "depth"))
        pyro_iterations = 5
    else:
        chains, warmup, draws, depth = CHAINS, WARMUP, DRAWS, DEPTH
        pyro_iterations = PYRO_DEFAULT_ITERATIONS
    print(
        f"\nhmc_ess: 1-{HIDDEN}-1 tanh BNN, N = {N}, {chains} chains x ({warmup} warm-up + "
        f"{draws} draws), max_tree_depth {depth}; ESS of f(x) at x = {QUERY}"
    )
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    methods = ["vectorized"]
    if os.environ.get("BAYESDL_BENCH_PARALLEL"):
        methods.append("parallel")
    fast = None
    fast_name = f"bayesdl run_mcmc, {chains} chains (vectorized)"
    for method in methods:
        name = f"bayesdl run_mcmc, {chains} chains ({method})"
        try:
            run = _bayesdl(chains, warmup, draws, depth, method)
            # Per chain-gradient: a vectorised gradient serves every chain of its group.
            per = run["wall"] / run["gradients"]
            rows.append({"variant": name, "median": per, "q1": per, "q3": per, "rounds": 1})
            lines.append(_format(name, run))
            fast = fast or run
        except Exception as exc:
            rows.append({"variant": name, "error": short_error(exc)})
    name = f"Pyro NUTS(model), 1 chain, {pyro_iterations} + {pyro_iterations} (cost only)"
    try:
        slow = _pyro_default(pyro_iterations, depth)
        per = slow["wall"] / slow["gradients"]
        rows.append({"variant": name, "median": per, "q1": per, "q3": per, "rounds": 1})
        lines.append(
            f"  {name:<54} {slow['wall']:7.1f} s  {slow['gradients']} gradients, "
            f"{1e3 * per:.3f} ms each"
        )
    except Exception as exc:
        rows.append({"variant": name, "error": short_error(exc)})
    try:
        numpyro_rows = _numpyro(chains, warmup, draws, depth)
        for r in numpyro_rows:
            lines.append(_format(r["label"], r))
        compiled = numpyro_rows[-1]
        if fast is not None:
            lines.append(
                f"  ESS/s of f(0.5), bayesdl / NumPyro compiled: "
                f"{fast['ess_per_s'] / compiled['ess_per_s']:.3f} "
                f"(target >= 0.2, goal >= 0.33)"
            )
    except ImportError as exc:
        lines.append(f"  NumPyro: not installed ({exc.name}); pip install numpyro jax")
    except Exception as exc:
        lines.append(f"  NumPyro: n/a ({short_error(exc)})")
    print("\n".join(lines))
    if fast is not None:
        per_fast = fast["wall"] / fast["gradients"]
        for row in rows:
            if "median" in row:
                row["ratio"] = row["ratio_q1"] = row["ratio_q3"] = row["median"] / per_fast
    return result(
        "hmc_ess",
        "gradient",
        fast_name,
        rows,
        description=(
            "wall time per chain-gradient (one vectorised gradient serves every chain of its "
            "group); ESS per second in the table printed above"
        ),
        notes=lines,
    )


hmc_ess.name = "hmc_ess"  # type: ignore[attr-defined]

# NumPyro parallel chains need host devices; set before jax is imported (no effect if it was).
# One host device per chain (4 virtual devices sharing the 2 cores, as bayesdl's 2 workers do).
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={CHAINS}")

BENCHMARKS = [hmc_ess]
