"""Interleaved timing of benchmark variants, shared by every ``bench_*.py`` module.

A :class:`Benchmark` is a list of :class:`Variant` objects, one of them the baseline. Calling it
with a :class:`Config` times every variant in blocks of ``block`` units (SVI steps, gradients,
forward passes), round-robin: round ``r`` runs each variant once, and the starting variant rotates
from round to round (A B C, B C A, C A B, ...). Load from other processes then falls on all
variants alike, and the ratio of a variant to the baseline is taken per round - from two blocks
measured a fraction of a second apart - before the median over rounds is taken.

The result is a plain dict (see :func:`result`), so an entry that needs a different timing scheme
can be any callable ``entry(config) -> dict`` that fills the same fields.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Benchmark",
    "Config",
    "Prepared",
    "Variant",
    "debug",
    "quantiles",
    "result",
    "short_error",
]


@dataclass(frozen=True)
class Config:
    """Options of one run of the runner.

    Attributes:
        rounds: Timed rounds per benchmark (``None``: the benchmark's own default). Given
            explicitly, exactly this many rounds run (no time budget).
        quick: Fewer rounds and smaller blocks, for a smoke check (ratios are noisier).
        budget_s: Override of every benchmark's time budget (seconds).
    """

    rounds: int | None = None
    quick: bool = False
    budget_s: float | None = None


@dataclass
class Prepared:
    """A variant ready to be timed.

    Attributes:
        run: ``run(k)`` performs ``k`` units of work; only this call is timed.
        context: Entered around every timed block, outside the timer (e.g. to switch Pyro's global
            param store or validation flag to this variant's own state).
        note: Shown under the table (e.g. what a setup step found out).
    """

    run: Callable[[int], Any]
    context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    note: str = ""


@dataclass
class Variant:
    """One way of doing the benchmark's unit of work.

    Attributes:
        name: Label in the table.
        setup: Builds the variant's state and returns a :class:`Prepared` (or just the ``run``
            callable). An exception here, or in any timed block, turns the variant's row into
            ``n/a: <reason>`` instead of stopping the run.
        block: Units per timed block for this variant, overriding the benchmark's (e.g. one
            whole ``fit(num_steps=50)`` call per block); ``quick_block`` likewise with
            ``--quick``. A ``{block}`` in ``name`` is replaced by the block used.
    """

    name: str
    setup: Callable[[], Prepared | Callable[[int], Any]]
    block: int | None = None
    quick_block: int | None = None

    def block_for(self, benchmark: Benchmark, quick: bool) -> int:
        if quick:
            return self.quick_block or benchmark.quick_block
        return self.block or benchmark.block


def short_error(exc: BaseException, limit: int = 110) -> str:
    """``"Type: message"`` on one line, cut to ``limit`` characters."""
    lines = str(exc).strip().splitlines()  # Pyro appends a trace-shape table: keep line one
    text = " ".join(lines[0].split()) if lines else "(no message)"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile (``nan`` for no values)."""
    if not values:
        return math.nan, math.nan, math.nan
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def result(
    name: str,
    unit: str,
    baseline: str,
    rows: list[dict[str, Any]],
    *,
    description: str = "",
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The dict every benchmark entry returns.

    Each row has ``variant`` and either ``error`` (why the variant could not run) or the timings
    ``median``, ``q1``, ``q3`` (seconds per unit over rounds) and ``rounds``; optionally
    ``first`` (seconds of the variant's first single unit, e.g. JIT tracing), ``ratio``,
    ``ratio_q1``, ``ratio_q3`` (per-round ratios to the baseline, paired within rounds), ``best``
    (fastest round, seconds per unit) and ``block``. The runner derives a ratio of medians for rows without ``ratio``.
    """
    return {
        "name": name,
        "unit": unit,
        "baseline": baseline,
        "description": description,
        "rows": rows,
        "notes": list(notes or []),
    }


@dataclass
class _State:
    variant: Variant
    block: int
    name: str = ""
    prepared: Prepared | None = None
    error: str | None = None
    first: float | None = None
    times: list[float] = field(default_factory=list)  # seconds per unit, one per round


@dataclass
class Benchmark:
    """A named set of variants timed side by side; call it with a :class:`Config`.

    Attributes:
        name: Name used by ``--only`` and in the table.
        variants: The variants; ``baseline`` names one of them.
        baseline: Name of the variant every ratio is taken against.
        unit: What one unit of work is ("step", "gradient", ...); times are per unit.
        block: Units per timed block.
        rounds: Timed rounds (interleaved) by default.
        quick_block: Units per block with ``--quick``.
        quick_rounds: Rounds with ``--quick``.
        warmup_blocks: Untimed blocks per variant (interleaved too) before the timed rounds.
        budget_s: Seconds after which no new round starts once ``min_rounds`` are done (keeps a
            run on a loaded machine bounded); ``quick_budget_s`` with ``--quick``.
        min_rounds: Rounds that always run, whatever the budget (3 with ``--quick``).
        description: One line printed above the benchmark's rows.
    """

    name: str
    variants: list[Variant]
    baseline: str
    unit: str = "step"
    block: int = 50
    rounds: int = 11
    quick_block: int = 10
    quick_rounds: int = 5
    warmup_blocks: int = 1
    budget_s: float = 90.0
    quick_budget_s: float = 12.0
    min_rounds: int = 7
    description: str = ""

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if "{" in self.baseline:
            raise ValueError(f"{self.name}: the baseline's name must not depend on the block")
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate variant names in {names}")
        if self.baseline not in names:
            raise ValueError(f"{self.name}: baseline {self.baseline!r} is not one of {names}")

    def __call__(self, config: Config) -> dict[str, Any]:
        rounds = config.rounds or (self.quick_rounds if config.quick else self.rounds)
        budget = config.budget_s or (self.quick_budget_s if config.quick else self.budget_s)
        floor = 3 if config.quick else self.min_rounds
        min_rounds = rounds if config.rounds else min(floor, rounds)
        start = time.perf_counter()
        states = []
        for v in self.variants:
            block = v.block_for(self, config.quick)
            states.append(_State(v, block, v.name.format(block=block)))
        notes: list[str] = []

        for state in states:
            _setup(state)
            if state.prepared is not None and state.prepared.note:
                notes.append(f"{state.name}: {state.prepared.note}")
        for _ in range(self.warmup_blocks):
            for state in states:  # after the first unit above; in quick mode a short one
                _time_block(state, min(state.block, 3) if config.quick else state.block)
        for r in range(rounds):
            live = [s for s in states if s.error is None]
            if not live:
                break
            if r >= min_rounds and not config.rounds and time.perf_counter() - start > budget:
                notes.append(f"time budget of {budget:.0f} s reached after {r} of {rounds} rounds")
                break
            gc.collect()  # outside the timers: less garbage of one variant collected in another
            shift = r % len(live)
            for state in live[shift:] + live[:shift]:
                seconds = _time_block(state, state.block)
                if seconds is not None:
                    state.times.append(seconds / state.block)

        base = next(s for s in states if s.variant.name == self.baseline)
        rows = []
        for state in states:
            row: dict[str, Any] = {"variant": state.name, "block": state.block}
            if state.error is not None:
                row["error"] = state.error
                rows.append(row)
                continue
            q1, median, q3 = quantiles(state.times)
            row.update(median=median, q1=q1, q3=q3, rounds=len(state.times), first=state.first)
            row["best"] = min(state.times) if state.times else math.nan
            if base.error is None and len(base.times) == len(state.times):
                ratios = [t / b for t, b in zip(state.times, base.times, strict=True)]
                row["ratio_q1"], row["ratio"], row["ratio_q3"] = quantiles(ratios)
            rows.append(row)
        return result(
            self.name, self.unit, self.baseline, rows, description=self.description, notes=notes
        )


def _setup(state: _State) -> None:
    try:
        prepared = state.variant.setup()
        state.prepared = prepared if isinstance(prepared, Prepared) else Prepared(prepared)
        with state.prepared.context():
            start = time.perf_counter()
            state.prepared.run(1)
            state.first = time.perf_counter() - start
    except Exception as exc:  # a variant that cannot run is reported, not fatal
        state.error = short_error(exc)
        state.prepared = None
        if _debug():
            traceback.print_exc()


def _time_block(state: _State, units: int) -> float | None:
    """Seconds for ``units`` units of ``state``'s variant, or ``None`` if it failed."""
    if state.error is not None or state.prepared is None:
        return None
    try:
        with state.prepared.context():
            start = time.perf_counter()
            state.prepared.run(units)
            return time.perf_counter() - start
    except Exception as exc:
        state.error = f"failed while timed: {short_error(exc)}"
        if _debug():
            traceback.print_exc()
        return None


_DEBUG = False


def _debug() -> bool:
    return _DEBUG


@contextlib.contextmanager
def debug(enabled: bool = True) -> Iterator[None]:
    """Print tracebacks of failing variants (``--debug``)."""
    global _DEBUG
    old, _DEBUG = _DEBUG, enabled
    try:
        yield
    finally:
        _DEBUG = old
