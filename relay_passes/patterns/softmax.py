"""Softmax, served by `schedules.softmax_func` (exp table, reciprocal table), in two forms:

- `R.nn.softmax(x, axis)`: both importers keep softmax whole (torch.export for any dim, ONNX Softmax-13 for any
  axis; ONNX opset <= 12, with its coerced-2D semantics, as transposes and reshapes around a last-axis softmax).
  No exporter opset decomposes it.
- decomposed `e = exp(x - max(x)); e / sum(e)` over one axis (keepdims): ONNX's own function body of Softmax
  (the `*_expanded` backend test models) and softmaxes written out by hand in an ONNX graph.
"""

from __future__ import annotations

from tvm.relax.dpl import is_op, wildcard

from . import Form, LUTCall, normalized_axes


def fused() -> Form:
    x = wildcard()
    softmax = is_op("relax.nn.softmax")(x)

    def extract(matchings: dict) -> LUTCall | str:
        attr_axis, ndim = int(matchings[softmax].attrs.axis), matchings[x].ty.ndim
        axis = normalized_axes(attr_axis, ndim)
        if axis is None:
            return f"axis {attr_axis} does not fit a tensor of rank {ndim}"
        return LUTCall(matchings[x], "softmax_func", ("exp", "reciprocal"), (("axis", axis[0]),))

    return Form("softmax", "R.nn.softmax", softmax, extract)


def decomposed() -> Form:
    x = wildcard()
    row_max = is_op("relax.max")(x)
    e = is_op("relax.exp")(is_op("relax.subtract")(x, row_max))
    row_sum = is_op("relax.sum")(e)
    pattern = is_op("relax.divide")(e, row_sum)

    def extract(matchings: dict) -> LUTCall | None:
        ndim, reductions = matchings[x].ty.ndim, (matchings[row_max], matchings[row_sum])
        axes = {normalized_axes(range(ndim) if r.attrs.axis is None else list(r.attrs.axis), ndim) for r in reductions}
        if len(axes) != 1 or not all(r.attrs.keepdims for r in reductions):
            return None
        (axis,) = axes
        if axis is None or len(axis) != 1:
            return None
        return LUTCall(matchings[x], "softmax_func", ("exp", "reciprocal"), (("axis", axis[0]),))

    return Form("softmax", "decomposed", pattern, extract)


def forms() -> list[Form]:
    return [fused(), decomposed()]
