"""The TIR expression of a piecewise-linear table: what every LUT kernel evaluates per element (or per row).

A table (the `PWLSpec` protocol: `breakpoints` (S-1,), `slopes` and `intercepts` (S,), `scaling`) is baked into
the expression as immediates, so a kernel needs no table argument and the values live in registers. The segment
evaluation is one op (`segments_op`: a binary search with register permutes once vectorized, a tree of compares
and selects otherwise); the power-of-two input scaling of `pow2` / `pow4` tables is integer arithmetic on the float's
bits. The semantics match `reference.pwl_reference` bit for bit up to FMA contraction (see
docs/architecture.md, "Piecewise-linear tables", for every special value).
"""

from typing import Protocol, runtime_checkable

import numpy as np
from tvm import tirx
from tvm.ir import Expr as PrimExpr
from tvm.tirx import FloatImm, IntImm

from . import segments_op

SCALINGS = ("none", "pow2", "pow4")
_SCALED_RANGE = {"pow2": (1.0, 2.0), "pow4": (1.0, 4.0)}

_MANTISSA_BITS = 0x007FFFFF
_ONE_BITS = 0x3F800000  # 1.0f: exponent field 127, mantissa 0
_SIGN_BITS = -0x80000000  # int32 0x80000000
_SMALLEST_NORMAL = 2.0**-126
_SUBNORMAL_SHIFT = 24  # x * 2^24 makes every subnormal float32 normal


@runtime_checkable
class PWLSpec(Protocol):
    """What a kernel needs from a table (`tvm_lut.PWLTable` satisfies it; `schedules` never imports `tvm_lut`)."""

    breakpoints: np.ndarray
    slopes: np.ndarray
    intercepts: np.ndarray
    scaling: str


class Table:
    """A validated float32 copy of a `PWLSpec` (what the kernels and the NumPy reference read)."""

    def __init__(self, spec: PWLSpec, role: str = "table"):
        missing = [f for f in ("breakpoints", "slopes", "intercepts", "scaling") if not hasattr(spec, f)]
        if missing:
            raise TypeError(f"{role}: {type(spec).__name__} is not a PWLSpec, it lacks {', '.join(missing)}")
        self.breakpoints, self.slopes, self.intercepts = (
            np.asarray(getattr(spec, f), dtype=np.float32).reshape(-1) for f in ("breakpoints", "slopes", "intercepts")
        )
        self.scaling = spec.scaling
        problem = self._problem()
        if problem:
            raise ValueError(f"{role}: {problem}")

    def _problem(self) -> str | None:
        bp, slopes, intercepts = self.breakpoints, self.slopes, self.intercepts
        if self.scaling not in SCALINGS:
            return f"scaling must be one of {SCALINGS}, got {self.scaling!r}"
        if not 1 <= slopes.size <= segments_op.MAX_SEGMENTS:
            return f"a table has 1 to {segments_op.MAX_SEGMENTS} segments (slopes), got {slopes.size}"
        if intercepts.size != slopes.size or bp.size != slopes.size - 1:
            return (f"breakpoints, slopes, intercepts must have sizes S-1, S, S; "
                    f"got {bp.size}, {slopes.size}, {intercepts.size}")
        for name, array in (("breakpoints", bp), ("slopes", slopes), ("intercepts", intercepts)):
            if not np.all(np.isfinite(array)):
                return f"{name} hold NaN or infinite values"
        if np.any(np.diff(bp) <= 0):
            return "breakpoints must be strictly ascending"
        scaled = _SCALED_RANGE.get(self.scaling)
        if scaled is not None and (bp.size == 0 or bp[0] > scaled[0] or bp[-1] < scaled[1]):
            return f"a {self.scaling!r} table must cover [{scaled[0]:g}, {scaled[1]:g}]"
        return None


def _f32(value) -> FloatImm:
    return FloatImm("float32", float(np.float32(value)))


def _i32(value: int) -> IntImm:
    return IntImm("int32", value)


def _bits(x: PrimExpr) -> PrimExpr:
    return tirx.reinterpret("int32", x)


def _float(bits: PrimExpr) -> PrimExpr:
    return tirx.reinterpret("float32", bits)


def _pow2(n: PrimExpr) -> PrimExpr:
    """2^n as float32 for integer n in [-126, 127], built in the exponent field."""
    return _float(tirx.shift_left(n + 127, _i32(23)))


def segments(table: Table, x: PrimExpr) -> PrimExpr:
    """`slopes[i] * x + intercepts[i]` with `i = count(breakpoints <= x)` (see `segments_op`)."""
    return segments_op.segments(table.breakpoints, table.slopes, table.intercepts, x)


def _split_exponent(magnitude: PrimExpr) -> tuple[PrimExpr, PrimExpr]:
    """(m, e) with magnitude = m * 2^e, m in [1, 2), for every finite positive float32 (subnormals too)."""
    tiny = magnitude < _f32(_SMALLEST_NORMAL)
    bits = _bits(tirx.Select(tiny, magnitude * _f32(2.0**_SUBNORMAL_SHIFT), magnitude))
    exponent = tirx.shift_right(bits, _i32(23)) - tirx.Select(tiny, _i32(127 + _SUBNORMAL_SHIFT), _i32(127))
    mantissa = _float(tirx.bitwise_or(tirx.bitwise_and(bits, _i32(_MANTISSA_BITS)), _i32(_ONE_BITS)))
    return mantissa, exponent


def reciprocal(table: Table, x: PrimExpr) -> PrimExpr:
    """1/x from a table over [1, 2]: |x| = m * 2^e, 1/x = sign(x) * T(m) * 2^-e (two exact power-of-two steps)."""
    magnitude = tirx.abs(x)
    mantissa, exponent = _split_exponent(magnitude)
    half = tirx.shift_right(_i32(0) - exponent, _i32(1))
    y = segments(table, mantissa) * _pow2(half) * _pow2(_i32(0) - exponent - half)
    y = tirx.Select(magnitude == _f32(np.inf), _f32(0.0), y)  # 0 -> inf comes out of 2^151 by itself
    y = _float(tirx.bitwise_or(_bits(y), tirx.bitwise_and(_bits(x), _i32(_SIGN_BITS))))
    return tirx.Select(magnitude >= _f32(0.0), y, x)  # false only for NaN (`isnan` stops TVM's vectorizer)


def rsqrt(table: Table, x: PrimExpr) -> PrimExpr:
    """1/sqrt(x) from a table over [1, 4]: x = m * 4^k (m in [1, 4)), rsqrt(x) = T(m) * 2^-k."""
    mantissa, exponent = _split_exponent(x)
    k = tirx.shift_right(exponent, _i32(1))  # floor(e / 2): arithmetic shift
    mantissa = mantissa * _pow2(exponent - k - k)  # times 1 or 2
    y = segments(table, mantissa) * _pow2(_i32(0) - k)
    y = tirx.Select(x == _f32(0.0), _f32(np.inf), y)
    y = tirx.Select(x == _f32(np.inf), _f32(0.0), y)
    # one compare for both: negative and NaN inputs fail it (an `Or` of two conditions stops TVM's vectorizer)
    return tirx.Select(x >= _f32(0.0), y, _f32(np.nan))


def evaluate(table: Table, x: PrimExpr) -> PrimExpr:
    """The table applied to a float32 expression, with the input scaling its `scaling` asks for."""
    return {"none": segments, "pow2": reciprocal, "pow4": rsqrt}[table.scaling](table, x)
