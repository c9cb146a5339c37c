"""`segments(table, x)`: the piecewise-linear evaluation as one TIR op, lowered once its vector width is known.

`y = slopes[i] * x + intercepts[i]`, `i = count(breakpoints <= x)`. Its fastest form needs a table lookup, and a
lookup from constants has no good portable form in TIR (TVM 0.27 has no constant buffers; a vectorized gather is
scalarized lane by lane), while x86 has one instruction for it, a register permute (`vpermps`). So the evaluation is
an op of its own, `tvm_lut.pwl_segments(x, *breakpoints, *slopes, *intercepts)`: pure and vectorizable, so the
schedule rules vectorize it like any arithmetic, and lowered after vectorization (`llvm.FLowerIntrinsic`):

- AVX-512F (16-lane registers): a uniform directory over the breakpoints (`segment_directory`): the cell of x
  (one multiply-add, a clamp, a convert), its first segment from one register permute (`vpermd` / `vpermi2d` for
  16 / 32 cells, `vpermb` / `vpermi2b` for 64 / 128 with AVX512-VBMI), one permute and one compare with the next
  breakpoint; then two permutes for slope and intercept and an FMA: 13 instructions per register for 16 segments,
  against 17 for the search. Tables whose breakpoints crowd too close for 128 cells (or 32 without VBMI), and
  tables of 4 segments or fewer, keep the search;
- AVX2 (8 lanes), or AVX-512 without a directory: a branch-free binary search over the breakpoints (log2(S) rounds
  of compare + blend, probing with a permute from round 3 on), then two permutes for slope and intercept and an
  FMA. With 8 lanes a 16-entry table spans two registers (two permutes and a blend per lookup), but the probes a
  round can reach fit one. Fewer lanes (a scalar too) are widened to one register, more are split;
- other ISAs: a compare + two blends per breakpoint as a balanced tree (depth log2(S)), branch-free.

The lowering callback sees the call, not the function's target, and `tvm.compile` lowers TIR outside any target
scope. So the register width and the largest directory the target can look up are arguments of the call,
`pwl_segments(x, width, directory, *table)`, width 0 (unbound) when a kernel is defined; `bind_register_width(func,
target)` fixes both where the target is known: every schedule rule and `ApplyCPUSchedules` call it. An unbound call is lowered for `Target.current()`, else in the portable form, never
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

from . import segment_directory

OP_NAME = "tvm_lut.pwl_segments"
MAX_SEGMENTS = 16
_PURE = 1  # tirx.CallEffectKind.Pure
# register width in lanes -> (the CPU feature it needs, the permute); the widest available is used
_PERMUTES = {16: ("avx512f", "llvm.x86.avx512.permvar.sf.512"), 8: ("avx2", "llvm.x86.avx2.permps")}
# directory size -> (the CPU feature it needs, the permute of its entries, their dtype); 16-lane registers only
_DIRECTORY_PERMUTES = {
    16: ("avx512f", "llvm.x86.avx512.permvar.si.512", "int32"),
    32: ("avx512f", "llvm.x86.avx512.vpermi2var.d.512", "int32"),
    64: ("avx512vbmi", "llvm.x86.avx512.permvar.qi.512", "int8"),
    128: ("avx512vbmi", "llvm.x86.avx512.vpermi2var.qi.512", "int8"),
}
_MIN_DIRECTORY_SEGMENTS = 5  # up to 4 segments the search's 2 rounds are as short as the directory


_UNBOUND, _PORTABLE = 0, 1  # register widths of a call besides 8 and 16: decided at lowering; no permutes


def segments(breakpoints: Sequence[float], slopes: Sequence[float], intercepts: Sequence[float],
             x: PrimExpr) -> PrimExpr:
    """The table applied to the float32 expression `x` (sizes S-1, S, S; validated by `pwl_expr.Table`), its
    register width unbound."""
    constants = [*breakpoints, *slopes, *intercepts]
    return tirx.call_intrin("float32", OP_NAME, x, _i32(_UNBOUND), _i32(0), *(_f32(v) for v in constants))


def register_width(target: Target) -> int:
    """Lanes of the widest register `target` can permute in (16: AVX-512F, 8: AVX2), else 1 (the portable form)."""
    if target.kind.name == "llvm":
        for width, (feature, _) in _PERMUTES.items():
            if target_has_features([feature], target):
                return width
    return _PORTABLE


def directory_size(target: Target) -> int:
    """Entries of the largest segment directory `target` looks up in one permute (0: none, the search only)."""
    if register_width(target) != 16:
        return 0
    return max(size for size, (feature, _, _) in _DIRECTORY_PERMUTES.items() if target_has_features([feature], target))


def bind_register_width(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """`func` with every unbound `pwl_segments` call lowered for `target`'s registers (unchanged if it has none)."""
    op = tvm.ir.Op.get(OP_NAME)
    width, directory = _i32(register_width(target)), _i32(directory_size(target))

    def bind(call):
        if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(op)) or _immediate(call.args[1]) != _UNBOUND:
            return call
        return tirx.call_intrin(str(call.ty.dtype), OP_NAME, call.args[0], width, directory, *call.args[3:])

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
    """(x, lanes, register width, directory size, breakpoints, slopes, intercepts) of a (possibly vectorized) call."""
    lanes = tvm.DataType(str(call.ty.dtype)).lanes
    values = [float(_immediate(a)) for a in call.args[3:]]
    size = (len(values) + 1) // 3
    return (call.args[0], lanes, int(_immediate(call.args[1])), int(_immediate(call.args[2])), values[:size - 1],
            values[size - 1:2 * size - 1], values[2 * size - 1:])


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


def _permute(values: Sequence[float], index: PrimExpr, lanes: int) -> PrimExpr:
    """values[index] per lane from registers: one permute, or two and a blend when `values` span two."""
    _, intrinsic = _PERMUTES[lanes]
    dtype = f"float32x{lanes}"
    low = tirx.call_llvm_pure_intrin(dtype, intrinsic, _vector(values[:lanes], lanes), index)
    if len(values) <= lanes:
        return low
    high = tirx.call_llvm_pure_intrin(dtype, intrinsic, _vector(values[lanes:], lanes), index)
    return tirx.Select(index >= _splat(_i32(lanes), lanes), high, low)


def _binary_search(x, lanes, breakpoints, slopes, intercepts) -> PrimExpr:
    """Upper-bound search with register permutes; breakpoints padded with NaN, which no x reaches."""
    size = 1 << (len(slopes) - 1).bit_length()
    probes = list(breakpoints) + [np.nan] * (size - len(slopes))

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
            return _permute([probes[j - j % (2 * step) + step - 1] for j in range(size)], index, lanes)
        # index is a multiple of 2*step here, so the probes this round can reach, probes[step - 1 :: 2 * step],
        # fit one register (8 lanes, 16 entries): one permute by index / (2 * step) instead of two and a blend.
        shift = _splat(_i32((2 * step).bit_length() - 1), lanes)
        return _permute(probes[step - 1::2 * step], tirx.shift_right(index, shift), lanes)

    def search(index, step):
        if step == 0:
            return _line(x, lanes, _permute(slopes, index, lanes), _permute(intercepts, index, lanes), slopes,
                         intercepts)
        found = tirx.Select(x >= probe(index, step), index + _splat(_i32(step), lanes), index)
        return _let("i", found, lambda i: search(i, step // 2))

    return search(_splat(_i32(0), lanes), size // 2)


def _directory_search(x, directory: segment_directory.Directory, breakpoints, slopes, intercepts) -> PrimExpr:
    """The segment from a directory (16 lanes): the cell's first segment, plus one if x reaches the next breakpoint
    (padded with NaN, which no x reaches)."""
    lanes = 16
    cell = x * _splat(_f32(directory.scale), lanes) + _splat(_f32(directory.offset), lanes)
    cell = tirx.max(cell, _splat(_f32(0.0), lanes))  # NaN too: TVM's float max is a compare + select
    cell = tirx.Cast(f"int32x{lanes}", tirx.min(cell, _splat(_f32(directory.cells - 1), lanes)))
    probes = list(breakpoints) + [np.nan] * (lanes - len(breakpoints))

    def segment(first):
        index = tirx.Select(x >= _permute(probes, first, lanes), first + _splat(_i32(1), lanes), first)
        return _let("i", index, lambda i: _line(x, lanes, _permute(slopes, i, lanes), _permute(intercepts, i, lanes),
                                                 slopes, intercepts))

    return _let("first", _directory_entries(directory.first, cell), segment)


def _directory_entries(entries: Sequence[int], cell: PrimExpr) -> PrimExpr:
    """entries[cell] per int32 lane (16 lanes): a dword permute of one or two registers, or a byte permute (the
    int32 lane's three upper index bytes are 0 and pick entries[0] = 0, so the lane reads entries[cell])."""
    _, intrinsic, dtype = _DIRECTORY_PERMUTES[len(entries)]
    per_register = 512 // tvm.DataType(dtype).bits
    registers = [tirx.Shuffle([tirx.IntImm(dtype, v) for v in entries[k:k + per_register]], list(range(per_register)))
                 for k in range(0, len(entries), per_register)]
    vector = f"{dtype}x{per_register}"
    index = cell if dtype == "int32" else tirx.reinterpret(vector, cell)
    args = [registers[0], index] + registers[1:]  # (table, index) or (table low, index, table high)
    found = tirx.call_llvm_pure_intrin(vector, intrinsic, *args)
    return found if dtype == "int32" else tirx.reinterpret("int32x16", found)


def _vector(values: Sequence[float], lanes: int) -> PrimExpr:
    """A constant float32 vector of `lanes` entries (zero-padded)."""
    padded = list(values) + [0.0] * (lanes - len(values))
    return tirx.Shuffle([_f32(v) for v in padded], list(range(lanes)))


def _lower(call) -> PrimExpr:
    x, lanes, width, directory_entries, breakpoints, slopes, intercepts = _unpack(call)
    if width == _UNBOUND:
        target = Target.current(allow_none=True)
        width = _PORTABLE if target is None else register_width(target)
        directory_entries = 0 if target is None else directory_size(target)
    # A scalar too (a per-row value such as softmax's reciprocal, one row at a time) is widened to one register:
    # it sits on every row's critical path, and the register search is shorter than a scalar select tree
    # (LUT softmax 8x12x64x64 at one thread: 0.40 -> 0.32 ms).
    if width == _PORTABLE or (lanes > width and lanes % width):
        return _let("x", x, lambda x: _select_tree(x, lanes, breakpoints, slopes, intercepts))
    directory = None
    if directory_entries and len(slopes) >= _MIN_DIRECTORY_SEGMENTS:
        directory = segment_directory.plan(breakpoints, directory_entries)

    def search(x):
        if directory is not None:
            return _let("x", x, lambda x: _directory_search(x, directory, breakpoints, slopes, intercepts))
        return _let("x", x, lambda x: _binary_search(x, width, breakpoints, slopes, intercepts))

    if lanes > width:  # wider than a register: one search per register
        parts = [search(tirx.Shuffle([x], list(range(k, k + width)))) for k in range(0, lanes, width)]
        return tirx.Shuffle(parts, list(range(lanes)))
    # Fewer lanes (a narrow loop, also of a width that does not divide a register's, e.g. 7 or 15): widen to one
    # register and back.
    wide = x if lanes == width else tirx.Shuffle([x] * -(-width // lanes), list(range(width)))
    y = search(wide)
    return y if lanes == width else tirx.Shuffle([y], list(range(lanes)))


def _lower_portable(call) -> PrimExpr:
    x, lanes, _, _, breakpoints, slopes, intercepts = _unpack(call)
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
