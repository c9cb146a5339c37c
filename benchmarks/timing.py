"""What every benchmark shares: median-of-N timing, a plain-text table, and `--json` / `--repeat` options.

Numbers are medians of `repeat` repetitions, each long enough (>= `min_seconds`) that timer resolution and call
overhead do not matter; baselines and results come from the same run, so ratios are what to read.
"""

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable


def median_seconds(fn: Callable[[], object], repeat: int = 7, min_seconds: float = 0.02) -> float:
    """Median time of one call of `fn` over `repeat` repetitions (after a warm-up call)."""
    return median_seconds_interleaved({"fn": fn}, repeat, min_seconds)["fn"]


def median_seconds_interleaved(fns: dict[str, Callable[[], object]], repeat: int = 7,
                               min_seconds: float = 0.02) -> dict[str, float]:
    """Median time per call of each function, repetitions taken in turn (A B C A B C ...).

    Interleaving spreads the load of a shared, noisy machine evenly over the variants, so their ratios hold up
    better than when each is timed in one block.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    numbers = {name: _calls_per_repetition(fn, min_seconds) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / numbers[name])
    return {name: statistics.median(values) for name, values in samples.items()}


def _calls_per_repetition(fn: Callable[[], object], min_seconds: float) -> int:
    """How many calls make a repetition of at least `min_seconds` (after a warm-up call)."""
    fn()
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return number
        number = max(number * 2, int(number * min_seconds / max(elapsed, 1e-9)))


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


def add_common_arguments(parser: argparse.ArgumentParser, repeat: int = 7) -> None:
    parser.add_argument("--repeat", type=int, default=repeat, help=f"repetitions per measurement (median; {repeat})")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to PATH as JSON")


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
