"""`segments(table, x)`: the piecewise-linear evaluation as one TIR op, lowered once its vector width is known.

`y = slopes[i] * x + intercepts[i]`, `i = count(breakpoints <= x)`. Its fastest form needs a table lookup, and a
lookup from constants has no good portable form in TIR (TVM 0.27 has no constant buffers; a vectorized gather is
scalarized lane by lane), while x86 has one instruction for it, a register permute (`vpermps`). So the evaluation is
an op of its own, `tvm_lut.pwl_segments(x, *breakpoints, *slopes, *intercepts)`: pure and vectorizable, so the
schedule rules vectorize it like any arithmetic, and lowered after vectorization (`llvm.FLowerIntrinsic`):

- AVX-512F (16-lane registers) or AVX2 (8): a branch-free binary search over the breakpoints (log2(S) rounds of
  compare + blend, probing with a permute from round 3 on), then two permutes for slope and intercept and an FMA:
  about 20 instructions per register for 16 segments. With 8 lanes a 16-entry table spans two registers (two
  permutes and a blend per lookup), but the probes a round can reach fit one. Fewer lanes (a scalar too) are
  widened to one register, more are split;
- other ISAs: a compare + two blends per breakpoint as a balanced tree (depth log2(S)), branch-free.

The lowering callback sees the call, not the function's target, and `tvm.compile` lowers TIR outside any target
scope. So the register width is an argument of the call, `pwl_segments(x, width, *table)`, 0 (unbound) when a kernel
is defined; `bind_register_width(func, target)` fixes it where the target is known: every schedule rule and
`ApplyCPUSchedules` call it. An unbound call is lowered for `Target.current()`, else in the portable form, never
for a guess of the CPU (an AVX-512 host building for an AVX2 or ARM CPU would emit what that CPU cannot run).

Semantics (both forms): NaN compares false everywhere and stays NaN through the multiply-add; an infinite x on a
flat outer segment (`0 * inf`) gives the intercept. Tables hold 1 to 16 segments (one 512-bit register).
"""

from collections.abc import Sequence

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir import Expr as PrimExpr
from tvm.target import Target
from tvm.target.codegen import target_has_features

OP_NAME = "tvm_lut.pwl_segments"
MAX_SEGMENTS = 16
_PURE = 1  # tirx.CallEffectKind.Pure
# register width in lanes -> (the CPU feature it needs, the permute); the widest available is used
_PERMUTES = {16: ("avx512f", "llvm.x86.avx512.permvar.sf.512"), 8: ("avx2", "llvm.x86.avx2.permps")}


_UNBOUND, _PORTABLE = 0, 1  # register widths of a call besides 8 and 16: decided at lowering; no permutes


def segments(breakpoints: Sequence[float], slopes: Sequence[float], intercepts: Sequence[float],
             x: PrimExpr) -> PrimExpr:
    """The table applied to the float32 expression `x` (sizes S-1, S, S; validated by `pwl_expr.Table`), its
    register width unbound."""
    constants = [*breakpoints, *slopes, *intercepts]
    return tirx.call_intrin("float32", OP_NAME, x, _i32(_UNBOUND), *(_f32(v) for v in constants))


def register_width(target: Target) -> int:
    """Lanes of the widest register `target` can permute in (16: AVX-512F, 8: AVX2), else 1 (the portable form)."""
    if target.kind.name == "llvm":
        for width, (feature, _) in _PERMUTES.items():
            if target_has_features([feature], target):
                return width
    return _PORTABLE


def bind_register_width(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """`func` with every unbound `pwl_segments` call lowered for `target`'s registers (unchanged if it has none)."""
    op = tvm.ir.Op.get(OP_NAME)
    width = _i32(register_width(target))

    def bind(call):
        if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(op)) or _immediate(call.args[1]) != _UNBOUND:
            return call
        return tirx.call_intrin(str(call.ty.dtype), OP_NAME, call.args[0], width, *call.args[2:])

    return tvm_ffi.structural_map(func, (tvm.ir.Call, bind), order="post")


def _f32(value) -> tirx.FloatImm:
    return tirx.FloatImm("float32", float(np.float32(value)))


def _i32(value: int) -> tirx.IntImm:
    return tirx.IntImm("int32", value)


def _splat(scalar: PrimExpr, lanes: int) -> PrimExpr:
    return scalar if lanes == 1 else tirx.Broadcast(scalar, lanes)


def _immediate(arg):
    return (arg.value if isinstance(arg, tirx.Broadcast) else arg).value


def _unpack(call):
    """(x, lanes, register width, breakpoints, slopes, intercepts) of a (possibly vectorized) call."""
    lanes = tvm.DataType(str(call.ty.dtype)).lanes
    values = [float(_immediate(a)) for a in call.args[2:]]
    size = (len(values) + 1) // 3
    return (call.args[0], lanes, int(_immediate(call.args[1])), values[:size - 1], values[size - 1:2 * size - 1],
            values[2 * size - 1:])


def _let(name: str, value: PrimExpr, body) -> PrimExpr:
    """`body(v)` with `v` bound to `value` once (the search reads x and each index several times)."""
    var = tirx.Var(name, str(value.ty.dtype))
    return tirx.Let(var, value, body(var))


def _line(x, lanes, slope, intercept, slopes, intercepts) -> PrimExpr:
    y = slope * x + intercept
    for end, inf in ((0, -np.inf), (-1, np.inf)):
        if slopes[end] == 0:
            y = tirx.Select(x == _splat(_f32(inf), lanes), _splat(_f32(intercepts[end]), lanes), y)
    return y


def _select_tree(x, lanes, breakpoints, slopes, intercepts) -> PrimExpr:
    """A balanced tree of selects on independent compares: as many instructions as a chain, depth log2(S)."""

    def pick(lo: int, hi: int):  # (slope, intercept) of segments [lo, hi)
        if hi - lo == 1:
            return _splat(_f32(slopes[lo]), lanes), _splat(_f32(intercepts[lo]), lanes)
        mid = (lo + hi) // 2
        above = x >= _splat(_f32(breakpoints[mid - 1]), lanes)
        (right_slope, right_intercept), (left_slope, left_intercept) = pick(mid, hi), pick(lo, mid)
        return tirx.Select(above, right_slope, left_slope), tirx.Select(above, right_intercept, left_intercept)

    return _line(x, lanes, *pick(0, len(slopes)), slopes, intercepts)


def _binary_search(x, lanes, breakpoints, slopes, intercepts) -> PrimExpr:
    """Upper-bound search with register permutes; breakpoints padded with NaN, which no x reaches."""
    size = 1 << (len(slopes) - 1).bit_length()
    probes = list(breakpoints) + [np.nan] * (size - len(slopes))

    def lookup(values, index):
        _, intrinsic = _PERMUTES[lanes]
        dtype = f"float32x{lanes}"
        low = tirx.call_llvm_pure_intrin(dtype, intrinsic, _vector(values[:lanes], lanes), index)
        if len(values) <= lanes:
            return low
        high = tirx.call_llvm_pure_intrin(dtype, intrinsic, _vector(values[lanes:], lanes), index)
        return tirx.Select(index >= _splat(_i32(lanes), lanes), high, low)

    def probe(index, step):
        """breakpoints[index + step - 1]: a constant in round 1, a blend on round 1's compare in round 2."""
        if step == size // 2:
            return _splat(_f32(probes[step - 1]), lanes)
        if step == size // 4:
            upper = x >= _splat(_f32(probes[size // 2 - 1]), lanes)
            return tirx.Select(upper, _splat(_f32(probes[size // 2 + step - 1]), lanes),
                               _splat(_f32(probes[step - 1]), lanes))
        if len(probes) <= lanes:
            # index is a multiple of 2*step here: a table whose entry `index` is probes[index + step - 1] is
            # permuted by the index itself (no add per round).
            return lookup([probes[j - j % (2 * step) + step - 1] for j in range(size)], index)
        # index is a multiple of 2*step here, so the probes this round can reach, probes[step - 1 :: 2 * step],
        # fit one register (8 lanes, 16 entries): one permute by index / (2 * step) instead of two and a blend.
        shift = _splat(_i32((2 * step).bit_length() - 1), lanes)
        return lookup(probes[step - 1::2 * step], tirx.shift_right(index, shift))

    def search(index, step):
        if step == 0:
            return _line(x, lanes, lookup(slopes, index), lookup(intercepts, index), slopes, intercepts)
        found = tirx.Select(x >= probe(index, step), index + _splat(_i32(step), lanes), index)
        return _let("i", found, lambda i: search(i, step // 2))

    return search(_splat(_i32(0), lanes), size // 2)


def _vector(values: Sequence[float], lanes: int) -> PrimExpr:
    """A constant float32 vector of `lanes` entries (zero-padded)."""
    padded = list(values) + [0.0] * (lanes - len(values))
    return tirx.Shuffle([_f32(v) for v in padded], list(range(lanes)))


def _lower(call) -> PrimExpr:
    x, lanes, width, breakpoints, slopes, intercepts = _unpack(call)
    if width == _UNBOUND:
        target = Target.current(allow_none=True)
        width = _PORTABLE if target is None else register_width(target)
    # A scalar too (a per-row value such as softmax's reciprocal, one row at a time) is widened to one register:
    # it sits on every row's critical path, and the register search is shorter than a scalar select tree
    # (LUT softmax 8x12x64x64 at one thread: 0.40 -> 0.32 ms).
    if width == _PORTABLE or (lanes > width and lanes % width):
        return _let("x", x, lambda x: _select_tree(x, lanes, breakpoints, slopes, intercepts))

    def search(x):
        return _let("x", x, lambda x: _binary_search(x, width, breakpoints, slopes, intercepts))

    if lanes > width:  # wider than a register: one search per register
        parts = [search(tirx.Shuffle([x], list(range(k, k + width)))) for k in range(0, lanes, width)]
        return tirx.Shuffle(parts, list(range(lanes)))
    # Fewer lanes (a narrow loop): widen to one register and back.
    wide = x if lanes == width else tirx.Shuffle([x] * (width // lanes), list(range(width)))
    y = search(wide)
    return y if lanes == width else tirx.Shuffle([y], list(range(lanes)))


def _lower_portable(call) -> PrimExpr:
    x, lanes, _, breakpoints, slopes, intercepts = _unpack(call)
    return _let("x", x, lambda x: _select_tree(x, lanes, breakpoints, slopes, intercepts))


def _register() -> None:
    if OP_NAME in tvm.ir.Op.list_op_names():
        return
    tvm.get_global_func("ir.RegisterOp")(OP_NAME, "piecewise-linear table evaluation (tvm-lut)")
    tvm.ir.register_op_attr(OP_NAME, "TCallEffectKind", _PURE)
    tvm.ir.register_op_attr(OP_NAME, "TVectorizable", True)
    tvm.ir.register_op_attr(OP_NAME, "TScriptPrinterName", OP_NAME)
    tvm.ir.register_op_attr(OP_NAME, "llvm.FLowerIntrinsic", _lower)
    tvm.ir.register_op_attr(OP_NAME, "default.FLowerIntrinsic", _lower_portable)


_register()
