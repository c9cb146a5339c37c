"""`softmax_func`: softmax with a table exp and a table reciprocal (NN-LUT's softmax).

Stages, as TVM's own softmax so the same reduction rule schedules both: row max, `exp(x - max)` from the exp table,
row sum, the row's reciprocal from the table under power-of-two scaling (a stage of its own, once per row and not per
element; the reduction rule computes it for a vector of rows where it can), and the output `e * recip`.
"""

from tvm import te, tirx

from .pwl import as_kernel, check_axes, check_shape
from .pwl_expr import PWLSpec, Table, evaluate


def softmax_func(exp_spec: PWLSpec, recip_spec: PWLSpec, shape, axis: int = -1) -> tirx.PrimFunc:
    """Softmax of a float32 tensor of `shape` along `axis`; an unscheduled PrimFunc `(x, out)`.

    `exp_spec` must be a plain table (scaling "none", fitted on x - max <= 0); `recip_spec` a "pow2" table.
    """
    exp_table, recip_table = Table(exp_spec, "exp_spec"), Table(recip_spec, "recip_spec")
    if exp_table.scaling != "none" or recip_table.scaling != "pow2":
        raise ValueError(f"softmax needs an exp table with scaling 'none' and a reciprocal table with 'pow2', "
                         f"got {exp_table.scaling!r} and {recip_table.scaling!r}")
    shape = check_shape(shape)
    (axis,) = check_axes(axis, len(shape), "softmax axis")
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
