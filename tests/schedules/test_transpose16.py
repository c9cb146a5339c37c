"""The in-register 16 x 16 transpose against NumPy: every bit moved, NaN and +-inf included, at an offset."""

import numpy as np
import tvm
from tvm.script import tirx as T

from schedules.kernels.transpose16 import HALF, SQUARE, transpose_16x16

from .pq_harness import TARGET


def _transpose_kernel():
    @T.prim_func
    def transpose(x: T.Buffer((SQUARE, SQUARE), "float32"), out: T.Buffer((SQUARE + 3, SQUARE + 5), "float32")):
        T.func_attr({"tirx.noalias": True, "global_symbol": "main"})
        top = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
        bottom = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
        scratch_top = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
        scratch_bottom = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
        for r in T.unroll(HALF):
            top[r, T.ramp(0, 1, SQUARE)] = x[r, T.ramp(0, 1, SQUARE)]
            bottom[r, T.ramp(0, 1, SQUARE)] = x[HALF + r, T.ramp(0, 1, SQUARE)]
        transpose_16x16(top, bottom, scratch_top, scratch_bottom, out, 3, 5)

    return tvm.compile(tvm.IRModule({"main": transpose}), target=TARGET)["main"]


def test_transpose_moves_every_value():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SQUARE, SQUARE)).astype(np.float32)
    x[0, 1], x[2, 0], x[5, 9], x[15, 14] = np.nan, np.inf, -np.inf, 1e-45
    out = np.full((SQUARE + 3, SQUARE + 5), 7.0, np.float32)
    args = [tvm.runtime.tensor(a) for a in (x, out)]
    _transpose_kernel()(*args)
    result = args[1].numpy()
    expected = out.copy()
    expected[3:, 5:] = x.T
    np.testing.assert_array_equal(result.view(np.uint32), expected.view(np.uint32))
