"""`WinogradConv2d`: exact 3x3 stride-1 convolutions with constant weights as Winograd F(2x2, 3x3) kernels.

Not a LUT pass: an algorithm choice for the convs that stay exact (the `tvm_lut` pipeline runs it after the LUT
passes, so PQ convs are already gone). The filter transform is computed here, once, into a constant; the call goes
to `schedules.kernels.winograd`, marked fusable with the elementwise ops after it (bias add, ReLU), which FuseOps
then folds into the kernel's output transform and the `Winograd` rule schedules. 2.25x fewer multiply-adds than the
direct conv; the CNN's 32->64 14x14 conv measured 42.8 -> 29 us at one thread (see the README).

Matched in every form the importers give (`relay_passes.patterns.conv2d`: the bare `R.nn.conv2d`; a bias add stays
a separate op and fuses later). Served: float32, static shapes, groups 1, NCHW / OIHW, 3x3, stride 1, dilation 1,
at least `MIN_CHANNELS` input channels (with fewer, the transforms cost more than the multiply-adds they save),
at least 2 output channels and two output tiles. The report lists the others with the reason they keep the direct
conv; they are logged at INFO, not as warnings, since a direct conv is exact too.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from .lut_rewriter import LUTRewriter
from .patterns import static_shape
from .patterns import conv2d as conv2d_patterns

logger = logging.getLogger(__name__)

MIN_CHANNELS = 8
_OUT_EWISE_FUSABLE = 4  # relax op_pattern kOutEWiseFusable: elementwise consumers fuse into the output


@tvm.ir.transform.module_pass(opt_level=0, name="WinogradConv2d")
class WinogradConv2d:
    """Rewrite the 3x3 stride-1 convs that qualify (see the module docstring); the run's report rides on the
    module it returns (`PassReport.of(mod, "WinogradConv2d")`)."""

    def __init__(self):
        self.forms = [form for form in conv2d_patterns.forms() if form.name == "conv2d"]

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _WinogradRewriter(mod)
        mod = rewriter.run(mod, self.forms)
        logger.info("%s", rewriter.report)
        return rewriter.report.attach(mod)


class _WinogradRewriter(LUTRewriter):
    """One kernel per distinct (input shape, filters, padding)."""

    def __init__(self, mod):
        super().__init__(mod, "WinogradConv2d")
        self._kernels: dict[tuple, relax.GlobalVar] = {}

    def serve(self, form, matched, matchings):
        from schedules.kernels.winograd import winograd_conv2d_func, winograd_weight

        match = form.extract(matchings)
        if match is None or isinstance(match, str):
            return match
        reason = _unserved(match, matched)
        if reason:
            return reason
        x_shape, out_channels = static_shape(match.x), match.weight.shape[0]
        key = (x_shape, out_channels, match.padding)
        if key not in self._kernels:
            func = winograd_conv2d_func(x_shape, out_channels, match.padding)
            func = func.without_attr("global_symbol").with_attr("op_pattern", _OUT_EWISE_FUSABLE)
            self._kernels[key] = self.builder.add_func(func, "winograd_conv2d")
        kernel = self._kernels[key]
        call = relax.call_tir(kernel, [match.x, relax.const(winograd_weight(match.weight))], matched.ty)
        return call, kernel.name_hint


def _unserved(match, matched) -> str | None:
    """Why the conv keeps the direct algorithm, or None when the Winograd kernel serves it."""
    if str(getattr(matched.ty, "dtype", "")) != "float32" or str(match.x.ty.dtype) != "float32":
        return f"dtype {matched.ty.dtype}: the Winograd kernel computes in float32"
    out_shape = static_shape(matched)
    if static_shape(match.x) is None or out_shape is None:
        return "dynamic shape: the Winograd kernel needs static shapes"
    if match.weight.shape[2:] != (3, 3) or match.stride != (1, 1) or match.dilation != (1, 1):
        return (f"{match.weight.shape[2]}x{match.weight.shape[3]} kernel, stride {match.stride}, dilation "
                f"{match.dilation}: Winograd F(2x2, 3x3) serves 3x3, stride 1, dilation 1")
    if match.weight.shape[1] < MIN_CHANNELS:
        return f"{match.weight.shape[1]} input channel(s): below {MIN_CHANNELS} the transforms cost more than they save"
    batch, out_channels, out_h, out_w = out_shape
    if min(out_channels, out_h, out_w) < 2 or batch * out_h * out_w <= 4:
        return f"output {out_shape}: too small to tile (needs 2 channels and two 2x2 tiles)"
    return None
