"""`softmax_func`: softmax with a table exp and a table reciprocal (NN-LUT's softmax).

Stages: row max, `exp(x - max)` from the exp table, row sum, the row's reciprocal from the table under power-of-two
scaling (once per row, not per element), and the output `e * recip`. Along the last axis (attention scores) the
kernel carries its own schedule (`_rows_softmax`, `row_passes`): three vector passes over each row's contiguous
memory (max; exp stored with the row sum accumulated in the same pass; the scaling). Along another axis it is a compute definition in TVM's own softmax stages, which
the reduction rule schedules like the exact op (its per-row combine reads the row across memory, with gathers).
"""

import math
import numbers

import numpy as np
from tvm import te, tirx
from tvm.script import tirx as T

from .pwl import as_kernel, check_axes, check_shape
from .row_passes import LANES, OPAQUE, fold, rows_at_once
from .pwl_expr import PWLSpec, Table, evaluate


def softmax_func(exp_spec: PWLSpec, recip_spec: PWLSpec, shape, axis: int = -1, scale=None,
                 mask_shape=None) -> tirx.PrimFunc:
    """Softmax of a float32 tensor of `shape` along `axis`; an unscheduled PrimFunc `(x, out)`.

    `exp_spec` must be a plain table (scaling "none", fitted on x - max <= 0); `recip_spec` a "pow2" table.
    `mask_shape`: softmax of `x + mask` (attention's mask add fused in), `(x, mask, out)`, the mask of a shape that
    broadcasts against x and spans its last axis; `scale` ("divide" or "multiply", c) then scales x first (the
    scores' 1 / sqrt(d)): softmax of `x / c + mask`. Served along the last axis of a non-empty tensor.
    """
    exp_table, recip_table = Table(exp_spec, "exp_spec"), Table(recip_spec, "recip_spec")
    if exp_table.scaling != "none" or recip_table.scaling != "pow2":
        raise ValueError(f"softmax needs an exp table with scaling 'none' and a reciprocal table with 'pow2', "
                         f"got {exp_table.scaling!r} and {recip_table.scaling!r}")
    shape = check_shape(shape)
    (axis,) = check_axes(axis, len(shape), "softmax axis")
    rows_kernel = axis == len(shape) - 1 and shape[axis] > 0
    if mask_shape is not None or scale is not None:
        _check_mask(shape, mask_shape, scale, rows_kernel)
    if rows_kernel:
        return as_kernel(_rows_softmax(exp_table, recip_table, int(np.prod(shape[:-1])), shape[-1], shape, scale,
                                       None if mask_shape is None else tuple(mask_shape)), "softmax")
    x = te.placeholder(shape, "float32", name="x")
    row_shape = shape[:axis] + shape[axis + 1:]

    def at(row, k):
        return tuple(row[:axis]) + (k,) + tuple(row[axis:])

    def drop(index):
        return tuple(index[:axis]) + tuple(index[axis + 1:])

    k_max = te.reduce_axis((0, shape[axis]), name="k")
    row_max = te.compute(row_shape, lambda *r: te.max(x[at(r, k_max)], axis=k_max), name="row_max")
    e = te.compute(shape, lambda *i: evaluate(exp_table, x[i] - row_max[drop(i)]), name="exp")
    k_sum = te.reduce_axis((0, shape[axis]), name="k")
    row_sum = te.compute(row_shape, lambda *r: te.sum(e[at(r, k_sum)], axis=k_sum), name="row_sum")
    recip = te.compute(row_shape, lambda *r: evaluate(recip_table, row_sum[r]), name="recip")
    out = te.compute(shape, lambda *i: e[i] * recip[drop(i)], name="softmax")
    return as_kernel(te.create_prim_func([x, out]), "softmax")


def mask_fits(shape, mask_shape) -> bool:
    """Whether a mask of `mask_shape` broadcasts against `shape` (numpy rules) and spans its whole last axis (a mask
    along the rows, not a per-row shift)."""
    padded = (1,) * (len(shape) - len(mask_shape)) + tuple(mask_shape)
    return (len(mask_shape) <= len(shape) and len(shape) > 0 and padded[-1] == shape[-1]
            and all(m in (1, d) for m, d in zip(padded, shape)))


def _check_mask(shape, mask_shape, scale, rows_kernel: bool) -> None:
    if mask_shape is None:
        raise ValueError(f"softmax scales its input only with a mask to add (got scale {scale!r} without one)")
    if not rows_kernel:
        raise ValueError(f"softmax with a mask is served along the last axis of a non-empty tensor, not of {shape}")
    if not mask_fits(shape, check_shape(mask_shape)):
        raise ValueError(f"a mask of shape {mask_shape} does not broadcast against {shape} along its whole last axis")
    if scale is not None and not (isinstance(scale, (tuple, list)) and len(scale) == 2 and scale[0] in (
            "divide", "multiply") and isinstance(scale[1], numbers.Real)):
        raise ValueError(f"scale must be ('divide' or 'multiply', a number), got {scale!r}")


def _rows_softmax(exp_table: Table, recip_table: Table, rows: int, length: int, shape, scale=None,
                  mask_shape=None) -> tirx.PrimFunc:
    """Softmax of `rows` contiguous rows of `length` (`shape` flattened), scheduled (see the module docstring).

    The sum is taken in LANES partial sums (the tail, plus the lanes folded pairwise), so it rounds differently from
    a sequential sum: within float32 rounding of the reference's. A NaN anywhere in a row makes the whole row NaN
    (through its exp and the sum), as in the reference, whatever the max does with it. With `scale` or
    `mask_shape` (see `softmax_func`) a block of rows is first written to `out` as `x / c + mask` (or `x * c`), the
    float32 values the separate ops would store, then the passes run on `out` in place.
    """
    chunks, tail = divmod(length, LANES)
    group = rows_at_once(rows)

    @T.macro
    def normalize(x, out, step):
        """Rows `step * group ...` of `x` into `out` (which may be `x`: each element is read before it is
        written)."""
        part = T.alloc_buffer((group, LANES), "float32", scope="global")
        total = T.alloc_buffer((group, 2), "float32", scope="global")  # per row its max, then its reciprocal sum
        for r in T.unroll(group):
            for lane in T.vectorized(LANES):
                part[r, lane] = T.float32("-inf")
        for r, j in T.grid(group, chunks):
            for lane in T.vectorized(LANES):
                part[r, lane] = T.max(part[r, lane], x[step * group + r, j * LANES + lane])
        for r in T.unroll(group):
            total[r, 0] = T.float32("-inf")
            for t in range(tail):
                total[r, 0] = T.max(total[r, 0], x[step * group + r, chunks * LANES + t])
            total[r, 0] = T.max(total[r, 0], fold(T.max, part[r, T.ramp(0, 1, LANES)], LANES))
            for lane in T.vectorized(LANES):
                part[r, lane] = T.float32(0)
        for r, j in T.grid(group, chunks):
            for lane in T.vectorized(LANES):
                out[step * group + r, j * LANES + lane] = evaluate(
                    exp_table, x[step * group + r, j * LANES + lane] - total[r, 0])
                part[r, lane] = part[r, lane] + out[step * group + r, j * LANES + lane]
        for r in T.unroll(group):
            for t in range(tail):
                out[step * group + r, chunks * LANES + t] = evaluate(
                    exp_table, x[step * group + r, chunks * LANES + t] - total[r, 0])
            total[r, 1] = T.float32(0)
            for t in range(tail):
                total[r, 1] = total[r, 1] + out[step * group + r, chunks * LANES + t]
            total[r, 1] = evaluate(recip_table, total[r, 1] + fold(tirx.Add, part[r, T.ramp(0, 1, LANES)], LANES))
        for r, j in T.grid(group, chunks):
            for lane in T.vectorized(LANES):
                out[step * group + r, j * LANES + lane] = out[step * group + r, j * LANES + lane] * total[r, 1]
        for r, t in T.grid(group, tail):
            out[step * group + r, chunks * LANES + t] = out[step * group + r, chunks * LANES + t] * total[r, 1]

    attrs = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE, "tvm_lut.kernel": "softmax"}
    if mask_shape is None:
        @T.prim_func(s_tir=True)
        def softmax(x_in: T.Buffer(shape, "float32"), out_in: T.Buffer(shape, "float32")):
            T.func_attr(attrs)
            with T.sblock("root"):  # a root block: Relax's reshape analysis reads only block-structured TIR
                x = T.decl_buffer((rows, length), "float32", data=x_in.data)
                out = T.decl_buffer((rows, length), "float32", data=out_in.data)
                for step in T.parallel(rows // group):
                    normalize(x, out, step)

        return softmax

    offset = _mask_row_offset(shape, mask_shape)
    scaled = _scaling(scale)

    @T.prim_func(s_tir=True)
    def masked_softmax(x_in: T.Buffer(shape, "float32"), mask_in: T.Buffer(mask_shape, "float32"),
                       out_in: T.Buffer(shape, "float32")):
        T.func_attr(attrs)
        with T.sblock("root"):
            x = T.decl_buffer((rows, length), "float32", data=x_in.data)
            mask = T.decl_buffer((math.prod(mask_shape),), "float32", data=mask_in.data)
            out = T.decl_buffer((rows, length), "float32", data=out_in.data)
            for step in T.parallel(rows // group):
                for r, j in T.grid(group, chunks):
                    for lane in T.vectorized(LANES):
                        out[step * group + r, j * LANES + lane] = scaled(x[step * group + r, j * LANES + lane]) + (
                            mask[offset(step * group + r) + j * LANES + lane])
                for r, t in T.grid(group, tail):
                    out[step * group + r, chunks * LANES + t] = scaled(x[step * group + r, chunks * LANES + t]) + (
                        mask[offset(step * group + r) + chunks * LANES + t])
                normalize(out, out, step)

    return masked_softmax


def _scaling(scale):
    """`x -> x / c`, `x * c` or x itself, for `scale` ("divide" or "multiply", c) or None."""
    if scale is None:
        return lambda v: v
    op, value = scale
    c = tirx.const(value, "float32")
    return (lambda v: v / c) if op == "divide" else (lambda v: v * c)


def _mask_row_offset(shape, mask_shape):
    """`row -> offset` of row `row` of a tensor of `shape` (rows over all but the last axis) in a mask of
    `mask_shape` that broadcasts against it (numpy rules) and spans the last axis."""
    padded = (1,) * (len(shape) - len(mask_shape)) + tuple(mask_shape)
    strides = [math.prod(padded[a + 1:]) for a in range(len(shape))]
    inner = [math.prod(shape[a + 1:-1]) for a in range(len(shape) - 1)]

    def offset(row):
        terms = [(row // inner[a]) % shape[a] * strides[a] for a in range(len(shape) - 1) if padded[a] != 1]
        return sum(terms, tirx.const(0, "int32")) if terms else tirx.const(0, "int32")

    return offset
