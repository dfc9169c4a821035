"""Constant-memory minibatch SVI: time per epoch and peak memory against the data size N.

Model: ``BNN(MLP(1, 1, hidden=(16,)), Homoscedastic(0.2), "normal", flat=True)`` with
:class:`~bayesdl.guides.MeanFieldNormal` and ``TraceMeanField_ELBO``, batches of 1,000 points of
``y = sin(2x) + 0.3x + 0.2 eps``, ``x ~ U(-3, 3)``. Variants (one unit = one epoch, N / 1,000
steps of :func:`bayesdl.fit`):

* ``stream N=...``: ``fit(model, guide, DataLoader(SyntheticBatches(N)), num_data=N)``, an
  ``IterableDataset`` that draws each batch on the fly from a seed, so no more than one batch of
  data exists at a time;
* ``materialised tensors N=...``: the same N points drawn up front as two tensors and fitted with
  ``fit(model, guide, x, y, batch_size=1000)`` (one epoch-wise shuffle, index copies per batch).
  Drawing the tensors counts towards its peak memory but not towards its time.

Peak memory is the growth of the process's peak resident set size (``VmHWM`` in
``/proc/self/status``) over the variant's first epoch, after resetting the peak with
``echo 5 > /proc/self/clear_refs`` (Linux >= 4.0). Unlike ``tracemalloc`` it sees torch's CPU
allocations (tensor storage is not allocated through Python's allocator), and unlike a bare
``ru_maxrss`` difference it is not hidden by an earlier, higher peak of the same process. Where
the reset is unavailable the ``ru_maxrss`` growth is reported instead (a lower bound).
"""

from __future__ import annotations

import gc
import math
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyro
import torch
from _timing import Config, quantiles, result, short_error
from pyro.infer import TraceMeanField_ELBO
from torch.utils.data import DataLoader, IterableDataset

import bayesdl
from bayesdl.guides import MeanFieldNormal
from bayesdl.likelihoods import Homoscedastic
from bayesdl.models import BNN
from bayesdl.nn import MLP

BATCH = 1000
SIZES = (10**4, 10**5, 10**6)
QUICK_SIZES = (10**4, 10**5)
REPEATS = {10**4: 5, 10**5: 3, 10**6: 1}  # epochs timed per size
LR = 1e-2


class SyntheticBatches(IterableDataset):
    """``n`` points of 1-D regression in batches of ``batch``, drawn on the fly from ``seed``."""

    def __init__(self, n: int, batch: int = BATCH, seed: int = 0) -> None:
        self.n, self.batch, self.seed = n, batch, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        for start in range(0, self.n, self.batch):
            rows = min(self.batch, self.n - start)
            x = 6 * torch.rand(rows, 1, generator=gen) - 3
            y = torch.sin(2 * x[:, 0]) + 0.3 * x[:, 0] + 0.2 * torch.randn(rows, generator=gen)
            yield x, y


def _materialise(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*SyntheticBatches(n), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _model() -> tuple[BNN, MeanFieldNormal]:
    torch.manual_seed(0)
    model = BNN(MLP(1, 1, hidden=(16,)), Homoscedastic(0.2), "normal", flat=True)
    return model, MeanFieldNormal(model)


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _peak_kib(exact: bool) -> int:
    if exact:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _current_kib() -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _epoch(n: int, materialised: bool) -> tuple[float, float, int]:
    """Seconds of one epoch, its peak RSS growth (MiB) and the number of steps."""
    steps = math.ceil(n / BATCH)
    pyro.clear_param_store()
    model, guide = _model()
    gc.collect()
    exact = _reset_peak()
    before = _current_kib() if exact else _peak_kib(False)
    opts: dict[str, Any] = {"num_steps": steps, "lr": LR, "loss": TraceMeanField_ELBO()}
    if materialised:  # inside the memory window, outside the timer
        x, y = _materialise(n)
        start = time.perf_counter()
        history = bayesdl.fit(model, guide, x, y, batch_size=BATCH, progress=False, **opts)
        del x, y
    else:
        loader = DataLoader(SyntheticBatches(n), batch_size=None)
        start = time.perf_counter()  # batches are drawn inside the timed epoch
        history = bayesdl.fit(model, guide, loader, num_data=n, progress=False, **opts)
    elapsed = time.perf_counter() - start
    growth = (_peak_kib(exact) - before) / 1024
    if not all(math.isfinite(v) for v in history.loss):
        raise FloatingPointError("non-finite loss")
    return elapsed, growth, steps


def scaling(config: Config) -> dict[str, Any]:
    sizes = QUICK_SIZES if config.quick else SIZES
    cases = [(f"stream N={n:.0e}", n, False) for n in sizes]
    cases.append((f"materialised tensors N={sizes[-1]:.0e}", sizes[-1], True))
    baseline = cases[0][0]
    _epoch(BATCH * 2, False)  # warm-up: imports, first allocations
    rows, table = [], []
    for name, n, materialised in cases:
        repeats = 1 if config.quick and n > 10**4 else REPEATS[n]
        if config.rounds is not None:
            repeats = config.rounds
        try:
            times, growths, steps = [], [], 0
            for _ in range(repeats):
                seconds, growth, steps = _epoch(n, materialised)
                times.append(seconds)
                growths.append(growth)
        except Exception as exc:
            rows.append({"variant": name, "error": short_error(exc)})
            continue
        q1, median, q3 = quantiles(times)
        rows.append(
            {
                "variant": name,
                "median": median,
                "q1": q1,
                "q3": q3,
                "rounds": repeats,
                "block": 1,
                "best": min(times),
                "first": times[0],
                "peak_rss_growth_mib": growths[0],
                "steps": steps,
            }
        )
        table.append(
            f"{name:<32} {steps:>6} {1e3 * median:>9.1f} ms {1e3 * median / steps:>8.2f} ms "
            f"{growths[0]:>8.1f} MiB"
        )
    header = f"{'variant':<32} {'steps':>6} {'ms / epoch':>12} {'per step':>11} {'peak RSS +':>12}"
    exact = _reset_peak()
    notes = [
        "time per epoch and peak memory against N:",
        header,
        *table,
        "peak RSS + = growth of the process's peak resident set over the first epoch "
        + ("(VmHWM after a clear_refs reset)" if exact else "(ru_maxrss growth: lower bound)"),
    ]
    return result(
        "scaling",
        "epoch",
        baseline,
        rows,
        description=(
            f"SVI epochs of a BNN 1-16-1 (flat, MeanFieldNormal, TraceMeanField_ELBO), batches of "
            f"{BATCH:,}, data streamed from an IterableDataset vs materialised tensors"
        ),
        notes=notes,
    )


scaling.name = "scaling"  # type: ignore[attr-defined]

BENCHMARKS = [scaling]
