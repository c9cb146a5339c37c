"""What every benchmark shares: median-of-N timing (`tvm_lut.timing`, which `tvm-lut profile` uses too), a
plain-text table, and `--json` / `--repeat` options. Baselines and results come from the same run, so ratios are
what to read.
"""

import argparse
import json
import os
from pathlib import Path

from tvm_lut.timing import Timing, median_seconds, median_seconds_interleaved, timings, wait_for_idle_threads

__all__ = ["Timing", "add_common_arguments", "format_table", "load_average", "median_seconds",
           "median_seconds_interleaved", "timings", "wait_for_idle_threads", "write_json"]


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Rows of dicts as an aligned text table (floats with 4 significant digits)."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def load_average() -> str:
    """The machine's 1-minute load average (`uptime`), to name beside figures taken on a shared machine."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def add_common_arguments(parser: argparse.ArgumentParser, repeat: int = 7) -> None:
    parser.add_argument("--repeat", type=int, default=repeat, help=f"repetitions per measurement (median; {repeat})")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to PATH as JSON")


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
