"""`LUTNonlinear`: replace GELU, Softmax and LayerNorm with NN-LUT kernels (piecewise-linear tables).

Matches every form of the three ops that the torch.export and ONNX importers produce (`relay_passes.patterns`)
and rewrites each match to `R.call_tir` of a `schedules` kernel (`pwl_func`, `softmax_func`, `layer_norm_func`)
with its tables baked in: from `bundle` (`Bundle.pwl(name)`), or the tables shipped with tvm-lut
(`tvm_lut.defaults`) when `bundle` is None. One PrimFunc per (kernel, tables, shape, attributes) is added to the
module and shared by every call.

Precondition: high-level Relax ops, as imported; the pass sits before LegalizeOps (phase 1 of the `tvm_lut`
pipeline). Served: float32 tensors of static shape. A matched op that cannot be served (another dtype, a dynamic
shape, a missing table, an attribute the kernel rejects) stays exact.

Report: every run attaches its `PassReport` (what was replaced, what was kept exact and why) to the module it
returns, `PassReport.of(mod, "LUTNonlinear")`; the pass object keeps nothing. Its summary is logged on the
`relay_passes.lut_nonlinear` logger, kept ops at WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import tvm
from tvm import relax

from .lut_rewriter import LUTRewriter
from .patterns import Form, LUTCall, gelu, layer_norm, softmax, static_shape

OPS = ("gelu", "softmax", "layer_norm")
_FORMS = {"gelu": gelu.forms, "softmax": softmax.forms, "layer_norm": layer_norm.forms}
_SERVED_DTYPE = "float32"

logger = logging.getLogger(__name__)


@tvm.ir.transform.module_pass(opt_level=0, name="LUTNonlinear")
class LUTNonlinear:
    """Rewrite GELU / Softmax / LayerNorm (the ops named in `ops`) to LUT kernels; see the module docstring.

    `bundle`: a `tvm_lut.Bundle` holding the `pwl` tables `gelu`, `gelu_tanh`, `exp`, `reciprocal`, `rsqrt`
    (those it lacks leave their ops exact), or None for the shipped default tables.
    """

    def __init__(self, bundle=None, ops: Sequence[str] = OPS):
        from tvm_lut.bundle import Bundle

        if bundle is not None and not isinstance(bundle, Bundle):
            raise TypeError(f"bundle must be a tvm_lut.Bundle or None, got {type(bundle).__name__}")
        if isinstance(ops, str) or not all(isinstance(op, str) for op in ops):
            raise TypeError(f"ops must be a sequence of op names such as {OPS}, got {ops!r}")
        unknown = [op for op in ops if op not in _FORMS]
        if unknown:
            raise ValueError(f"LUTNonlinear cannot replace {unknown}: it serves {', '.join(OPS)}")
        self.bundle = bundle
        self.ops = tuple(dict.fromkeys(ops))
        self.forms = [form for op in self.ops for form in _FORMS[op]()]

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _Rewriter(mod, self.bundle if self.bundle is not None else _default_bundle())
        mod = rewriter.run(mod, self.forms)
        rewriter.report.log(logger)
        return rewriter.report.attach(mod)


class _Rewriter(LUTRewriter):
    """Serves GELU / Softmax / LayerNorm matches with kernels built once per (kernel, tables, shape, attributes)."""

    def __init__(self, mod: tvm.IRModule, bundle):
        super().__init__(mod, "LUTNonlinear")
        self.bundle = bundle
        self._kernels: dict[tuple, relax.GlobalVar | str] = {}

    def serve(self, form: Form, matched: relax.Expr, matchings: dict) -> tuple[relax.Expr, str] | str | None:
        call = form.extract(matchings)
        if call is None or isinstance(call, str):
            return call
        shape, dtype = static_shape(matched), str(matched.ty.dtype)
        if static_shape(call.x) != shape:
            return None  # broadcasting constants changed the shape: not this op
        if dtype != _SERVED_DTYPE:
            return f"dtype {dtype}: the LUT kernels compute in {_SERVED_DTYPE}"
        if shape is None:
            return "dynamic shape: the LUT kernels need static shapes"
        key = (call.builder, call.tables, shape, call.params)
        if key not in self._kernels:
            self._kernels[key] = self._build(form, call, shape)
        kernel = self._kernels[key]
        if isinstance(kernel, str):
            return kernel
        out = relax.TensorType(shape, dtype)
        return relax.call_tir(kernel, [call.x, *call.extra_args], out), kernel.name_hint

    def _build(self, form: Form, call: LUTCall, shape) -> relax.GlobalVar | str:
        import schedules

        tables = [self.bundle.pwl(name) for name in call.tables]
        missing = [name for name, table in zip(call.tables, tables) if table is None]
        if missing:
            return f"no {' or '.join(repr(m) for m in missing)} table in the bundle"
        try:
            func = getattr(schedules, call.builder)(*tables, shape, **dict(call.params))
        except ValueError as err:  # the kernel rejects an attribute (eps, axes) or a table
            return f"{call.builder}: {err}"
        # Private (no global symbol), like the PrimFuncs LegalizeOps adds; te.create_prim_func names them "main".
        return self.builder.add_func(func.without_attr("global_symbol"), f"lut_{form.op}")


def _default_bundle():
    from tvm_lut.defaults import default_bundle

    return default_bundle()
