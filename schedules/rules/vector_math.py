"""float32 `exp` and `erf` as SIMD-friendly polynomials, so softmax and GELU vectorize.

LLVM lowers `exp` and `erf` of a float vector to one libm call (`expf`, `erff`) per lane: a vectorized softmax or
GELU loop then runs at scalar speed (GELU was a quarter of MiniLM's time). `vectorizable_math(func)` replaces every
float32 `exp` and `erf` of a PrimFunc by arithmetic that stays in vector registers, as oneDNN and Eigen do:

- exp: Cody-Waite reduction `x = n ln2 + r` with `|r| <= ln2 / 2`, Cephes' degree-7 polynomial for `exp(r)`, and
  `2^n` built from exponent bits, applied in two halves (so overflow gives inf and denormals round once).
- erf: Eigen's rational approximation on [-4, 4] (erf is +-1 in float32 beyond).

Both are within a few float32 ulps of the exact functions (tests/schedules/test_rule_vector_math.py measures it);
NaN stays NaN and +-inf map to the exact limits. Other dtypes and other functions are left as they are.
"""

import tvm_ffi
from tvm import ir, tirx

_LOG2E = 1.44269504088896341
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = hi + lo; n * hi is exact for |n| <= 2^9
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_EXP_MIN, _EXP_MAX = -104.0, 88.73  # exp underflows to 0 below and overflows to inf above, in float32
_ERF_NUM = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
            -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_DEN = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
            -1.42647390514189e-02)


def _f32(value: float) -> tirx.FloatImm:
    return tirx.FloatImm("float32", value)


def _horner(x, coefficients):
    """coefficients[0] x^(d) + ... + coefficients[-1], highest degree first."""
    result = _f32(coefficients[0])
    for c in coefficients[1:]:
        result = result * x + _f32(c)
    return result


def _let(name: str, value, body_of, dtype: str = "float32"):
    """`body_of(v)` with `v` bound once to `value` (the expression is used several times)."""
    var = tirx.Var(name, dtype)
    return tirx.Let(var, value, body_of(var))


def _clamp(x, low: float, high: float):
    return tirx.Min(tirx.Max(x, _f32(low)), _f32(high))


def _keep_nan(x, value):
    """`value`, or x itself where x is NaN (the clamps map NaN to a bound)."""
    return tirx.Select(tirx.isnan(x), x, value)


def _ldexp(y, n):
    """y * 2^n for an int32 n in [-252, 254]: two scalings by normal powers of two (neither exponent field
    overflows), the small one first, so a result beyond float32 range becomes inf and a denormal one rounds once."""
    def power(k):
        return tirx.reinterpret("float32", tirx.shift_left(k + 127, 23))

    return _let("half", tirx.shift_right(n, 1), lambda half: y * power(half) * power(n - half), "int32")


def exp_f32(x):
    """exp(x) for float32 x, in vector arithmetic."""
    def body(v):
        clamped = _clamp(v, _EXP_MIN, _EXP_MAX)

        def reduced(n):
            def scaled(r):
                return _ldexp(_horner(r, _EXP_POLY) * r * r + r + _f32(1.0), tirx.Cast("int32", n))

            return _let("r", clamped - n * _f32(_LN2_HI) - n * _f32(_LN2_LO), scaled)

        return _keep_nan(v, _let("n", tirx.floor(clamped * _f32(_LOG2E) + _f32(0.5)), reduced))

    return _let("x", x, body)


def erf_f32(x):
    """erf(x) for float32 x, in vector arithmetic (a rational function on [-4, 4])."""
    def body(v):
        def ratio(c):
            return _let("c2", c * c, lambda c2: c * _horner(c2, _ERF_NUM) / _horner(c2, _ERF_DEN))

        return _keep_nan(v, _let("c", _clamp(v, -4.0, 4.0), ratio))

    return _let("x", x, body)


_REPLACEMENTS = {"tirx.exp": exp_f32, "tirx.erf": erf_f32}


def vectorizable_math(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with every float32 exp and erf replaced by its vector-arithmetic form (unchanged if it has none)."""
    def replace(call):
        op = call.op
        rewrite = _REPLACEMENTS.get(op.name) if isinstance(op, ir.Op) else None
        if rewrite is None or str(call.ty) != "float32":
            return call
        return rewrite(call.args[0])

    return tvm_ffi.structural_map(func, (ir.Call, replace), order="post")


def divisions_as_products(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with every float32 division by a constant `x / c` replaced by `x * (1 / c)`.

    A vector division is a slow instruction (on znver4 one 16-lane `vdivps` per ~5 cycles, against two
    multiply-adds per cycle): hardswish's `/ 6` in a MobileNetV3 conv epilogue cost more than its arithmetic. The
    product differs from the quotient by at most an ulp or so of float32 (exact when `c` is a power of two).
    """
    def replace(div):
        if str(div.ty) != "float32" or not isinstance(div.b, tirx.FloatImm) or div.b.value == 0.0:
            return div
        return tirx.Mul(div.a, _f32(1.0 / div.b.value))

    return tvm_ffi.structural_map(func, (tirx.Div, replace), order="post")
