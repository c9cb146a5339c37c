"""benchmarks.helpers.engines.engine_timings: at several threads every engine's repetition starts once the workers
the engine before left spinning have stopped; the CPU clock stays a one-thread clock. No speed is asserted."""

import sys

import pytest

from benchmarks.helpers.engines import engine_timings

from tests.fresh_process import printed_by


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread states come from /proc")
def test_at_two_threads_no_engine_runs_beside_the_previous_engines_spinning_workers():
    *seen_busy, repetitions, most_threads_ran = printed_by("""
from benchmarks.helpers.engines import engine_timings
from tvm_lut import timing
seen_busy = []
timed = engine_timings({"spins after": lambda: spin(0.05),
                        "checks": lambda: seen_busy.append(timing._others_runnable())},
                       threads=2, repeat=2, min_seconds=0.0)
print(*seen_busy, min(len(t.seconds) for t in timed.values()), timed["checks"].most_threads_ran)
""")
    assert seen_busy and set(seen_busy) == {"False"}
    assert repetitions == "2"
    assert most_threads_ran == "1"  # no worker of the engine before ran beside it


def test_the_cpu_clock_is_refused_at_two_threads():
    with pytest.raises(ValueError, match="one thread only"):
        engine_timings({"a": lambda: None}, threads=2, repeat=1, cpu_clock=True)
