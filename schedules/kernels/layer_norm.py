"""`layer_norm_func`: layer normalization with a table rsqrt (NN-LUT's LayerNorm).

Stages, as TVM's own legalized LayerNorm so the same reduction rule schedules both: row sum and mean, the row sum of
squared deviations (two passes, more accurate than E[x^2] - mean^2), the row's `inv_std = rsqrt(var + eps)` from the
table under power-of-four scaling (a stage of its own: the reduction rule computes it for a vector of rows at once),
then `(x - mean) * inv_std` and the affine map.
"""

import math
import numbers

from tvm import te, tirx

from .pwl import as_kernel, check_axes, check_shape
from .pwl_expr import PWLSpec, Table, evaluate


def layer_norm_func(rsqrt_spec: PWLSpec, shape, axes, eps: float = 1e-5, has_gamma: bool = True,
                    has_beta: bool = True) -> tirx.PrimFunc:
    """LayerNorm of a float32 tensor of `shape` over `axes`; an unscheduled PrimFunc `(x, [gamma], [beta], out)`.

    gamma and beta have the shape of the normalized axes (as `relax.op.nn.layer_norm`); `rsqrt_spec` is a "pow4"
    table.
    """
    table = Table(rsqrt_spec, "rsqrt_spec")
    if table.scaling != "pow4":
        raise ValueError(f"layer_norm needs an rsqrt table with scaling 'pow4', got {table.scaling!r}")
    if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    shape = check_shape(shape)
    axes = check_axes(axes, len(shape), "layer_norm axes")
    x = te.placeholder(shape, "float32", name="x")
    params = [te.placeholder([shape[a] for a in axes], "float32", name=n)
              for n, present in (("gamma", has_gamma), ("beta", has_beta)) if present]
    gamma = params[0] if has_gamma else None
    beta = params[-1] if has_beta else None
    row_shape = tuple(d for a, d in enumerate(shape) if a not in axes)
    count = math.prod(shape[a] for a in axes)
    inv_count = tirx.const(1.0 / count if count else 0.0, "float32")

    def row_of(index):
        return tuple(v for a, v in enumerate(index) if a not in axes)

    def reduce_over(row):
        ks = [te.reduce_axis((0, shape[a]), name=f"k{a}") for a in axes]
        index, rest, ki = [], iter(row), iter(ks)
        for a in range(len(shape)):
            index.append(next(ki) if a in axes else next(rest))
        return tuple(index), ks

    def row_sum(values, name):
        def body(*row):
            index, ks = reduce_over(row)
            return te.sum(values(index), axis=ks)
        return te.compute(row_shape, body, name=name)

    total = row_sum(lambda i: x[i], "sum")
    mean = te.compute(row_shape, lambda *r: total[r] * inv_count, name="mean")

    def centered(i):
        return x[i] - mean[row_of(i)]

    var_sum = row_sum(lambda i: centered(i) * centered(i), "var_sum")

    inv_std = te.compute(row_shape, lambda *r: evaluate(table, var_sum[r] * inv_count + tirx.const(eps, "float32")),
                         name="inv_std")

    def affine(*i):
        y = centered(i) * inv_std[row_of(i)]
        norm_index = tuple(i[a] for a in axes)
        if gamma is not None:
            y = y * gamma[norm_index]
        if beta is not None:
            y = y + beta[norm_index]
        return y

    out = te.compute(shape, affine, name="layer_norm")
    return as_kernel(te.create_prim_func([x, *params, out]), "layer_norm")
