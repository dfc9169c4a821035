"""Infinite networks: NNGP kernel matrices on 2,000 points, and wide-network prior sampling.

``nngp_kernels`` (one unit = one 2,000 x 2,000 kernel matrix of 2-D inputs, float64, no grad):

* baseline: Pyro's ``RBF`` kernel, the cost of a stationary kernel for reference;
* ``ErfKernel``, ``ArcCosineKernel`` of orders 0, 1, 2, ``DeepReLUKernel(depth=3)`` (closed forms);
* ``MonteCarloKernel("tanh", 4096)`` (2,000 x 4,096 features, then one matmul).

``prior_sampling`` (one unit = 100 functions of a width-10,000 tanh network on 500 inputs):

* baseline: one plain forward per function in a Python loop (each a ``(500, 10000)`` layer);
* :func:`bayesdl.infinite.sample_prior_functions`: blocks of whole functions (one batched matmul,
  activation and batched matvec per block of at most 2^23 activations, 32 MiB).
"""

from __future__ import annotations

import math
from typing import Any

import pyro.contrib.gp as gp
import torch
from _timing import Benchmark, Prepared, Variant

from bayesdl.infinite import (
    ArcCosineKernel,
    DeepReLUKernel,
    ErfKernel,
    MonteCarloKernel,
    sample_prior_functions,
)

POINTS = 2_000
FUNCTIONS, WIDTH, INPUTS = 100, 10_000, 500


def _kernel(build: Any) -> Any:
    def setup() -> Prepared:
        kernel = build().double()
        x = torch.randn(POINTS, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

        def run(k: int) -> None:
            with torch.no_grad():
                for _ in range(k):
                    kernel(x)

        return Prepared(run)

    return setup


def _loop_sampling() -> Prepared:
    x = torch.linspace(-1, 1, INPUTS).unsqueeze(-1)

    def run(k: int) -> None:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _ in range(k):
                for _ in range(FUNCTIONS):
                    u = torch.randn(1, WIDTH, generator=gen)
                    a = torch.randn(WIDTH, generator=gen)
                    v = torch.randn(WIDTH, generator=gen) / math.sqrt(WIDTH)
                    b = torch.randn((), generator=gen)
                    torch.tanh(x @ u + a) @ v + b

    return Prepared(run)


def _vectorized_sampling() -> Prepared:
    x = torch.linspace(-1, 1, INPUTS)

    def run(k: int) -> None:
        for _ in range(k):
            sample_prior_functions(x, FUNCTIONS, WIDTH, activation="tanh")

    return Prepared(run)


KERNEL_BASELINE = "pyro RBF (reference)"
SAMPLING_BASELINE = "loop: one forward per function"

BENCHMARKS = [
    Benchmark(
        name="nngp_kernels",
        variants=[
            Variant(KERNEL_BASELINE, _kernel(lambda: gp.kernels.RBF(2))),
            Variant("ErfKernel", _kernel(lambda: ErfKernel(2))),
            Variant("ArcCosineKernel(order=0)", _kernel(lambda: ArcCosineKernel(2, 0))),
            Variant("ArcCosineKernel(order=1)", _kernel(lambda: ArcCosineKernel(2, 1))),
            Variant("ArcCosineKernel(order=2)", _kernel(lambda: ArcCosineKernel(2, 2))),
            Variant("DeepReLUKernel(depth=3)", _kernel(lambda: DeepReLUKernel(2, 3))),
            Variant("MonteCarloKernel(tanh, 4096)", _kernel(lambda: MonteCarloKernel(2, "tanh"))),
        ],
        baseline=KERNEL_BASELINE,
        unit="matrix",
        block=3,
        rounds=9,
        quick_block=1,
        quick_rounds=3,
        budget_s=40.0,
        quick_budget_s=8.0,
        min_rounds=5,
        description=f"NNGP kernel matrix, {POINTS:,} x {POINTS:,} points in 2-D, float64, no grad",
    ),
    Benchmark(
        name="prior_sampling",
        variants=[
            Variant(SAMPLING_BASELINE, _loop_sampling),
            Variant("sample_prior_functions (blocks of functions)", _vectorized_sampling),
        ],
        baseline=SAMPLING_BASELINE,
        unit="call",
        block=1,
        rounds=7,
        quick_block=1,
        quick_rounds=3,
        budget_s=60.0,
        quick_budget_s=10.0,
        min_rounds=3,
        description=(
            f"{FUNCTIONS} prior functions of a width-{WIDTH:,} tanh network on {INPUTS} inputs"
        ),
    ),
]
