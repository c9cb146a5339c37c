"""Stand-in NN-LUT tables (NumPy interpolation) and a scheduled build + run of a LUT kernel (test helper)."""

import math
from types import SimpleNamespace

import numpy as np
import tvm

from schedules import ApplyCPUSchedules, host_target

TARGET = host_target()
RTOL, ATOL = 1e-5, 1e-6  # FMA contraction and summation order differ from NumPy by an ulp or so

EDGE_VALUES = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 3.0e38, -3.0e38, 1e-45, -1e-45, 1.2e-38, -1e-40,
                        1.0, -1.0, 0.5, 2.0, 4.0, 1e10, -1e10, 1e-10], dtype=np.float32)


def interp_table(fn, lo: float, hi: float, segments: int = 16, scaling: str = "none", left=None, right=None):
    """A PWLSpec interpolating `fn` on uniform breakpoints over [lo, hi]; outer lines default to the end chords."""
    breakpoints = np.linspace(lo, hi, segments - 1)
    y = fn(breakpoints)
    chords = np.diff(y) / np.diff(breakpoints)
    slopes = np.concatenate([[chords[0]], chords, [chords[-1]]])
    intercepts = np.concatenate([[y[0] - chords[0] * lo], y[:-1] - chords * breakpoints[:-1], [y[-1] - chords[-1] * hi]])
    if left is not None:
        slopes[0], intercepts[0] = left
    if right is not None:
        slopes[-1], intercepts[-1] = right
    return SimpleNamespace(breakpoints=breakpoints.astype(np.float32), slopes=slopes.astype(np.float32),
                           intercepts=intercepts.astype(np.float32), scaling=scaling)


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


GELU = interp_table(_gelu, -4.0, 4.0, left=(0.0, 0.0), right=(1.0, 0.0))
EXP = interp_table(np.exp, -16.0, 0.0, left=(0.0, 0.0), right=(0.0, 1.0))
RECIPROCAL = interp_table(lambda x: 1 / x, 1.0, 2.0, scaling="pow2")
RSQRT = interp_table(lambda x: 1 / np.sqrt(x), 1.0, 4.0, scaling="pow4")


def run_kernel(func: tvm.tirx.PrimFunc, *inputs: np.ndarray, target=TARGET) -> np.ndarray:
    """Schedule `func` with the CPU rules, compile it for `target` (one this host runs), run it; the last parameter
    is the output."""
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with target:
        mod = ApplyCPUSchedules()(mod)
        lib = tvm.compile(mod, target=target)
    out = func.params[-1]
    shape = [int(d) for d in out.shape]
    result = tvm.runtime.tensor(np.zeros(shape, dtype="float32"))
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32)) for x in inputs], result)
    return result.numpy()


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
