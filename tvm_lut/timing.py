"""Median-of-N timing of a call: the one timer of the benchmarks and of `tvm-lut profile`.

Numbers are medians of `repeat` repetitions, each long enough (>= `min_seconds`) that timer resolution and call
overhead do not matter. The clock is wall time (`time.perf_counter`) unless given: `time.process_time` (the
process's CPU time) measures single-threaded code without the time other processes of a shared machine take from
it (it sums every thread, so it is no latency for multi-threaded code).
"""

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeat: int = 7, min_seconds: float = 0.02,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of one call of `fn` over `repeat` repetitions (after a warm-up call)."""
    return median_seconds_interleaved({"fn": fn}, repeat, min_seconds, clock)["fn"]


def median_seconds_interleaved(fns: dict[str, Callable[[], object]], repeat: int = 7, min_seconds: float = 0.02,
                               clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
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
            start = clock()
            for _ in range(numbers[name]):
                fn()
            samples[name].append((clock() - start) / numbers[name])
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
