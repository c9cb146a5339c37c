"""Dataflow patterns for every form the importers give the ops the LUT passes replace, one module per op family
(gelu, softmax, layer_norm for LUTNonlinear; dense, conv2d for LUTDense).

A `Form` pairs a `tvm.relax.dpl` pattern (alternatives joined with `|`) with `extract(matchings)`, which returns
what serves the match (for LUTNonlinear a `LUTCall`), a reason (str) to keep a genuine match exact, or None when
the match is not that op after all (a constant with another value, axes that differ). Constants are checked by
value, so 0-d and broadcast constants, folded or not, match alike. Each family's `forms()` lists its forms most
specific first: a pass applies them in that order, so a LayerNorm is replaced with its affine map before the bare
normalization inside it could match alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from tvm import ir, relax
from tvm.relax.dpl import DFPattern, is_const


@dataclasses.dataclass(frozen=True)
class LUTCall:
    """How LUTNonlinear serves a match: `schedules.<builder>(*tables, shape, **params)` called on `(x, *extra_args)`.

    `tables` are bundle entry names in the builder's argument order; the output has the shape and dtype of `x`.
    """

    x: relax.Expr
    builder: str
    tables: tuple[str, ...]
    params: tuple[tuple[str, object], ...] = ()
    extra_args: tuple[relax.Expr, ...] = ()


Extract = Callable[[dict], "LUTCall | str | None"]


@dataclasses.dataclass(frozen=True)
class Form:
    """One way an op appears in an imported graph: `name` is what the report shows (e.g. "erf-decomposed")."""

    op: str
    name: str
    pattern: DFPattern
    extract: Extract


class Constants:
    """Constant patterns that must hold given values: `c = Constants(); p = c(0.5)`; `c.hold(matchings)`.

    A constant holds its value when every element is within `rtol` of it (0-d or broadcast tensors alike); a
    pattern absent from the matchings (an alternative that did not match) is not checked.
    """

    def __init__(self, rtol: float = 1e-5):
        self.rtol = rtol
        self.expected: dict[DFPattern, float] = {}

    def __call__(self, value: float) -> DFPattern:
        pattern = is_const()
        self.expected[pattern] = value
        return pattern

    def hold(self, matchings: dict) -> bool:
        return all(
            constant_equals(matchings[pattern], value, self.rtol)
            for pattern, value in self.expected.items()
            if pattern in matchings
        )


def constant_equals(expr: relax.Expr, value: float, rtol: float = 1e-5) -> bool:
    """True when `expr` is a non-empty constant whose every element is `value` (relative tolerance `rtol`)."""
    if not isinstance(expr, ir.Constant):
        return False
    data = expr.value.numpy()
    return data.size > 0 and bool(np.all(np.abs(data.astype(np.float64) - value) <= rtol * abs(value)))


def constant_scalar(expr: relax.Expr) -> float | None:
    """The value of a constant whose elements are all equal (a 0-d or broadcast scalar), else None."""
    if not isinstance(expr, ir.Constant):
        return None
    data = expr.value.numpy().reshape(-1)
    if data.size == 0 or not np.all(data == data[0]):
        return None
    return float(data[0])


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The static shape of a tensor expression, or None when it is unknown or symbolic."""
    ty = expr.ty
    shape = getattr(ty, "shape", None)
    if shape is None or not isinstance(shape, relax.ShapeExpr):
        return None
    dims = []
    for dim in shape.values:
        if not hasattr(dim, "value"):
            return None
        dims.append(int(dim.value))
    return tuple(dims)


def normalized_axes(axes, ndim: int) -> tuple[int, ...] | None:
    """`axes` (an int or a list of ints, maybe negative) as sorted non-negative ints, None when out of range."""
    axes = [axes] if isinstance(axes, int) else [int(a) for a in axes]
    if ndim < 0 or not all(-ndim <= a < ndim for a in axes):
        return None
    return tuple(sorted({a % ndim for a in axes}))
