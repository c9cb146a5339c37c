"""`layer_norm_func`: layer normalization with a table rsqrt (NN-LUT's LayerNorm).

Stages, as TVM's own legalized LayerNorm so the same reduction rule schedules both: row sum and mean, the row sum of
squared deviations (two passes, more accurate than E[x^2] - mean^2), the row's `inv_std = rsqrt(var + eps)` from the
table under power-of-four scaling (a stage of its own: the reduction rule computes it for a vector of rows at once),
then `(x - mean) * inv_std` and the affine map. Over trailing axes with gamma and beta (a transformer's LayerNorm)
the kernel carries its own schedule (`_rows_layer_norm`, `row_passes`): three vector passes over each row's
contiguous memory (sum; squared deviations; the normalization and affine map) instead of the reduction rule's.
"""

import math
import numbers

from tvm import te, tirx
from tvm.script import tirx as T

from .pwl import as_kernel, check_axes, check_shape
from .row_passes import LANES, OPAQUE, fold, rows_at_once
from .pwl_expr import PWLSpec, Table, evaluate


def layer_norm_func(rsqrt_spec: PWLSpec, shape, axes, eps: float = 1e-5, has_gamma: bool = True,
                    has_beta: bool = True, residual: bool = False) -> tirx.PrimFunc:
    """LayerNorm of a float32 tensor of `shape` over `axes`; an unscheduled PrimFunc `(x, [gamma], [beta], out)`.

    gamma and beta have the shape of the normalized axes (as `relax.op.nn.layer_norm`); `rsqrt_spec` is a "pow4"
    table. `residual`: LayerNorm of `x + residual` (a transformer's residual add fused in), `(x, residual, gamma,
    beta, out)`, residual of x's shape; served over trailing axes with gamma and beta, on a non-empty tensor.
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
    rows_kernel = has_gamma and has_beta and axes == tuple(range(len(shape) - len(axes), len(shape))) and count > 0
    if residual and not rows_kernel:
        raise ValueError(f"layer_norm with a residual is served over trailing axes with gamma and beta of a non-empty "
                         f"tensor, not axes {axes} of shape {shape} (gamma {has_gamma}, beta {has_beta})")
    if rows_kernel:
        return as_kernel(_rows_layer_norm(table, shape, tuple(shape[a] for a in axes), math.prod(row_shape),
                                          float(eps), residual), "layer_norm")
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


def _rows_layer_norm(table: Table, shape, norm_shape, rows: int, eps: float, residual: bool) -> tirx.PrimFunc:
    """LayerNorm of `rows` contiguous rows of `norm_shape` (the trailing axes), gamma and beta of that shape,
    scheduled (see the module docstring); with `residual`, of `x + residual` (a block of rows summed into `out`
    first, then normalized in place: the float32 sum the separate add would store, read from L1).

    Sums are taken in LANES partial sums (the tail, plus the lanes folded pairwise): within float32 rounding of the
    reference's order.
    """
    length = math.prod(norm_shape)
    chunks, tail = divmod(length, LANES)
    group = rows_at_once(rows)
    inv_count = 1.0 / length

    @T.macro
    def normalize(x, gamma, beta, out, step):
        """Rows `step * group ...` of `x` normalized into `out` (which may be `x`: each element is read before it
        is written)."""
        part = T.alloc_buffer((group, LANES), "float32", scope="global")
        stats = T.alloc_buffer((group, 2), "float32", scope="global")  # per row its mean, then its inv_std
        for r in T.unroll(group):
            for lane in T.vectorized(LANES):
                part[r, lane] = T.float32(0)
        for r, j in T.grid(group, chunks):
            for lane in T.vectorized(LANES):
                part[r, lane] = part[r, lane] + x[step * group + r, j * LANES + lane]
        for r in T.unroll(group):
            stats[r, 0] = T.float32(0)
            for t in range(tail):
                stats[r, 0] = stats[r, 0] + x[step * group + r, chunks * LANES + t]
            stats[r, 0] = (stats[r, 0] + fold(tirx.Add, part[r, T.ramp(0, 1, LANES)])) * T.float32(inv_count)
            for lane in T.vectorized(LANES):
                part[r, lane] = T.float32(0)
        for r, j in T.grid(group, chunks):
            for lane in T.vectorized(LANES):
                part[r, lane] = part[r, lane] + (x[step * group + r, j * LANES + lane] - stats[r, 0]) * (
                    x[step * group + r, j * LANES + lane] - stats[r, 0])
        for r in T.unroll(group):
            stats[r, 1] = T.float32(0)
            for t in range(tail):
                stats[r, 1] = stats[r, 1] + (x[step * group + r, chunks * LANES + t] - stats[r, 0]) * (
                    x[step * group + r, chunks * LANES + t] - stats[r, 0])
            stats[r, 1] = evaluate(table, (stats[r, 1] + fold(tirx.Add, part[r, T.ramp(0, 1, LANES)])) * T.float32(
                inv_count) + T.float32(eps))
        for r, j in T.grid(group, chunks):
            for lane in T.vectorized(LANES):
                out[step * group + r, j * LANES + lane] = (x[step * group + r, j * LANES + lane] - stats[r, 0]) * (
                    stats[r, 1]) * gamma[j * LANES + lane] + beta[j * LANES + lane]
        for r, t in T.grid(group, tail):
            out[step * group + r, chunks * LANES + t] = (x[step * group + r, chunks * LANES + t] - stats[r, 0]) * (
                stats[r, 1]) * gamma[chunks * LANES + t] + beta[chunks * LANES + t]

    if residual:
        @T.prim_func(s_tir=True)
        def layer_norm_of_sum(x_in: T.Buffer(shape, "float32"), residual_in: T.Buffer(shape, "float32"),
                              gamma_in: T.Buffer(norm_shape, "float32"), beta_in: T.Buffer(norm_shape, "float32"),
                              out_in: T.Buffer(shape, "float32")):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE})
            with T.sblock("root"):
                x = T.decl_buffer((rows, length), "float32", data=x_in.data)
                res = T.decl_buffer((rows, length), "float32", data=residual_in.data)
                gamma = T.decl_buffer((length,), "float32", data=gamma_in.data)
                beta = T.decl_buffer((length,), "float32", data=beta_in.data)
                out = T.decl_buffer((rows, length), "float32", data=out_in.data)
                for step in T.parallel(rows // group):
                    for r, j in T.grid(group, chunks):
                        for lane in T.vectorized(LANES):
                            out[step * group + r, j * LANES + lane] = (x[step * group + r, j * LANES + lane]
                                                                       + res[step * group + r, j * LANES + lane])
                    for r, t in T.grid(group, tail):
                        out[step * group + r, chunks * LANES + t] = (x[step * group + r, chunks * LANES + t]
                                                                     + res[step * group + r, chunks * LANES + t])
                    normalize(out, gamma, beta, out, step)

        return layer_norm_of_sum

    @T.prim_func(s_tir=True)
    def layer_norm(x_in: T.Buffer(shape, "float32"), gamma_in: T.Buffer(norm_shape, "float32"),
                   beta_in: T.Buffer(norm_shape, "float32"), out_in: T.Buffer(shape, "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE})
        with T.sblock("root"):  # a root block: Relax's reshape analysis reads only block-structured TIR
            x = T.decl_buffer((rows, length), "float32", data=x_in.data)
            gamma = T.decl_buffer((length,), "float32", data=gamma_in.data)
            beta = T.decl_buffer((length,), "float32", data=beta_in.data)
            out = T.decl_buffer((rows, length), "float32", data=out_in.data)
            for step in T.parallel(rows // group):
                normalize(x, gamma, beta, out, step)

    return layer_norm
