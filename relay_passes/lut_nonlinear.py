"""`LUTNonlinear`: replace GELU, Softmax and LayerNorm with NN-LUT kernels (piecewise-linear tables).

Matches every form of the three ops that the torch.export and ONNX importers produce (`relay_passes.patterns`)
and rewrites each match to `R.call_tir` of a `schedules` kernel (`pwl_func`, `softmax_func`, `layer_norm_func`)
with its tables baked in: from `bundle` (`Bundle.pwl(name)`), or the tables shipped with tvm-lut
(`tvm_lut.defaults`) when `bundle` is None. One PrimFunc per (kernel, tables, shape, attributes) is added to the
module and shared by every call.

Precondition: high-level Relax ops, as imported; the pass sits before LegalizeOps (phase 1 of the `tvm_lut`
pipeline). Served: float32 tensors of static shape. A matched op that cannot be served (another dtype, a dynamic
shape, a missing table, an attribute the kernel rejects) stays exact.

Report: after every run, `pass_.report` is the `PassReport` of that run (what was replaced, what was kept exact
and why); its summary is logged on the `relay_passes.lut_nonlinear` logger, kept ops at WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import tvm
from tvm import relax
from tvm.relax.dpl import WildcardPattern, rewrite_call

from .patterns import Form, LUTCall, gelu, layer_norm, softmax, static_shape
from .report import KeptExact, PassReport, Replaced

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
        self.report: PassReport | None = None

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _Rewriter(mod, self.bundle if self.bundle is not None else _default_bundle())
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function):
                continue
            for form in self.forms:
                func = rewrite_call(form.pattern, rewriter.replacing(form), func)
            # What still matches was kept exact. A separate pass that changes nothing visits every op once
            # (rewrite_call revisits unchanged ops until a fixed point while it rewrites).
            for form in self.forms:
                rewrite_call(form.pattern, rewriter.auditing(form), func)
            rewriter.builder.update_func(gvar, func)
        self.report = rewriter.report
        self.report.log(logger)
        return rewriter.builder.get()


class _Rewriter:
    """Serves the matches of one pass run: checks, kernel PrimFuncs (one per key), report entries."""

    def __init__(self, mod: tvm.IRModule, bundle):
        self.bundle = bundle
        self.builder = relax.BlockBuilder(mod)
        self.report = PassReport("LUTNonlinear")
        self._kernels: dict[tuple, relax.GlobalVar | str] = {}
        self._reported: list[relax.Expr] = []  # ops inside a kept match (its inner forms are not reported again)

    def replacing(self, form: Form):
        def rewrite(matched: relax.Expr, matchings: dict) -> relax.Expr:
            served = self._serve(form, matched, matchings)
            if not isinstance(served, tuple):
                return matched
            call, kernel = served
            shape, dtype = static_shape(matched), str(matched.ty.dtype)
            self.report.replaced.append(Replaced(form.op, form.name, shape, dtype, kernel.name_hint))
            return relax.call_tir(kernel, [call.x, *call.extra_args], relax.TensorType(shape, dtype))

        return rewrite

    def auditing(self, form: Form):
        def audit(matched: relax.Expr, matchings: dict) -> relax.Expr:
            if any(matched.same_as(op) for op in self._reported):
                return matched
            reason = self._serve(form, matched, matchings)
            if isinstance(reason, str):
                self._reported += [e for p, e in matchings.items() if not isinstance(p, WildcardPattern)]
                shape, dtype = static_shape(matched), str(matched.ty.dtype)
                self.report.kept.append(KeptExact(form.op, form.name, shape, dtype, reason))
            return matched

        return audit

    def _serve(self, form: Form, matched: relax.Expr, matchings: dict) -> tuple[LUTCall, relax.GlobalVar] | str | None:
        """The call and kernel serving a match, the reason it cannot be served, or None if it is not the op."""
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
        return kernel if isinstance(kernel, str) else (call, kernel)

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
