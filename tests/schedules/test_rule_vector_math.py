import math

import numpy as np
import pytest
import tvm
from tvm import te, tirx, topi

from schedules.rules import Elementwise, Reduction
from schedules.rules.vector_math import divisions_as_products, vectorizable_math
from tests.schedules.rule_harness import TARGET, run, scheduled

RNG = np.random.default_rng(0)
EDGE = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 0.0, -0.0, 1e-45, -1e-30, 1e-30,
                 88.72, 88.73, 89.0, -87.3, -87.5, -103.0, -103.9, -104.0, -110.0, 4.0, -4.0, 3.99, -3.99],
                dtype="float32")
ERF = np.vectorize(math.erf, otypes=["float64"])
# Observed: exp within 2 ulp, erf within 6 ulp (Eigen's rational function); denormal exp results within one
# denormal step (they round once).
RTOL = {"exp": 3 * 2.0**-23, "erf": 8 * 2.0**-23}


def _unary(fn, shape, dtype="float32"):
    x = te.placeholder(shape, name="x", dtype=dtype)
    return te.create_prim_func([x, te.compute(shape, lambda *i: fn(x(*i)), name="y")])


def _inputs(scale: float, size: int) -> np.ndarray:
    x = (RNG.standard_normal(size) * scale).astype("float32")
    x[: EDGE.size] = EDGE
    return x


@pytest.mark.parametrize("name, fn, reference, scale", [
    ("exp", tirx.exp, np.exp, 40.0),
    ("erf", tirx.erf, ERF, 3.0),
])
@pytest.mark.parametrize("size", [4099, 64])
def test_matches_float64_reference(name, fn, reference, scale, size):
    x = _inputs(scale, size)
    with np.errstate(over="ignore"):
        expected = reference(x.astype("float64")).astype("float32")
    got = run(scheduled(Elementwise(), _unary(fn, (size,))), x)
    np.testing.assert_allclose(got, expected, rtol=RTOL[name], atol=1.5e-45)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))


def test_exp_limits_are_exact():
    x = np.array([np.inf, -np.inf, 0.0, 89.0, -110.0, np.nan], dtype="float32")
    got = run(scheduled(Elementwise(), _unary(tirx.exp, x.shape)), x)
    np.testing.assert_array_equal(got, [np.inf, 0.0, 1.0, np.inf, 0.0, np.nan])


def test_softmax_through_the_reduction_rule():
    x = te.placeholder((5, 3, 37), name="x")
    func = te.create_prim_func([x, topi.nn.softmax(x, axis=-1)])
    data = (RNG.standard_normal((5, 3, 37)) * 20).astype("float32")
    shifted = np.exp(data.astype("float64") - data.max(-1, keepdims=True))
    expected = shifted / shifted.sum(-1, keepdims=True)
    np.testing.assert_allclose(run(scheduled(Reduction(), func), data), expected, rtol=1e-6, atol=1e-12)


def test_rules_leave_no_libm_call():
    gelu = _unary(lambda v: v * (0.5 + 0.5 * tirx.erf(v * 0.7071067811865476)), (8, 1536))
    softmax_input = te.placeholder((8, 64), name="x")
    softmax = te.create_prim_func([softmax_input, topi.nn.softmax(softmax_input, axis=-1)])
    for rule, func in [(Elementwise(), gelu), (Reduction(), softmax)]:
        module = tvm.IRModule({"main": scheduled(rule, func).with_attr("global_symbol", "main")})
        code = tvm.tirx.build(module, target=TARGET).inspect_source("asm")
        assert "erff" not in code and "expf" not in code


def test_other_dtypes_stay_exact():
    func = _unary(tirx.exp, (16,), "float64")
    assert vectorizable_math(func).same_as(func)
    x = RNG.standard_normal(16)
    np.testing.assert_allclose(run(scheduled(Elementwise(), func), x), np.exp(x), rtol=1e-15)


def test_zero_size_is_served():
    assert run(scheduled(Elementwise(), _unary(tirx.exp, (0,))), np.zeros(0, "float32")).shape == (0,)


def test_divisions_by_float32_constants_become_products_and_others_stay():
    """x / 6 -> x * (1/6) within an ulp (exact for powers of two); x / y and integer division are left alone."""
    shape = (67,)
    x, y = te.placeholder(shape, name="x"), te.placeholder(shape, name="y")
    i = te.placeholder(shape, name="i", dtype="int32")
    out = te.compute(shape, lambda k: x[k] / 6.0 + x[k] / 0.25 + x[k] / y[k]
                     + tirx.Cast("float32", i[k] // 3), name="out")
    func = te.create_prim_func([x, y, i, out])
    text = divisions_as_products(func).script()
    assert "* T.float32(0.16666666666666666)" in text and "* T.float32(4.0)" in text
    assert "x[v_k] / y[v_k]" in text and "i[v_k] // 3" in text
    a = _inputs(1e3, shape[0])
    b = RNG.standard_normal(shape, dtype="float32")
    n = RNG.integers(-100, 100, shape, dtype="int32")
    with np.errstate(all="ignore"):
        expected = a / np.float32(6) + a / np.float32(0.25) + a / b + (n // 3).astype("float32")
        got = run(divisions_as_products(func), a, b, n)
    np.testing.assert_allclose(got, expected, rtol=4 * 2.0**-23, equal_nan=True)
