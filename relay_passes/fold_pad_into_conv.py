"""`FoldPadIntoConv`: an explicit zero padding of a conv's input folded into the conv's own `padding`.

Not a LUT pass: ONNX Runtime's Pad fusion, for the convs that stay exact. Models ported from TensorFlow pad
explicitly ("SAME" padding: `transformers`' MobileNets pad every conv's input with `nn.functional.pad`, often
asymmetrically, often by zero). FuseOps puts such a pad at the end of the *producer's* function, where it cannot
run per register tile: the producer writes its output, then copies it into the padded buffer (MobileNetV2's
16->96 1x1 conv on 112x112 spent about a third of its 0.84 ms on that copy), and a zero-width pad is a copy of its
own. In the conv's `padding` it is legalized inside the conv's function, where the depthwise rule stages it per
plane anyway.

Matched: `R.nn.conv2d(R.nn.pad(x), w)` in NCHW with a constant-mode pad of value 0 on the two spatial axes only
(any non-negative widths, asymmetric too). Runs before `FoldBatchNorm` and `WinogradConv2d`. Anything else (a pad
of channels or of a non-zero value, reflect padding, negative widths) is left as it is, and so is ONNX's Pad,
which TVM's importer emits as a TIR function rather than `R.nn.pad`.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard


@relax.transform.function_pass(opt_level=0, name="FoldPadIntoConv")
class FoldPadIntoConv:
    """Fold each matched pad into its conv (see the module docstring)."""

    def __init__(self):
        self.data, self.weight = wildcard(), wildcard()
        self.pad = is_op("relax.nn.pad")(self.data)
        self.pattern = is_op("relax.nn.conv2d")(self.pad, self.weight)

    def transform_function(self, func: relax.Function, _mod, _ctx) -> relax.Function:
        if not isinstance(func, relax.Function) or int((func.attrs or {}).get("Primitive", 0)):
            return func
        return rewrite_call(self.pattern, self._fold, func)

    def _fold(self, expr: relax.Expr, matches) -> relax.Expr:
        pad, attrs = matches[self.pad].attrs, expr.attrs
        widths = [int(w) for w in pad.pad_width]  # (before, after) per axis
        if (str(pad.pad_mode) != "constant" or float(pad.pad_value) != 0.0 or len(widths) != 8 or any(widths[:4])
                or min(widths) < 0 or attrs.data_layout != "NCHW"):
            return expr
        top, left, bottom, right = (int(p) for p in attrs.padding)
        padding = [top + widths[4], left + widths[6], bottom + widths[5], right + widths[7]]
        return relax.op.nn.conv2d(matches[self.data], matches[self.weight], strides=attrs.strides, padding=padding,
                                  dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
                                  kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
                                  out_dtype=attrs.out_dtype)


__all__ = ["FoldPadIntoConv"]
