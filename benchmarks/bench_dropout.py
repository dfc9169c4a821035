"""MC-dropout prediction: ``predict(model, DropoutGuide(model, p), x)`` against plain torch loops.

Model: MLP 1-512-1 (ReLU) with ``N(0, 1)`` priors on its weights and a Gaussian likelihood whose
noise scale has the prior ``sigma ~ LogNormal(-1, 1)``, the shape of the project's shared
``PERFORMANCE.md`` ("MC-dropout prediction, 512-unit layers, 10k points, T = 100"). The posterior
is a Bernoulli ``DropoutGuide`` with p = 0.1 at its initialisation: it drops the input units of
every linear layer after the first, which is where ``MLP(..., dropout=p)`` puts its
``nn.Dropout``. T = 100 sampled networks, N = 10,000 inputs (1,000 with ``--quick``). One unit
is one whole prediction over all T networks.

The baseline is the lower bound of the issue: T deterministic forward passes (no masks) under
``torch.no_grad``, written as the cheapest plain loop, ``F.linear`` (one ``addmm``) and in-place
ReLU per layer. The row the issue compares against is the usual MC-dropout code: the same
network with ``nn.Dropout`` layers, ``net.train()``, T calls of ``net(x)`` under ``no_grad``,
which draws one mask per element (per unit *and* per test point).

Reference rows, written here and not package code: the lecture's formulation by hand (T sampled
networks, one mask per unit per network, ``W = M diag(z_t)`` shared over the test points), the
guide's draws alone, and ``predict`` rewritten as a loop over the guide's draws, to show what the
package's path could reach.

Set ``BAYESDL_BENCH_EXTRA=1`` to add ``dropout_2layer``: the same with 1-512-512-1 (about 0.5
TFLOP a call, 5-25 s a call per variant on the project's machines; 2 rounds, 3-4 minutes).
"""

from __future__ import annotations

import contextlib
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
from torch import nn

from bayesdl.guides import DropoutGuide
from bayesdl.inference import Prediction, posterior_samples, predict
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP

T = 100  # sampled networks
N = 10_000  # inputs
QUICK_N = 1_000
P = 0.1  # dropout probability
SIGMA_PRIOR = (-1.0, 1.0)
CHUNK_BYTES = 4 * 2**20  # predict's chunk_size="auto": (T, rows, width) floats near 4 MiB

_RUN = {"n": N}  # set per run by _DropoutBenchmark (smaller with --quick)
_USAGE: dict[str, list[float]] = {}  # variant's label -> [minor faults, system CPU s, calls]


@dataclass
class _Problem:
    model: BNN
    guide: DropoutGuide
    store: dict[str, Any]  # the guide's own param store (switched outside the timer)
    x: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # the guide's (M_i, b_i), network order


@contextlib.contextmanager
def _store(state: dict[str, Any]) -> Iterator[None]:
    with pyro.get_param_store().scope(state):
        yield


def _problem(hidden: tuple[int, ...]) -> _Problem:
    n = _RUN["n"]
    torch.manual_seed(0)
    likelihood = Homoscedastic(prior=dist.LogNormal(*SIGMA_PRIOR))
    model = BNN(MLP(1, 1, hidden, "relu"), likelihood)
    x = torch.rand(n, 1, generator=torch.Generator().manual_seed(1))
    guide = DropoutGuide(model, p=P)
    store: dict[str, Any] = {"params": {}, "constraints": {}}
    with _store(store):
        guide(x, torch.zeros(n))  # creates the parameters; with y=None "obs" would be latent
        values = guide.variational_parameters()
    sites = model.weight_sites
    layers = [(values[w], values[b]) for w, b in zip(sites[0::2], sites[1::2], strict=True)]
    return _Problem(model, guide, store, x, layers)


def _counting(label: str, setup: Callable[[], Prepared]) -> Callable[[], Prepared]:
    """``setup`` whose ``run`` also counts minor page faults and system CPU time per call."""

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


# -- plain torch loops ---------------------------------------------------------------------------


def _forward(x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One forward: ``F.linear`` (``addmm``) per layer, in-place ReLU between layers."""
    h = x
    for j, (w, b) in enumerate(layers):
        h = F.linear(h, w, b)
        if j < len(layers) - 1:
            h.relu_()
    return h


def _deterministic(hidden: tuple[int, ...]) -> Prepared:  # baseline
    """T x one deterministic forward at the guide's ``M_i``, no masks: the lower bound."""
    p = _problem(hidden)
    out = torch.empty(T, p.x.shape[0], 1)

    def run(k: int) -> None:
        with torch.no_grad():
            for _ in range(k):
                for t in range(T):
                    out[t] = _forward(p.x, p.layers)

    return Prepared(run)


def _module(hidden: tuple[int, ...], dropout: bool) -> Prepared:
    """T x ``net(x)`` under ``no_grad``: ``MLP(..., dropout=P)`` in train mode (per-element
    ``nn.Dropout`` masks), or the network without dropout in eval mode."""
    p = _problem(hidden)
    net = MLP(1, 1, hidden, "relu", dropout=P if dropout else 0.0)
    with torch.no_grad():
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        for layer, (w, b) in zip(linears, p.layers, strict=True):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    net.train(dropout)

    def run(k: int) -> None:
        with torch.no_grad():
            for _ in range(k):
                torch.stack([net(p.x) for _ in range(T)])

    return Prepared(run)


def _lecture(hidden: tuple[int, ...]) -> Prepared:
    """The lecture's T sampled networks by hand: per network and dropped layer one Bernoulli
    mask ``z_t`` over the layer's input units, ``W = M diag(z_t)`` shared by all test points."""
    p = _problem(hidden)
    out = torch.empty(T, p.x.shape[0], 1)
    keep = [torch.full((T, w.shape[1]), 1 - P) for w, _ in p.layers[1:]]

    def run(k: int) -> None:
        with torch.no_grad():
            for _ in range(k):
                # one mask per unit per sampled network (drawn for all T at once)
                masks = [torch.bernoulli(probs) for probs in keep]
                for t in range(T):
                    layers = [p.layers[0]] + [
                        (w * z[t], b) for (w, b), z in zip(p.layers[1:], masks, strict=True)
                    ]
                    out[t] = _forward(p.x, layers)

    return Prepared(run)


def _lecture_shared(hidden: tuple[int, ...]) -> Prepared:
    """The lecture's formulation with the first layer computed once: its input units are not
    dropped, so its activations are the same in all T networks. With one hidden layer the one
    masked layer then reads the same ``(N, width)`` activations in every network, and all T
    networks are one GEMM against the T masked weight matrices stacked. With more layers the
    rest runs as T masked forwards."""
    p = _problem(hidden)
    n = p.x.shape[0]
    out = torch.empty(T, n, 1)
    keep = [torch.full((T, w.shape[1]), 1 - P) for w, _ in p.layers[1:]]
    first, rest = p.layers[0], p.layers[1:]

    def run(k: int) -> None:
        with torch.no_grad():
            for _ in range(k):
                masks = [torch.bernoulli(probs) for probs in keep]
                h = F.linear(p.x, *first).relu_()  # shared by all T networks
                if len(rest) == 1:
                    (w, b), z = rest[0], masks[0]
                    stacked = (w.unsqueeze(0) * z.unsqueeze(1)).reshape(-1, w.shape[1])
                    both = torch.addmm(b.repeat(T), h, stacked.T)  # (N, T * out)
                    out.copy_(both.view(n, T, -1).transpose(0, 1))
                    continue
                for t in range(T):
                    layers = [(w * z[t], b) for (w, b), z in zip(rest, masks, strict=True)]
                    out[t] = _forward(h, layers)

    return Prepared(run)


# -- the package ---------------------------------------------------------------------------------


def _predict(hidden: tuple[int, ...]) -> Prepared:
    p = _problem(hidden)

    def run(k: int) -> None:
        for _ in range(k):
            predict(p.model, p.guide, p.x, num_samples=T)

    return Prepared(run, lambda: _store(p.store))


def _draws(hidden: tuple[int, ...]) -> Prepared:
    """Only the guide's part of ``predict``: T draws through Pyro's ``Predictive``."""
    p = _problem(hidden)

    def run(k: int) -> None:
        for _ in range(k):
            posterior_samples(p.model, p.guide, p.x, num_samples=T)

    return Prepared(run, lambda: _store(p.store))


def _predict_loop(hidden: tuple[int, ...]) -> Prepared:
    """``predict`` as a loop over samples: the same draws from the guide and the same
    likelihood moments, with the network pass written as T x ``F.linear`` on each draw's own
    weights (one ``(N, width)`` buffer per layer, reused) instead of batched matmuls."""
    p = _problem(hidden)
    model = p.model
    sites = model.weight_sites

    def run(k: int) -> None:
        for _ in range(k):
            samples = posterior_samples(model, p.guide, p.x, num_samples=T)
            with torch.no_grad():
                weights = [samples[s] for s in sites]
                pairs = list(zip(weights[0::2], weights[1::2], strict=True))
                output = torch.empty(T, p.x.shape[0], 1)
                for t in range(T):
                    output[t] = _forward(p.x, [(w[t], b[t]) for w, b in pairs])
                globals_ = {s: samples[s] for s in model.latent_sites if s not in set(sites)}
                distribution = model.likelihood(output, **globals_)
                mean, variance = model.likelihood.moments(output, **globals_)
            Prediction("regression", output, distribution, {"mean": mean, "variance": variance})

    return Prepared(run, lambda: _store(p.store))


def _batched_inplace(hidden: tuple[int, ...]) -> Prepared:
    """``predict``'s network pass written out: the guide's draws, inputs in chunks of the
    package's ``"auto"`` size, one broadcasting matmul per layer over all T draws, then bias and
    ReLU in place in *every* layer (the package adds the first layer's bias out of place, into a
    second fresh ``(T, rows, width)`` tensor), then the same likelihood moments."""
    p = _problem(hidden)
    model = p.model
    sites = model.weight_sites
    rows = max(16, CHUNK_BYTES // (4 * T * max(hidden)))

    def run(k: int) -> None:
        for _ in range(k):
            samples = posterior_samples(model, p.guide, p.x, num_samples=T)
            with torch.no_grad():
                weights = [samples[s] for s in sites]
                pairs = list(zip(weights[0::2], weights[1::2], strict=True))
                chunks = []
                for h in p.x.split(rows):
                    for j, (w, b) in enumerate(pairs):
                        h = torch.matmul(h, w.transpose(-1, -2)).add_(b.unsqueeze(-2))
                        if j < len(pairs) - 1:
                            h.relu_()
                    chunks.append(h)
                output = torch.cat(chunks, dim=1)
                globals_ = {s: samples[s] for s in model.latent_sites if s not in set(sites)}
                distribution = model.likelihood(output, **globals_)
                mean, variance = model.likelihood.moments(output, **globals_)
            Prediction("regression", output, distribution, {"mean": mean, "variance": variance})

    return Prepared(run, lambda: _store(p.store))


BASELINE = "T x deterministic forward, F.linear + relu_ (torch, no_grad): lower bound"


@dataclass
class _DropoutBenchmark(Benchmark):
    """A :class:`Benchmark` that sizes the problem for ``--quick`` and reports page faults."""

    hidden: tuple[int, ...] = (512,)

    def __call__(self, config: Config) -> dict[str, Any]:
        n = QUICK_N if config.quick else N
        _RUN.update(n=n)
        _USAGE.clear()
        layers = "-".join(str(w) for w in (1, *self.hidden, 1))
        described = dataclasses.replace(
            self,
            description=(
                f"MC-dropout prediction, MLP {layers} relu, Bernoulli p={P}, T={T} sampled "
                f"networks, N={n:,} points"
            ),
        )
        res = Benchmark.__call__(described, config)
        usage = "; ".join(
            f"{label} {c[0] / c[2]:,.0f} / {c[1] / c[2]:.2f} s"
            for label, c in _USAGE.items()
            if c[2]
        )
        res["notes"].append(
            f"per call, over all calls: minor page faults (4 kB pages) / system CPU time: {usage}"
        )
        return res


def _variants(hidden: tuple[int, ...], only: tuple[str, ...] | None = None) -> list[Variant]:
    specs: list[tuple[str, str, Callable[[], Prepared]]] = [
        ("baseline", BASELINE, lambda: _deterministic(hidden)),
        (
            "net(x)",
            "ref: T x net(x), eval, no masks (torch, no_grad)",
            lambda: _module(hidden, dropout=False),
        ),
        (
            "nn.Dropout",
            "T x net(x) with nn.Dropout, net.train() (torch, no_grad)",
            lambda: _module(hidden, dropout=True),
        ),
        (
            "predict",
            f"predict(model, DropoutGuide(model, p={P}), x, num_samples=T)",
            lambda: _predict(hidden),
        ),
        (
            "draws",
            "ref: posterior_samples(DropoutGuide) alone, T draws",
            lambda: _draws(hidden),
        ),
        (
            "lecture",
            "ref: T masked forwards, W = M diag(z_t), one mask per unit per network (torch)",
            lambda: _lecture(hidden),
        ),
        (
            "shared",
            "ref: the same, first (unmasked) layer once; 1 hidden layer: one GEMM over all T",
            lambda: _lecture_shared(hidden),
        ),
        (
            "inplace",
            "ref: predict's chunked batched matmuls by hand, every bias added in place",
            lambda: _batched_inplace(hidden),
        ),
        (
            "loop",
            "ref: predict as T x F.linear over the guide's draws",
            lambda: _predict_loop(hidden),
        ),
    ]
    return [
        Variant(name, _counting(label, setup))
        for label, name, setup in specs
        if only is None or label in only
    ]


def _benchmark(
    name: str,
    hidden: tuple[int, ...],
    rounds: int,
    only: tuple[str, ...] | None = None,
    min_rounds: int = 3,
    budget_s: float = 40.0,
) -> _DropoutBenchmark:
    return _DropoutBenchmark(
        name=name,
        variants=_variants(hidden, only),
        baseline=BASELINE,
        unit="call",
        block=1,
        rounds=rounds,
        quick_block=1,
        quick_rounds=3,
        warmup_blocks=0,  # the timed first call is the warm-up
        budget_s=budget_s,
        quick_budget_s=6.0,
        min_rounds=min_rounds,
        hidden=hidden,
    )


BENCHMARKS = [_benchmark("dropout", (512,), rounds=5)]
if os.environ.get("BAYESDL_BENCH_EXTRA", "") not in ("", "0"):
    # ~0.5 TFLOP a call: the loops, the package and the lecture's formulation, 2 rounds
    BENCHMARKS.append(
        _benchmark(
            "dropout_2layer",
            (512, 512),
            rounds=2,
            only=("baseline", "nn.Dropout", "predict", "draws", "lecture", "loop"),
            min_rounds=2,
            budget_s=0.0,
        )
    )
