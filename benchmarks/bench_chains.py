"""``chains``: wall time of one 2-chain NUTS run, by ``run_mcmc``'s ``chain_method``.

The model is built as ``bayesdl compare`` builds it (``bayesdl/experiments/compare.py``: tanh
MLP, ``flat=True``, Normal(0, 1) prior, LogNormal(-1, 1) noise scale, toy regression with a gap),
cut to the 1-10-1 network of ``hmc_ess`` on 100 training points, 100 + 100 draws per chain and
``max_tree_depth=5`` so that one round (one run of each variant) stays well under half a minute
on the 2-core machine (the compare sizes, 1-20-1 on 400 points at depth 9, take minutes).

* **sequential** (baseline): both chains in this process, one after the other.
* **parallel**: one forked worker process per chain (2 chains, 2 cores).
* **vectorized**: one group of chains per core; with 2 chains on 2 cores each group is a single
  chain, so this is ``parallel`` with the batched potential instead of the traced one.

Unit = one whole ``run_mcmc`` call (MAP initialisation, warm-up and draws of both chains, worker
start-up and transfer of the draws included). Every run uses the same seed, so the sequential
and parallel variants do exactly the same work (same draws, same gradient count); the
gradients per run are in the notes.
"""

from __future__ import annotations

import warnings

import pyro.distributions as dist
import torch
from _timing import Benchmark, Prepared, Variant

from bayesdl import data
from bayesdl.inference.mcmc import SamplerWarning, run_mcmc
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP
from bayesdl.priors import normal

N, HIDDEN, DEPTH = 125, (10,), 5
CHAINS, WARMUP, DRAWS = 2, 100, 100


def _setup(method: str):
    def setup() -> Prepared:
        d = data.homoscedastic(N, noise_std=0.2, gap=(-1.0, 1.0), seed=0)
        torch.manual_seed(0)
        model = BNN(
            MLP(1, 1, hidden=HIDDEN, activation="tanh"),
            Homoscedastic(prior=dist.LogNormal(-1.0, 1.0)),
            prior=normal(1.0),
            flat=True,
        )

        def run(k: int) -> None:
            for _ in range(k):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", SamplerWarning)
                    res = run_mcmc(
                        model,
                        d.x_train,
                        d.y_train,
                        num_samples=DRAWS,
                        warmup_steps=WARMUP,
                        num_chains=CHAINS,
                        chain_method=method,
                        max_tree_depth=DEPTH,
                        seed=0,
                        progress=False,
                    )
                # Read by the runner after the first (untimed) run.
                prepared.note = f"gradients per chain {res.num_gradients}"

        prepared = Prepared(run)
        return prepared

    return setup


BENCHMARKS = [
    Benchmark(
        name="chains",
        description=(
            f"one run_mcmc call, {CHAINS} NUTS chains x ({WARMUP} warm-up + {DRAWS} draws), "
            f"1-10-1 tanh BNN, {int(0.8 * N)} points, depth {DEPTH}"
        ),
        unit="run",
        baseline="sequential",
        block=1,
        rounds=5,
        quick_block=1,
        quick_rounds=1,
        warmup_blocks=0,
        budget_s=60.0,
        quick_budget_s=30.0,
        min_rounds=3,
        variants=[
            Variant("sequential", _setup("sequential")),
            Variant("parallel", _setup("parallel")),
            Variant("vectorized", _setup("vectorized")),
        ],
    )
]
