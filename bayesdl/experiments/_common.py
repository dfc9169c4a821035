"""What every ``bayesdl run`` experiment shares: argument checks and plain-text tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from bayesdl._validation import check_positive

__all__ = ["check_run", "format_rows", "pick_settings"]

S = TypeVar("S")


def check_run(output: object, seed: object, dpi: object) -> Path:
    """Validate an experiment's ``output`` folder, ``seed`` and figure ``dpi``; return the path.

    Raises:
        ValueError: A negative or non-integer ``seed``, ``dpi <= 0``, or an ``output`` that is
            an existing file.
        TypeError: An ``output`` that is not a path.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    check_positive("dpi", dpi, integer=True)
    if not isinstance(output, (str, Path)):
        raise TypeError(f"output must be a path, got {type(output).__name__}")
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output must be a folder, got the file {path}")
    return path


def pick_settings(settings: S | None, quick: bool, full: S, small: S) -> S:
    """``settings`` if given (checked to be of ``full``'s type), else ``small`` or ``full``."""
    if settings is None:
        return small if quick else full
    if not isinstance(settings, type(full)):
        raise TypeError(f"settings must be a {type(full).__name__}, got {type(settings).__name__}")
    return settings


def format_rows(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], float_format: str = ".4g"
) -> str:
    """An aligned text table of ``columns`` of ``rows``, floats written with ``float_format``."""

    def cell(v: Any) -> str:
        return format(v, float_format) if isinstance(v, float) else str(v)

    body = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)
