"""Run the benchmarks and print ratios measured side by side in one run.

Usage::

    python benchmarks/run.py                 # every benchmark (make bench)
    python benchmarks/run.py --quick         # smoke run: fewer rounds, smaller blocks
    python benchmarks/run.py --only svi_step --rounds 21
    python benchmarks/run.py --list
    python benchmarks/run.py --only svi_step --profile "Trace_ELBO, validation on"

Entries are found in ``benchmarks/bench_*.py``: each module has a list ``BENCHMARKS`` of callables
``entry(config) -> dict`` (usually :class:`_timing.Benchmark` objects, see ``benchmarks/README.md``).
Absolute times move with the machine's load; compare the ratio column, whose numerator and
denominator come from the same round.
"""

from __future__ import annotations

import argparse
import cProfile
import fnmatch
import importlib
import io
import json
import math
import os
import platform
import pstats
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _timing  # noqa: E402
import torch  # noqa: E402
from _timing import Benchmark, Config, Prepared  # noqa: E402

_DEFAULT_THREADS = torch.get_num_threads()


def discover() -> tuple[list[tuple[str, Any]], list[str]]:
    """``(name, entry)`` of every benchmark, and one line per module that failed to import."""
    entries: list[tuple[str, Any]] = []
    problems: list[str] = []
    for path in sorted(HERE.glob("bench_*.py")):
        try:
            module = importlib.import_module(path.stem)
        except Exception as exc:  # e.g. an optional dependency of one benchmark is missing
            problems.append(f"{path.name}: not loaded ({_timing.short_error(exc)})")
            continue
        for index, entry in enumerate(getattr(module, "BENCHMARKS", [])):
            name = getattr(entry, "name", None) or f"{path.stem[6:]}[{index}]"
            entries.append((name, entry))
    return entries, problems


def selected(name: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatch(name, p) or p in name for p in patterns)


# -- formatting ---------------------------------------------------------------------------------


def _time(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def rows_of(res: dict[str, Any]) -> list[list[str]]:
    """Table cells of one benchmark's result."""
    base = next((r for r in res["rows"] if r["variant"] == res["baseline"]), None)
    cells = []
    for row in res["rows"]:
        name = row["variant"] + (" [baseline]" if row is base else "")
        if "error" in row:
            cells.append([res["name"], name, f"n/a: {row['error']}", "", "", "", ""])
            continue
        iqr = f"{_time(row['q1'])} - {_time(row['q3'])}"
        if "ratio" in row:
            ratio = f"{row['ratio']:.2f}  ({row['ratio_q1']:.2f}-{row['ratio_q3']:.2f})"
        elif base is not None and "median" in base:  # an entry that only reports times
            ratio = f"{row['median'] / base['median']:.2f}  (of medians)"
        else:
            ratio = "-"
        best = "-"
        if base is not None and row.get("best") and base.get("best"):
            best = f"{row['best'] / base['best']:.2f}"
        cells.append(
            [res["name"], name, _time(row["median"]), iqr, ratio, best, _time(row.get("first"))]
        )
    return cells


def print_table(results: list[dict[str, Any]]) -> None:
    header = [
        "benchmark",
        "variant",
        "median / unit",
        "IQR",
        "x baseline (IQR)",
        "best/best",
        "first unit",
    ]
    body = [cells for res in results for cells in rows_of(res)]
    sized = [header] + [row for row in body if not row[2].startswith("n/a")]
    widths = [max(len(row[i]) for row in sized) for i in range(len(header))]
    widths[:2] = [max(len(row[i]) for row in [header, *body]) for i in range(2)]

    def line(cells: list[str]) -> str:
        if cells[2].startswith("n/a"):  # let the reason run across the empty columns
            head = "  ".join(c.ljust(w) for c, w in zip(cells[:2], widths[:2], strict=True))
            return f"{head}  {cells[2]}".rstrip()
        return "  ".join(
            c.rjust(w) if i >= 2 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for res in results:
        for cells in rows_of(res):
            print(line(cells))
    for res in results:
        units = {r.get("block") for r in res["rows"] if r.get("block")}
        rounds = {r.get("rounds") for r in res["rows"] if r.get("rounds")}
        print(
            f"\n{res['name']}: {res['description']}\n"
            f"  unit = one {res['unit']}; rounds = {_set(rounds)}; {res['unit']}s per timed block "
            f"= {_set(units)}; ratio = median over rounds of (variant / baseline) in the same round; "
            "best/best = fastest round of the variant / fastest round of the baseline"
        )
        for note in res["notes"]:
            print(f"  note: {note}")


def _set(values: set[Any]) -> str:
    return "/".join(str(v) for v in sorted(values)) if values else "-"


def environment() -> str:
    parts = [
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"torch threads {torch.get_num_threads()}"
        + (" (default)" if torch.get_num_threads() == _DEFAULT_THREADS else " (set by --threads)"),
        f"cpus {os.cpu_count()}",
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}",
    ]
    try:
        import pyro

        parts.insert(2, f"pyro {pyro.__version__}")
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        parts.append("load avg {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return ", ".join(parts)


def load_warning() -> str:
    """A warning when other processes compete for the cores torch's thread pool expects."""
    if not hasattr(os, "getloadavg") or torch.get_num_threads() < 2:
        return ""
    load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load <= cpus - 0.5:
        return ""
    passive = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    return (
        f"WARNING: load average {load:.1f} on {cpus} cpus with {torch.get_num_threads()} torch "
        "threads. Idle OpenMP workers spin between parallel ops and an op waits for every worker, "
        "so on a busy machine the pool steals the cores the Python-heavy variants need: times and "
        "ratios then measure the other processes. Compare with "
        + (
            "--threads 1."
            if passive
            else "OMP_WAIT_POLICY=PASSIVE (set before starting) or --threads 1."
        )
    )


# -- profiling ----------------------------------------------------------------------------------


def profile(entry: Any, variant: str, units: int, top: int) -> None:
    """cProfile ``units`` units of one variant (after one warm-up block) and print the top costs."""
    if not isinstance(entry, Benchmark):
        raise SystemExit(f"--profile needs a Benchmark entry, {entry!r} is not one")
    named = [(v.name.format(block=v.block_for(entry, False)), v) for v in entry.variants]
    match = [(n, v) for n, v in named if n == variant] or [(n, v) for n, v in named if variant in n]
    if len(match) != 1:
        names = [n for n, _ in named]
        raise SystemExit(f"--profile {variant!r} matches {len(match)} of {names}")
    label, chosen = match[0]
    prepared = chosen.setup()
    prepared = prepared if isinstance(prepared, Prepared) else Prepared(prepared)
    with prepared.context():
        prepared.run(units)
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        prepared.run(units)
        profiler.disable()
        wall = time.perf_counter() - start
    print(f"profile of {entry.name} / {label}: {units} {entry.unit}s, {_time(wall)} wall")
    print(f"(under cProfile; {_time(wall / units)} per {entry.unit}, inflated by the profiler)\n")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(key).print_stats(top)
        text = out.getvalue()
        print(f"== top {top} by {key} ==")
        print(text[text.find("   ncalls") :].rstrip(), "\n")


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run benchmarks whose name matches (substring or glob); repeatable",
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per benchmark")
    parser.add_argument("--quick", action="store_true", help="few rounds, small blocks (< 30 s)")
    parser.add_argument(
        "--budget", type=float, metavar="S", help="seconds per benchmark before rounds stop early"
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="torch.set_num_threads(T) first (default: leave torch's default alone)",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of n/a variants")
    parser.add_argument(
        "--profile",
        metavar="VARIANT",
        help="cProfile one variant (name or substring) of the selected benchmark instead",
    )
    parser.add_argument("--profile-units", type=int, default=200, metavar="K")
    parser.add_argument("--top", type=int, default=25, help="rows of the profile to print")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)

    entries, problems = discover()
    chosen = [(n, e) for n, e in entries if selected(n, args.only)]
    if args.list:
        for name, entry in entries:
            print(name)
            for variant in getattr(entry, "variants", []):
                print(f"    {variant.name}")
        for problem in problems:
            print(problem)
        return 0
    if not chosen:
        print(f"no benchmark matches {args.only}; have {[n for n, _ in entries]}", file=sys.stderr)
        return 2
    if args.profile:
        if len(chosen) != 1:
            parser.error(f"--profile needs exactly one benchmark, --only selects {len(chosen)}")
        profile(chosen[0][1], args.profile, args.profile_units, args.top)
        return 0

    config = Config(rounds=args.rounds, quick=args.quick, budget_s=args.budget)
    print(environment())
    print(f"mode: {'quick' if args.quick else 'full'}; variants interleaved round-robin\n")
    start = time.perf_counter()
    results = []
    with _timing.debug(args.debug):
        for name, entry in chosen:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            res = entry(config)
            res.setdefault("name", name)
            res["seconds"] = time.perf_counter() - t0
            results.append(res)
    print_table(results)
    for problem in problems:
        print(f"\n{problem}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s; {environment().split(', ')[-1]}")
    warning = load_warning()
    if warning:
        print(warning)
    if args.json:
        payload = {"environment": environment(), "config": vars(config), "results": results}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
