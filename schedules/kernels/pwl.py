"""`pwl_func`: a piecewise-linear table applied elementwise (GELU, exp, ... as NN-LUT evaluates them).

The kernel carries its table as an attribute (`TABLE_ATTR`, read by `elementwise_table`): a pass that fuses the
table into its producer (`LUTDense`: GELU into the lookup's epilogue) reads it from the function it replaces.
"""

import numbers
from types import SimpleNamespace

import numpy as np
from tvm import te, tirx

from .pwl_expr import PWLSpec, Table, evaluate

SUPPORTED_DTYPES = ("float32",)
TABLE_ATTR = "tvm_lut.pwl_table"
_TABLE_FIELDS = ("breakpoints", "slopes", "intercepts")


def pwl_func(spec: PWLSpec, shape, dtype: str = "float32") -> tirx.PrimFunc:
    """`out = table(x)` elementwise over `shape`; an unscheduled PrimFunc `(x, out)` tagged `tvm_lut.kernel`."""
    table = Table(spec)
    x = te.placeholder(check_shape(shape), check_dtype(dtype), name="x")
    out = te.compute(x.shape, lambda *i: evaluate(table, x[i]), name="pwl")
    attr = {"scaling": table.scaling, **{f: [float(v) for v in getattr(table, f)] for f in _TABLE_FIELDS}}
    return as_kernel(te.create_prim_func([x, out]), "pwl").with_attr(TABLE_ATTR, attr)


def elementwise_table(func) -> PWLSpec | None:
    """The table a `pwl_func` kernel applies (its float32 values, from `TABLE_ATTR`), None for other functions."""
    attrs = getattr(func, "attrs", None)
    attr = attrs.get(TABLE_ATTR) if attrs is not None else None
    if attr is None:
        return None
    arrays = {f: np.array([float(v) for v in attr[f]], np.float32) for f in _TABLE_FIELDS}
    return SimpleNamespace(scaling=str(attr["scaling"]), **arrays)


def check_shape(shape) -> tuple[int, ...]:
    """A static shape as a tuple of ints >= 0 (zero-size dimensions are allowed)."""
    try:
        dims = tuple(d.value if isinstance(d, tirx.IntImm) else d for d in shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of integers, got {shape!r}") from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise ValueError(f"shape must hold static non-negative integers, got {shape!r}")
    return tuple(int(d) for d in dims)


def check_dtype(dtype: str) -> str:
    if str(dtype) not in SUPPORTED_DTYPES:
        raise ValueError(f"LUT kernels compute in {SUPPORTED_DTYPES}, got dtype {dtype!r}")
    return str(dtype)


def check_axes(axes, ndim: int, what: str) -> tuple[int, ...]:
    """Axes normalized to [0, ndim), sorted, unique; an out-of-range or repeated axis raises."""
    axes = (axes,) if isinstance(axes, numbers.Integral) else tuple(int(a) for a in axes)
    normalized = tuple(sorted(a % ndim for a in axes if -ndim <= a < ndim))
    if len(normalized) != len(axes) or len(set(normalized)) != len(normalized) or not axes:
        raise ValueError(f"{what} {axes} is not a set of distinct axes of a {ndim}-D tensor")
    return normalized


# The work a hand-scheduled kernel does per call, in `CPUParams.min_parallel_work`'s units (multiply-adds or lookups),
# where its buffers understate it (a PQ encode's rows x codebooks x K x V); without it the largest buffer's elements
# count (`rules.common.serial_unless_parallel_pays`).
PARALLEL_WORK_ATTR = "tvm_lut.parallel_work"


def as_kernel(func: tirx.PrimFunc, kind: str) -> tirx.PrimFunc:
    """Tag a compute definition as a LUT kernel (the schedule rules still treat it like any other function)."""
    return func.with_attr("tvm_lut.kernel", kind)

