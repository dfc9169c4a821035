"""Posterior predictive of a wide BNN: ``bayesdl.inference.predict`` against T plain forwards.

Model: MLP 1-512-1 (ReLU) with ``N(0, 1)`` priors on its weights and a Gaussian likelihood whose
noise scale has the prior ``sigma ~ LogNormal(-1, 1)``; T = 100 posterior samples; N = 10,000
inputs (2,000 with ``--quick``). The posterior is a ``MeanFieldNormal`` guide at its
initialisation (means from a torch init, scales 0.01): the weights' values do not change the
cost, only their shapes do.

The baseline is T plain forward passes of the same MLP under ``torch.no_grad``, a Python loop over
the T weight sets written as a user who cares about speed would: ``F.linear`` on the sample's own
weight tensors and in-place activations. A reference row loops over ``net(x)`` after copying the
sample's weights into the module, the way most code is written: its out-of-place activation makes
a second (N, 512) buffer per forward, and how often glibc hands such buffers back to the kernel
(and so how many page faults the next forward takes) depends on what ran before in the process.

Set ``BAYESDL_BENCH_EXTRA=1`` to add two costlier cases: the same with tanh, and a 1-512-512-1
ReLU network (about 0.5 TFLOP per call, 10-20 s per call on the project's machines; four variants,
two rounds, several minutes; the unchunked predict holds 4-6 GB).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from _timing import Benchmark, Config, Prepared, Variant

from bayesdl.guides import MeanFieldNormal
from bayesdl.inference import posterior_samples, predict
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP

T = 100  # posterior samples
N = 10_000  # inputs
QUICK_N = 2_000
CHUNK = 2_000  # the chunk_size (N / 5 with --quick)
SMALL_CHUNK = 80  # T * 80 * 512 * 4 bytes = 16 MB per hidden layer
SIGMA_PRIOR = (-1.0, 1.0)


@dataclass(frozen=True)
class _Case:
    hidden: tuple[int, ...]
    activation: str


@dataclass
class _Problem:
    model: BNN
    guide: MeanFieldNormal
    store: dict[str, Any]  # the guide's own param store (switched outside the timer)
    x: torch.Tensor
    samples: dict[str, torch.Tensor]  # T draws of every latent site, as MCMC would give


_RUN = {"n": N, "chunk": CHUNK}  # set per run by _PredictiveBenchmark (smaller with --quick)
_USAGE: dict[str, list[float]] = {}  # variant's label -> [minor faults, system CPU s, calls]


@contextlib.contextmanager
def _store(state: dict[str, Any]) -> Iterator[None]:
    with pyro.get_param_store().scope(state):
        yield


def _problem(case: _Case) -> _Problem:
    n = _RUN["n"]
    torch.manual_seed(0)
    likelihood = Homoscedastic(prior=dist.LogNormal(*SIGMA_PRIOR))
    model = BNN(MLP(1, 1, case.hidden, case.activation), likelihood)
    x = torch.rand(n, 1, generator=torch.Generator().manual_seed(1))
    guide = MeanFieldNormal(model, init_scale=0.01)
    store: dict[str, Any] = {"params": {}, "constraints": {}}
    with _store(store):
        guide(x, torch.zeros(n))  # creates the guide's parameters; with y=None "obs" is latent
        samples = posterior_samples(model, guide, x, num_samples=T, seed=0)
    return _Problem(model, guide, store, x, {k: v.contiguous() for k, v in samples.items()})


def _counting(label: str, setup: Callable[[], Prepared]) -> Callable[[], Prepared]:
    """``setup`` whose ``run`` also counts the minor page faults and the system CPU time (the
    kernel's share: page faults, zeroing fresh pages) of the calls it makes."""

    def wrapped() -> Prepared:
        prepared = setup()
        inner = prepared.run

        def run(k: int) -> None:
            before = resource.getrusage(resource.RUSAGE_SELF)
            inner(k)
            after = resource.getrusage(resource.RUSAGE_SELF)
            counts = _USAGE.setdefault(label, [0.0, 0.0, 0])
            counts[0] += after.ru_minflt - before.ru_minflt
            counts[1] += after.ru_stime - before.ru_stime
            counts[2] += k

        return dataclasses.replace(prepared, run=run)

    return wrapped


# -- the baseline and the reference: a Python loop over the T weight sets ----------------------


def _loop_module(case: _Case) -> Prepared:  # reference
    """T x ``net(x)``: copy sample t's weights into the network, run it, keep its output."""
    p = _problem(case)
    net = copy.deepcopy(p.model.net)
    named = dict(net.named_parameters())
    params = [named[n] for n in p.model.bayesian_names]
    weights = [p.samples[s] for s in p.model.weight_sites]
    out = torch.empty(T, p.x.shape[0], 1)

    def run(k: int) -> None:
        with torch.no_grad():
            for _ in range(k):
                for t in range(T):
                    for param, w in zip(params, weights, strict=True):
                        param.copy_(w[t])
                    out[t] = net(p.x)

    return Prepared(run)


def _loop_linear(case: _Case) -> Prepared:  # baseline
    """T x (``F.linear`` + in-place activation per layer) on the samples' own tensors."""
    p = _problem(case)
    weights = [p.samples[s] for s in p.model.weight_sites]
    layers = list(zip(weights[0::2], weights[1::2], strict=True))
    act = {"relu": torch.relu_, "tanh": torch.tanh_}[case.activation]
    out = torch.empty(T, p.x.shape[0], 1)

    def run(k: int) -> None:
        with torch.no_grad():
            for _ in range(k):
                for t in range(T):
                    h = p.x
                    for j, (w, b) in enumerate(layers):
                        h = F.linear(h, w[t], b[t])  # addmm
                        if j < len(layers) - 1:
                            act(h)
                    out[t] = h

    return Prepared(run)


# -- the package ---------------------------------------------------------------------------------


def _predict_samples(case: _Case, chunk: str | None) -> Callable[[], Prepared]:
    def setup() -> Prepared:
        p = _problem(case)
        size = {None: None, "auto": "auto", "issue": _RUN["chunk"], "small": SMALL_CHUNK}[chunk]

        def run(k: int) -> None:
            for _ in range(k):
                predict(p.model, p.samples, p.x, num_samples=None, chunk_size=size)

        return Prepared(run)

    return setup


def _predict_guide(case: _Case) -> Prepared:
    p = _problem(case)

    def run(k: int) -> None:
        for _ in range(k):
            predict(p.model, p.guide, p.x, num_samples=T)

    return Prepared(run, lambda: _store(p.store))


def _guide_draws(case: _Case) -> Prepared:
    """Only the guide's part of the guide variant: T draws through Pyro's ``Predictive``."""
    p = _problem(case)

    def run(k: int) -> None:
        for _ in range(k):
            posterior_samples(p.model, p.guide, p.x, num_samples=T)

    return Prepared(run, lambda: _store(p.store))


BASELINE = "T x F.linear + in-place activation (torch, no_grad)"


@dataclass
class _PredictiveBenchmark(Benchmark):
    """A :class:`Benchmark` that sizes the problem for ``--quick`` and reports page faults."""

    case: _Case = _Case((512,), "relu")

    def __call__(self, config: Config) -> dict[str, Any]:
        n = QUICK_N if config.quick else N
        _RUN.update(n=n, chunk=n // 5)
        _USAGE.clear()
        width = max(self.case.hidden)
        layers = "-".join(str(w) for w in (1, *self.case.hidden, 1))
        described = dataclasses.replace(
            self,
            description=(
                f"posterior predictive, BNN MLP {layers} {self.case.activation}, T={T} samples, "
                f"N={n:,} points; chunk_size=N/5 is {n // 5:,}"
            ),
        )
        res = Benchmark.__call__(described, config)
        gb = T * n * width * 4 / 1e9
        res["notes"].append(
            f"one hidden activation over all samples, (T, N, {width}) float32, is {gb:.2f} GB; "
            f"with chunk_size={SMALL_CHUNK} it is {T * SMALL_CHUNK * width * 4 / 1e6:.0f} MB, "
            f"one sample's (N, {width}) {n * width * 4 / 1e6:.0f} MB"
        )
        usage = "; ".join(
            f"{label} {c[0] / c[2]:,.0f} / {c[1] / c[2]:.2f} s"
            for label, c in _USAGE.items()
            if c[2]
        )
        res["notes"].append(
            f"per call, over all calls: minor page faults (4 kB pages) / system CPU time: {usage}"
        )
        return res


def _variants(case: _Case, only: tuple[str, ...] | None = None) -> list[Variant]:
    specs: list[tuple[str, str, Callable[[], Prepared]]] = [
        ("baseline", BASELINE, lambda: _loop_linear(case)),
        (
            "net(x)",
            "ref: T x net(x), weights copied in (torch, no_grad)",
            lambda: _loop_module(case),
        ),
        (
            "draws",
            "ref: posterior_samples(MeanFieldNormal guide) alone, T draws",
            lambda: _guide_draws(case),
        ),
        ("dict", "predict(samples dict), chunk_size=None", _predict_samples(case, None)),
        (
            "auto",
            "predict(samples dict), chunk_size='auto' (default)",
            _predict_samples(case, "auto"),
        ),
        ("guide", "predict(MeanFieldNormal guide), num_samples=T", lambda: _predict_guide(case)),
        ("N/5", "predict(samples dict), chunk_size=N/5", _predict_samples(case, "issue")),
        (
            str(SMALL_CHUNK),
            f"predict(samples dict), chunk_size={SMALL_CHUNK}",
            _predict_samples(case, "small"),
        ),
    ]
    return [
        Variant(name, _counting(label, setup))
        for label, name, setup in specs
        if only is None or label in only
    ]


def _benchmark(
    name: str,
    case: _Case,
    rounds: int,
    only: tuple[str, ...] | None = None,
    min_rounds: int = 3,
    budget_s: float = 60.0,
) -> _PredictiveBenchmark:
    return _PredictiveBenchmark(
        name=name,
        variants=_variants(case, only),
        baseline=BASELINE,
        unit="call",
        block=1,
        rounds=rounds,
        quick_block=1,
        quick_rounds=3,
        warmup_blocks=0,  # the timed first call is the warm-up
        budget_s=budget_s,
        quick_budget_s=10.0,
        min_rounds=min_rounds,
        case=case,
    )


BENCHMARKS = [_benchmark("predictive", _Case((512,), "relu"), rounds=7)]
if os.environ.get("BAYESDL_BENCH_EXTRA", "") not in ("", "0"):
    BENCHMARKS += [
        _benchmark("predictive_tanh", _Case((512,), "tanh"), rounds=5),
        # ~0.5 TFLOP a call: the loop, the unchunked and the chunked predict only, 2 rounds
        _benchmark(
            "predictive_2layer",
            _Case((512, 512), "relu"),
            rounds=2,
            only=("baseline", "dict", "N/5", str(SMALL_CHUNK)),
            min_rounds=2,
            budget_s=0.0,
        ),
    ]
