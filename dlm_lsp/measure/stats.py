"""Small statistics and output helpers shared by `dlm-lsp bench` and `dlm-lsp eval`.

Percentiles use linear interpolation between order statistics (numpy's default), so p50 of
an even-sized sample is the mean of the two middle values. Nothing here prints: callers
choose where tables go.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of `values`, or None when there are none."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def mean(values: Sequence[float]) -> float | None:
    """The arithmetic mean, or None for an empty sample."""
    if len(values) == 0:
        return None
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, p50, p95, p99, max of a sample (None where undefined)."""
    return {
        "n": len(values),
        "mean": mean(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": float(max(values)) if len(values) else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def format_value(value: Any, digits: int = 1) -> str:
    """A table cell: '-' for missing, fixed decimals for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 1) -> str:
    """A plain-text table with right-aligned numeric columns and a rule under the header."""
    cells = [[format_value(v, digits) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def open_text(path: str | Path, mode: str = "rt"):
    """Open a text file, transparently gzip-compressed when its name ends in .gz."""
    path = Path(path)
    if path.suffix == ".gz":
        if "w" in mode:  # mtime=0: the same records give the same bytes (no churn in git)
            raw = gzip.GzipFile(filename=str(path), mode="wb", mtime=0)
            return io.TextIOWrapper(raw, encoding="utf-8")
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a .jsonl or .jsonl.gz file, one a line; blank lines skipped.

    A line that is not a JSON object raises ValueError naming the file and line.
    """
    with open_text(path) as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            yield record


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records one a line (gzip when the name ends in .gz); return how many."""
    count = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open_text(path, "wt") as stream:
        for record in records:
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def progress(iterable: Iterable, *, total: int | None = None, desc: str = "", enabled: bool = True):
    """A tqdm progress bar on stderr when tqdm is installed and enabled, else the iterable."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
