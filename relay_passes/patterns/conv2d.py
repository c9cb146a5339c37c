"""2-D convolutions in the forms the importers produce, for `LUTDense` and `WinogradConv2d`.

Both torch.export and ONNX give `R.nn.conv2d(x, W)` (NCHW data, OIHW kernel) with the bias added as
`R.add(conv, R.reshape(b, (1, O, 1, 1)))` (or an already reshaped constant), in either operand order. Served:
groups = 1, NCHW / OIHW / NCHW layouts, a constant weight. The extract returns a `ConvMatch` with the geometry the
pass checks against the bundle entry (k x k kernels are encoded through an implicit im2col, 1 x 1 directly).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard

from . import Form, static_shape
from .dense import add_bias, constant_array


@dataclasses.dataclass(frozen=True)
class ConvMatch:
    """A matched conv2d: weight (O, I, kh, kw) float32; stride, padding (top, left, bottom, right), dilation."""

    x: relax.Expr
    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]


def _unsupported(attrs) -> str | None:
    if int(attrs.groups) != 1:
        return f"groups={int(attrs.groups)}: only groups=1 convolutions are served"
    layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or attrs.data_layout)
    if tuple(str(v) for v in layouts) != ("NCHW", "OIHW", "NCHW"):
        return f"layouts {tuple(str(v) for v in layouts)}: only NCHW data with OIHW kernels is served"
    return None


def _form(with_bias: bool) -> Form:
    x, weight = wildcard(), is_const()
    conv = is_op("relax.nn.conv2d")(x, weight)
    bias = is_const()
    reshaped = is_op("relax.reshape")(bias, wildcard())
    pattern = add_bias(conv, reshaped | bias) if with_bias else conv

    def extract(matchings: dict) -> ConvMatch | str | None:
        data = constant_array(matchings[weight])
        if data is None or data.ndim != 4:
            return None
        attrs = matchings[conv].attrs
        reason = _unsupported(attrs)
        if reason is not None:
            return None if with_bias else reason
        vector = None
        if with_bias:  # the added tensor must hold one value per output channel: (1, O, 1, 1) or (O, 1, 1)
            added = matchings.get(reshaped, matchings[bias])
            if static_shape(added) not in ((1, data.shape[0], 1, 1), (data.shape[0], 1, 1)):
                return None
            vector = constant_array(matchings[bias]).reshape(-1).astype(np.float32)
        padding = tuple(int(p) for p in attrs.padding)
        if len(padding) == 2:
            padding = padding * 2
        return ConvMatch(matchings[x], np.ascontiguousarray(data, np.float32), vector,
                         tuple(int(s) for s in attrs.strides), padding, tuple(int(d) for d in attrs.dilation))

    return Form("conv2d", "conv2d + bias" if with_bias else "conv2d", pattern, extract)


def forms() -> list[Form]:
    return [_form(True), _form(False)]
