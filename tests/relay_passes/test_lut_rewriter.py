"""LUTRewriter: replaced ops are reported once, kept ops once each, and a kept op's inner forms not again."""

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from relay_passes.lut_rewriter import LUTRewriter
from relay_passes.patterns import layer_norm, softmax


class _Rewriter(LUTRewriter):
    """Replaces softmax on (2, 8) by `exp` (a visible stand-in) and keeps every other match with a reason."""

    def serve(self, form, matched, matchings):
        call = form.extract(matchings)
        if call is None or isinstance(call, str):
            return call
        if form.op == "softmax" and [int(d) for d in matched.ty.shape] == [2, 8]:
            return R.exp(call.x), "stand_in_exp"
        return f"not served: {form.name}"


def _module():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 8), "float32"))
    w = relax.Var("w", relax.TensorType((4, 8), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            a = bb.emit(R.nn.softmax(x, axis=-1))
            b = bb.emit(R.nn.softmax(a, axis=0))  # replaced too: revisited after `a` changed, reported once
            c = bb.emit(R.nn.softmax(w, axis=-1))  # kept
            d = bb.emit(R.subtract(w, bb.emit(R.mean(w, axis=[-1], keepdims=True))))
            v = bb.emit(R.mean(bb.emit(R.multiply(d, d)), axis=[-1], keepdims=True))
            n = bb.emit(R.divide(d, bb.emit(R.sqrt(bb.emit(R.add(v, R.const(1e-5, "float32")))))))
            g = bb.emit(R.multiply(n, relax.const(np.ones(8, "float32"))))
            y = bb.emit(R.add(g, relax.const(np.zeros(8, "float32"))))  # a kept LayerNorm with gamma and beta
            out = bb.emit_output(relax.Tuple([b, c, y]))
        bb.emit_func_output(out)
    return bb.get()


def test_each_op_is_reported_once():
    mod = _module()
    rewriter = _Rewriter(mod, "Test")
    after = rewriter.run(mod, softmax.forms() + layer_norm.forms())
    assert [(e.op, e.function) for e in rewriter.report.replaced] == [("softmax", "stand_in_exp")] * 2
    assert [(e.op, e.form, e.shape) for e in rewriter.report.kept] == [
        ("softmax", "R.nn.softmax", (4, 8)),
        ("layer_norm", "decomposed, gamma+beta", (4, 8)),  # not also as "decomposed, gamma" and "decomposed"
    ]
    assert after["main"].script().count("R.exp(") == 2
    tvm.ir.assert_structural_equal(after["main"].params, mod["main"].params)
