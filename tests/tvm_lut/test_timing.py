"""tvm_lut.timing: repetitions taken in turn, each engine's repetition started only once the workers the engine before
left spinning have stopped (what lets several multi-threaded runtimes be timed in one process), and the run-queue
wait recorded beside each repetition. No speed is asserted."""

import sys
import time

import pytest

from tvm_lut import timing

from tests.fresh_process import printed_by

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread states come from /proc")


def test_repetitions_are_taken_in_turn_and_each_is_kept():
    calls = []
    result = timing.timings({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=3,
                            min_seconds=0.0)
    assert calls[-6:] == ["a", "b"] * 3
    for name in "ab":
        assert len(result[name].seconds) == len(result[name].waiting) == len(result[name].threads_ran) == 3
        assert all(w is None or w >= 0 for w in result[name].waiting)
        assert all(n is None or n >= 1 for n in result[name].threads_ran)  # the caller's thread at least
        assert result[name].median == sorted(result[name].seconds)[1]
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        timing.timings({"a": lambda: None}, repeat=0)


@linux_only
def test_waiting_for_idle_threads_outlasts_a_spinning_worker():
    idle, waited, alive = printed_by("""
from tvm_lut import timing
idle = timing.wait_for_idle_threads(timeout=2.0)
worker = spin(0.2)
print(idle, timing.wait_for_idle_threads(timeout=5.0), worker.is_alive())
""")
    assert float(idle) < 2.0  # nothing spins: returns before the timeout
    assert alive == "False" and float(waited) < 5.0  # returned only once the worker had stopped


@linux_only
def test_settled_repetitions_never_share_the_cpus_with_the_previous_functions_workers():
    seen_busy = printed_by("""
from tvm_lut import timing
seen_busy = []
timing.timings({"spinner": lambda: spin(0.05), "checker": lambda: seen_busy.append(timing._others_runnable())},
               repeat=2, min_seconds=0.0, settle=True)
print(*seen_busy)
""")
    assert seen_busy and set(seen_busy) == {"False"}


def test_the_median_timer_reads_the_clock_it_is_given():
    ticks = iter(range(0, 10_000, 5))  # every reading 5 s after the last: a call of 5 s per the fake clock
    assert timing.median_seconds(lambda: None, repeat=3, min_seconds=0.0, clock=lambda: next(ticks)) == 5


@linux_only
def test_cores_count_the_cpu_time_of_the_process_threads_per_second():
    """A call that sleeps keeps no CPU busy; one that computes keeps its own busy while it runs (how much of the
    time it runs depends on the machine's load, so only the order is checked)."""
    def busy():
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            pass

    result = timing.timings({"sleeps": lambda: time.sleep(0.05), "computes": busy}, repeat=3, min_seconds=0.0)
    assert len(result["sleeps"].cores) == 3 and result["sleeps"].median_cores < 0.1 < result["computes"].median_cores
    assert all(stolen >= 0 for stolen in result["sleeps"].stolen + result["computes"].stolen)


def test_settled_repetitions_record_the_pools_fork_join():
    """Each settled repetition is followed by a fork-join of TVM's pool (where the threads ran); unsettled ones
    (one thread) record none."""
    settled = timing.timings({"noop": lambda: None}, repeat=2, min_seconds=0.0, settle=True)["noop"]
    assert len(settled.fork_join) == 2 and all(0 < f < 1 for f in settled.fork_join)
    assert settled.median_fork_join == pytest.approx(sum(settled.fork_join) / 2)
    plain = timing.timings({"noop": lambda: None}, repeat=2, min_seconds=0.0)["noop"]
    assert plain.fork_join == [None, None] and plain.median_fork_join is None
