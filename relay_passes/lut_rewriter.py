"""`LUTRewriter`: the match -> serve -> report driver that every LUT pass runs over a module.

Phase 1 applies each form's pattern (`relay_passes.patterns.Form`, most specific first) with `rewrite_call` and
replaces what `serve` can serve. Phase 2 applies the forms again with a rewriter that changes nothing, so each op
that still matches is visited exactly once (while it rewrites, `rewrite_call` revisits unchanged ops until a fixed
point) and is reported kept exact with its reason; the ops inside a reported match are not reported again by a
smaller form.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import WildcardPattern, rewrite_call

from .patterns import Form, static_shape
from .report import KeptExact, PassReport, Replaced


class LUTRewriter:
    """Subclasses implement `serve`; `run(mod, forms)` returns the rewritten module and fills `report`."""

    def __init__(self, mod: tvm.IRModule, pass_name: str):
        self.builder = relax.BlockBuilder(mod)  # kernels are added to it: one GlobalVar per distinct PrimFunc
        self.report = PassReport(pass_name)
        self._reported: list[relax.Expr] = []
        self.function: relax.Function | None = None  # the function a form is being applied to (for `serve`)

    def serve(self, form: Form, matched: relax.Expr, matchings: dict) -> tuple | str | None:
        """The replacement of `matched` and the name of the kernel it calls (and optionally the bundle entry it
        uses), the reason it stays exact, or None when the match is not the op after all."""
        raise NotImplementedError

    def run(self, mod: tvm.IRModule, forms: list[Form]) -> tvm.IRModule:
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function):
                continue
            for form in forms:
                self.function = func
                func = rewrite_call(form.pattern, self._replacing(form), func)
            for form in forms:
                rewrite_call(form.pattern, self._auditing(form), func)
            self.builder.update_func(gvar, func)
        return self.builder.get()

    def _replacing(self, form: Form):
        def rewrite(matched: relax.Expr, matchings: dict) -> relax.Expr:
            served = self.serve(form, matched, matchings)
            if not isinstance(served, tuple):
                return matched
            replacement, function, *entry = served
            self.report.replaced.append(Replaced(form.op, form.name, static_shape(matched), _dtype(matched), function,
                                                 *entry))
            return replacement

        return rewrite

    def _auditing(self, form: Form):
        def audit(matched: relax.Expr, matchings: dict) -> relax.Expr:
            if any(matched.same_as(op) for op in self._reported):
                return matched
            reason = self.serve(form, matched, matchings)
            if isinstance(reason, str):
                self._reported += [e for p, e in matchings.items() if not isinstance(p, WildcardPattern)]
                self.report.kept.append(KeptExact(form.op, form.name, static_shape(matched), _dtype(matched), reason))
            return matched

        return audit


def _dtype(expr: relax.Expr) -> str:
    return str(getattr(expr.ty, "dtype", "unknown"))
