"""Softmax, served by `schedules.softmax_func` (exp table, reciprocal table), in two forms:

- `R.nn.softmax(x, axis)`: both importers keep softmax whole (torch.export for any dim, ONNX Softmax-13 for any
  axis; ONNX opset <= 12, with its coerced-2D semantics, as transposes and reshapes around a last-axis softmax).
  No exporter opset decomposes it.
- decomposed `e = exp(x - max(x)); e / sum(e)` over one axis (keepdims): ONNX's own function body of Softmax
  (the `*_expanded` backend test models) and softmaxes written out by hand in an ONNX graph.

The whole form over the last axis also comes with attention's mask add fused in, and the scores' scaling before
it: `softmax(x / c + mask)` (or `x * c`, either add order; a scalar constant c, a mask that broadcasts against x
along its whole last axis), as both importers give a BERT's attention. One kernel reads the scores and the mask
instead of an elementwise kernel writing their sum for the softmax to read back.
"""

from __future__ import annotations

from tvm.relax.dpl import is_const, is_op, wildcard

from schedules.kernels.softmax import mask_fits

from . import Form, LUTCall, constant_scalar, normalized_axes, static_shape


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


def masked(scaled: bool, mask_first: bool = False) -> Form:
    """`softmax(x / c + mask)` (`x * c`, `c * x`) with `scaled`, else `softmax(x + mask)`; `mask_first`: the add's
    operands the other way round (a form of its own: a mask that is itself `m * c` would match the scores' side)."""
    x, c, mask = wildcard(), is_const(), wildcard()
    divide, multiply = is_op("relax.divide")(x, c), is_op("relax.multiply")(x, c) | is_op("relax.multiply")(c, x)
    add = is_op("relax.add")
    scores = divide | multiply
    operands = (mask, scores if scaled else x) if mask_first else (scores if scaled else x, mask)
    softmax = is_op("relax.nn.softmax")(add(*operands))

    def extract(matchings: dict) -> LUTCall | None:
        shape, mask_shape = static_shape(matchings[x]), static_shape(matchings[mask])
        if shape is None or mask_shape is None or str(matchings[mask].ty.dtype) != "float32" or 0 in shape:
            return None
        if normalized_axes(int(matchings[softmax].attrs.axis), len(shape)) != (len(shape) - 1,):
            return None
        if not mask_fits(shape, mask_shape):
            return None  # not a mask along the rows (a per-row shift, or one that broadcasts x itself)
        params = (("axis", len(shape) - 1), ("mask_shape", mask_shape))
        if scaled:
            value = constant_scalar(matchings[c])
            if value is None:
                return None
            params += (("scale", ("divide" if divide in matchings else "multiply", value)),)
        return LUTCall(matchings[x], "softmax_func", ("exp", "reciprocal"), params, (matchings[mask],))

    return Form("softmax", "R.nn.softmax, scale and mask add" if scaled else "R.nn.softmax, mask add", softmax,
                extract)


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
    masked_forms = [masked(scaled, mask_first) for scaled in (True, False) for mask_first in (False, True)]
    return masked_forms + [fused(), decomposed()]
