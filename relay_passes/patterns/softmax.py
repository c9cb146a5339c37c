"""Softmax as the importers produce it: `R.nn.softmax(x, axis)`, served by `schedules.softmax_func` (exp table,
reciprocal table).

Both importers keep softmax whole: torch.export for any dim, ONNX Softmax-13 for any axis, and ONNX opset <= 12
(coerced-2D semantics) as transposes and reshapes around a last-axis `R.nn.softmax`. No opset decomposes it into
exp / sum / divide, so no decomposed form is matched here.
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


def forms() -> list[Form]:
    return [fused()]
