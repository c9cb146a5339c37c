"""The matmul rule on ragged shapes (ViT's 197 tokens): padded to whole register tiles, only valid outputs written."""

import numpy as np
import pytest
from tvm import te, topi

from schedules.rules import Matmul
from tests.schedules.rule_harness import run, scheduled
from tests.schedules.test_rule_matmul import _matmul

RNG = np.random.default_rng(13)


@pytest.mark.parametrize("batch, m, n, k", [
    ((), 197, 64, 48),  # rows no tile divides
    ((), 24, 197, 40),  # columns no vector divides
    ((3,), 197, 197, 16),  # attention scores: both
    ((2,), 29, 45, 197),  # both, odd reduction
    ((), 9, 17, 5),  # just past one tile and one vector
])
def test_ragged_matmul_bias_relu_matches_numpy(batch, m, n, k):
    a, b = te.placeholder((*batch, m, k), name="a"), te.placeholder((*batch, k, n), name="b")
    bias = te.placeholder((n,), name="bias")
    func = scheduled(Matmul(), te.create_prim_func([a, b, bias, topi.nn.relu(topi.add(_matmul(a, b), bias))]))
    assert "pad" in func.script()
    x = RNG.standard_normal((*batch, m, k), dtype="float32")
    w = RNG.standard_normal((*batch, k, n), dtype="float32")
    c = RNG.standard_normal((n,), dtype="float32")
    np.testing.assert_allclose(run(func, x, w, c), np.maximum(x @ w + c, 0), rtol=1e-4, atol=1e-4)


def test_ragged_matmul_without_epilogue_keeps_nan_and_inf_in_place():
    a, b = te.placeholder((13, 8), name="a"), te.placeholder((8, 37), name="b")
    func = scheduled(Matmul(), te.create_prim_func([a, b, _matmul(a, b)]))
    x, w = RNG.standard_normal((13, 8), dtype="float32"), RNG.standard_normal((8, 37), dtype="float32")
    x[12, 0], w[3, 36] = np.nan, np.inf
    with np.errstate(invalid="ignore"):
        expected = x @ w
    got = run(func, x, w)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-4)


def test_tile_friendly_shapes_are_not_padded():
    a, b = te.placeholder((128, 64), name="a"), te.placeholder((64, 96), name="b")
    assert "_pad" not in scheduled(Matmul(), te.create_prim_func([a, b, _matmul(a, b)])).script()
