"""benchmarks.parallel_launch: the break-even it reports, and the two builds it times (no speed asserted)."""

import numpy as np
import tvm

from benchmarks import parallel_launch
from schedules import host_target


def _rows(pairs):
    return [{"elements": 1024 << k, "serial_us": s, "parallel_us": p} for k, (s, p) in enumerate(pairs)]


def test_break_even_is_where_parallel_stays_faster():
    assert parallel_launch.break_even(_rows([(1, 5), (2, 5), (8, 6), (16, 9)])) == 4096
    # a size where parallel won once but lost again above it is no break-even
    assert parallel_launch.break_even(_rows([(1, 5), (9, 6), (8, 9), (16, 9)])) == 8192
    assert parallel_launch.break_even(_rows([(1, 5), (2, 5)])) is None


def test_serial_and_parallel_builds_compute_the_sum():
    a, b = (np.random.default_rng(k).standard_normal(4096).astype("float32") for k in range(2))
    for work in (parallel_launch.NEVER, 0):
        out = tvm.runtime.tensor(np.zeros(4096, "float32"))
        parallel_launch.build(4096, host_target(2), work)(tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
        np.testing.assert_array_equal(out.numpy(), a + b)
