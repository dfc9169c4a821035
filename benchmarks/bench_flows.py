"""Normalizing flows on 10k 2-D points: log_prob and sample of a Pyro spline flow and of UMNN.

Variants (one unit = one call on all N points, under ``torch.no_grad`` unless said otherwise):

* baseline: ``log_prob`` of a Pyro neural spline flow, 4 ``spline_coupling`` layers (8 bins)
  with ``Permute`` between them; its ``sample`` (the spline's inverse is analytic);
* ``log_prob`` and ``sample`` of one :class:`bayesdl.distributions.transforms.UMNN` layer used
  as ``UMNN(...).inv`` (``log_prob`` = one quadrature, ``sample`` = one root find per dimension),
  with the default 20 Clenshaw–Curtis nodes;
* ``log_prob + backward`` of both, the cost of one maximum-likelihood step on all N points.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from _timing import Benchmark, Config, Prepared, Variant

from bayesdl.data import sample_2d
from bayesdl.distributions.transforms import UMNN

N = 10_000
QUICK_N = 10_000  # the size; --quick runs fewer rounds instead
LAYERS = 4
_RUN = {"n": N}


def _base() -> dist.Distribution:
    return dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)


def _spline_flow() -> tuple[dist.TransformedDistribution, list[torch.nn.Module]]:
    torch.manual_seed(0)
    transforms: list[Any] = []
    modules: list[torch.nn.Module] = []
    for i in range(LAYERS):
        layer = T.spline_coupling(2, count_bins=8)
        transforms.append(layer)
        modules.append(layer)
        if i < LAYERS - 1:
            transforms.append(T.Permute(torch.tensor([1, 0])))
    return dist.TransformedDistribution(_base(), transforms), modules


def _umnn_flow() -> tuple[dist.TransformedDistribution, list[torch.nn.Module]]:
    torch.manual_seed(0)
    umnn = UMNN(2)
    return dist.TransformedDistribution(_base(), [umnn.inv]), [umnn]


def _data() -> torch.Tensor:
    # 8 Gaussians, scaled to about unit spread: where a fitted flow would be evaluated
    return sample_2d("8gaussians", _RUN["n"], seed=0) / 1.4


def _log_prob(build: Any, backward: bool = False) -> Any:
    def setup() -> Prepared:
        flow, modules = build()
        x = _data()

        def run(k: int) -> None:
            for _ in range(k):
                xk = x.clone()  # a fresh tensor: no transform cache hit
                if backward:
                    for m in modules:
                        m.zero_grad(set_to_none=True)
                    (-flow.log_prob(xk).mean()).backward()
                else:
                    with torch.no_grad():
                        flow.log_prob(xk)

        return Prepared(run)

    return setup


def _sample(build: Any) -> Any:
    def setup() -> Prepared:
        flow, _ = build()
        n = _RUN["n"]

        def run(k: int) -> None:
            with torch.no_grad():
                for _ in range(k):
                    flow.sample((n,))

        return Prepared(run)

    return setup


BASELINE = f"spline flow ({LAYERS} spline_coupling) log_prob"


@dataclass
class _FlowBenchmark(Benchmark):
    def __call__(self, config: Config) -> dict[str, Any]:
        n = QUICK_N if config.quick else N
        _RUN["n"] = n
        described = dataclasses.replace(
            self,
            description=(
                f"normalizing flows, N={n:,} 2-D points per call: Pyro spline flow "
                f"({LAYERS} spline_coupling layers, 8 bins) vs one UMNN layer (20 CC nodes)"
            ),
        )
        res = Benchmark.__call__(described, config)
        res["notes"].append("throughput = N / median time per call; rows with backward keep grads")
        return res


BENCHMARKS = [
    _FlowBenchmark(
        name="flows",
        variants=[
            Variant(BASELINE, _log_prob(_spline_flow)),
            Variant("spline flow sample", _sample(_spline_flow)),
            Variant("UMNN.inv log_prob (quadrature)", _log_prob(_umnn_flow)),
            Variant("UMNN.inv sample (root finding)", _sample(_umnn_flow)),
            Variant("spline flow log_prob + backward", _log_prob(_spline_flow, backward=True)),
            Variant("UMNN.inv log_prob + backward", _log_prob(_umnn_flow, backward=True)),
        ],
        baseline=BASELINE,
        unit="call",
        block=1,
        rounds=9,
        quick_block=1,
        quick_rounds=3,
        warmup_blocks=1,
        budget_s=45.0,
        quick_budget_s=6.0,
        min_rounds=5,
    )
]
