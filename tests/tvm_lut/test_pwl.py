"""PWLTable: the NumPy reference evaluation, its edge cases, and validation."""

import numpy as np
import pytest

from tvm_lut.pwl import InvalidTable, PWLTable

RNG = np.random.default_rng(0)
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.2e-38, 3e38, -3e38, 1.0, 2.0, 4.0],
                    dtype=np.float32)


def _gelu_like():
    """Left asymptote 0, right asymptote x, a bend in between."""
    return PWLTable("gelu", [-3.0, 0.0, 3.0], [0.0, -0.1, 1.1, 1.0], [0.0, -0.3, -0.3, 0.0])


def _reference(table, x):
    """Segment evaluation by an explicit loop over segments (independent of searchsorted)."""
    x = np.asarray(x, np.float32)
    y = np.full(x.shape, np.nan, np.float32)
    edges = np.concatenate([[-np.inf], table.breakpoints, [np.inf]])
    for i in range(table.entries):
        inside = (x >= edges[i]) & (x < edges[i + 1]) if i < table.entries - 1 else (x >= edges[i])
        with np.errstate(invalid="ignore"):
            y[inside] = table.slopes[i] * x[inside] + table.intercepts[i]
    return y


def test_segments_match_reference_on_random_and_breakpoints():
    table = _gelu_like()
    x = np.concatenate([RNG.normal(0, 3, 5000), table.breakpoints, np.nextafter(table.breakpoints, -np.inf)])
    np.testing.assert_array_equal(table(x), _reference(table, x))


def test_edge_inputs_none_scaling():
    table = _gelu_like()
    y = table(np.array([np.nan, np.inf, -np.inf], np.float32))
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == 0.0  # 0 * -inf reads as the intercept 0
    assert table(np.zeros((0, 3), np.float32)).shape == (0, 3)
    assert table(np.ones((2, 1, 3))).dtype == np.float32


def test_pow2_scaling_is_reciprocal_of_the_mantissa_table():
    table = _interpolant("reciprocal", lambda m: 1 / m, 1, 2, "pow2")
    x = np.concatenate([RNG.uniform(-100, 100, 2000), np.exp(RNG.uniform(-80, 80, 2000)), SPECIALS]).astype(np.float32)
    with np.errstate(all="ignore"):
        expected = (1 / x.astype(np.float64)).astype(np.float32)
    y = table(x)
    finite = np.isfinite(expected) & (np.abs(expected) > 1e-37)  # below that the result is subnormal
    np.testing.assert_allclose(y[finite], expected[finite], rtol=2e-2)
    np.testing.assert_array_equal(np.signbit(y[~np.isnan(x)]), np.signbit(x[~np.isnan(x)]))
    assert np.isnan(table(np.float32(np.nan)))
    assert table(np.float32(0.0)) == np.inf and table(np.float32(-0.0)) == -np.inf
    assert table(np.float32(np.inf)) == 0 and np.signbit(table(np.float32(-np.inf)))


def test_pow4_scaling_is_rsqrt_of_the_mantissa_table():
    table = _interpolant("rsqrt", lambda m: m ** -0.5, 1, 4, "pow4")
    x = np.concatenate([np.exp(RNG.uniform(-85, 85, 4000)), SPECIALS[SPECIALS > 0]]).astype(np.float32)
    expected = (1 / np.sqrt(x.astype(np.float64))).astype(np.float32)
    np.testing.assert_allclose(table(x), expected, rtol=2e-2)
    y = table(np.array([-1.0, -np.inf, np.nan, 0.0, -0.0, np.inf], np.float32))
    assert np.isnan(y[:3]).all() and (y[3:5] == np.inf).all() and y[5] == 0


def test_subnormal_inputs_scale_like_normal_ones():
    table = _interpolant("reciprocal", lambda m: 1 / m, 1, 2, "pow2")
    tiny = np.float32(1.5 * 2.0 ** -140)  # subnormal; its reciprocal overflows to inf in float32
    assert table(tiny) == np.inf
    small = np.float32(1.5 * 2.0 ** -126)  # smallest normal binade
    assert table(small) == np.ldexp(table(np.float32(1.5)), 126)


def _interpolant(name, fn, lo, hi, scaling):
    """A 64-knot linear interpolation of fn on [lo, hi], constant outside (a valid scaled table)."""
    knots = np.linspace(lo, hi, 64)
    values = fn(knots)
    slopes = np.diff(values) / np.diff(knots)
    intercepts = values[:-1] - slopes * knots[:-1]
    return PWLTable(name, knots, np.r_[0, slopes, 0], np.r_[values[0], intercepts, values[-1]], scaling)


@pytest.mark.parametrize("kwargs, match", [
    (dict(breakpoints=[0.0, 0.0]), "breakpoints: must be strictly ascending"),
    (dict(breakpoints=[0.0]), r"breakpoints: shape \(1,\) must be"),
    (dict(slopes=[0.0, 1.0, np.nan]), "slopes: holds NaN"),
    (dict(intercepts=[0.0, 1.0]), "intercepts: shape"),
    (dict(scaling="log"), "scaling: must be one of"),
    (dict(scaling="pow2"), r"must cover \[1, 2\]"),
    (dict(name=""), "name: a non-empty string"),
])
def test_invalid_tables_are_rejected_naming_the_field(kwargs, match):
    args = dict(name="t", breakpoints=[0.0, 1.0], slopes=[0.0, 1.0, 0.0], intercepts=[0.0, 0.0, 1.0])
    args.update(kwargs)
    with pytest.raises(InvalidTable, match=match):
        PWLTable(**args)


def test_table_is_immutable_and_compares_by_value():
    table = _gelu_like()
    with pytest.raises(ValueError, match="read-only"):
        table.slopes[0] = 1
    assert table == _gelu_like() and table != PWLTable("gelu_tanh", table.breakpoints, table.slopes, table.intercepts)
    assert table.input_range == (-3.0, 3.0) and table.entries == 4
    assert "entries=4" in repr(table)
