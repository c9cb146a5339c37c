"""LayerNorm forms: fused and decomposed (ONNX opset < 17, hand-written), with every affine variant."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from nonlinear_stand_ins import RecordingBuilders, bundle, module_of
from relay_passes import LUTNonlinear
from relay_passes.report import PassReport, without_reports


@I.ir_module
class Expected:
    @T.prim_func(private=True)
    def lut_layer_norm(x: T.Buffer((2, 8), "float32"), gamma: T.Buffer((8,), "float32"),
                       beta: T.Buffer((8,), "float32"), out: T.Buffer((2, 8), "float32")):
        T.func_attr({"tvm_lut.kernel": "stand-in"})
        for i, j in T.grid(2, 8):
            out[i, j] = x[i, j] * gamma[j] + beta[j]

    @R.function
    def main(x: R.Tensor((2, 8), "float32"), gamma: R.Tensor((8,), "float32"),
             beta: R.Tensor((8,), "float32")) -> R.Tensor((2, 8), "float32"):
        cls = Expected
        with R.dataflow():
            y = R.call_tir(cls.lut_layer_norm, (x, gamma, beta), out_ty=R.Tensor((2, 8), "float32"))
            R.output(y)
        return y


@I.ir_module
class Fused:
    @R.function
    def main(x: R.Tensor((2, 8), "float32"), gamma: R.Tensor((8,), "float32"),
             beta: R.Tensor((8,), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            y = R.nn.layer_norm(x, gamma, beta, axes=[-1], epsilon=1e-12)
            R.output(y)
        return y


@I.ir_module
class OnnxDecomposed:
    """torch.onnx.export of nn.LayerNorm at opset < 17."""

    @R.function
    def main(x: R.Tensor((2, 8), "float32"), gamma: R.Tensor((8,), "float32"),
             beta: R.Tensor((8,), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            m = R.mean(x, axis=[-1], keepdims=True)
            d = R.subtract(x, m)
            p = R.power(d, R.const(2.0, "float32"))
            v = R.mean(p, axis=[-1], keepdims=True)
            e = R.add(v, R.const(9.999999960041972e-13, "float32"))
            s = R.sqrt(e)
            n = R.divide(d, s)
            g = R.multiply(n, gamma)
            y = R.add(g, beta)
            R.output(y)
        return y


@I.ir_module
class HandWritten:
    """`d = x - x.mean(-1, keepdim=True); d * torch.rsqrt((d * d).mean(-1, keepdim=True) + eps) * g + b`."""

    @R.function
    def main(x: R.Tensor((2, 8), "float32"), gamma: R.Tensor((8,), "float32"),
             beta: R.Tensor((8,), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            m = R.mean(x, axis=[1], keepdims=True)
            d = R.subtract(x, m)
            p = R.multiply(d, d)
            v = R.mean(p, axis=[-1], keepdims=True)
            e = R.add(R.const(1e-12, "float32"), v)
            r = R.rsqrt(e)
            n = R.multiply(r, d)
            g = R.multiply(gamma, n)
            y = R.add(beta, g)
            R.output(y)
        return y


def _run(monkeypatch, before, kernel):
    builders = RecordingBuilders({"layer_norm_func": kernel}).install(monkeypatch)
    lut = LUTNonlinear(bundle(knots=9))
    after = lut(before)
    return without_reports(after), PassReport.of(after, "LUTNonlinear"), builders


@pytest.mark.parametrize("before, form, eps", [
    (Fused, "R.nn.layer_norm", 1e-12),
    (OnnxDecomposed, "decomposed, gamma+beta", 9.999999960041972e-13),
    (HandWritten, "decomposed, gamma+beta", 1e-12),
])
def test_forms_with_affine(monkeypatch, before, form, eps):
    after, report, builders = _run(monkeypatch, before, Expected["lut_layer_norm"])
    tvm.ir.assert_structural_equal(after, Expected)
    assert [(e.op, e.form) for e in report.replaced] == [("layer_norm", form)]
    ((name, args, kwargs),) = builders.calls
    assert (args[0].name, tuple(args[1])) == ("rsqrt", (2, 8))
    assert kwargs["axes"] == (1,) and kwargs["has_gamma"] and kwargs["has_beta"]
    assert kwargs["eps"] == pytest.approx(eps, rel=1e-6)


def _decomposed(variance="mean", gamma=None, beta=None, after=None, mean_axis=-1):
    """A decomposed LayerNorm of a (2, 8) input, with optional affine constants and a following op."""
    def build(bb, x):
        d = bb.emit(R.subtract(x, bb.emit(R.mean(x, axis=[mean_axis], keepdims=True))))
        if variance == "mean":
            v = bb.emit(R.mean(bb.emit(R.power(d, R.const(2.0, "float32"))), axis=[-1], keepdims=True))
        else:
            v = bb.emit(R.variance(x, axis=[-1], keepdims=True))
        n = R.divide(d, bb.emit(R.sqrt(bb.emit(R.add(v, R.const(1e-5, "float32"))))))
        if gamma is not None:
            n = R.multiply(bb.emit(n), relax.const(gamma))
        if beta is not None:
            n = R.add(bb.emit(n), relax.const(beta))
        return n if after is None else after(bb.emit(n))

    return module_of(build)


def _call_args(after):
    (call,) = [b.value for b in after["main"].body.blocks[0].bindings if "call_tir" in str(b.value.op)]
    return call.args[1].fields


def test_variance_form_without_affine(monkeypatch):
    after, report, builders = _run(monkeypatch, _decomposed(variance="variance"), Expected["lut_layer_norm"])
    assert [e.form for e in report.replaced] == ["decomposed"]
    (_, _, kwargs), = builders.calls
    assert not kwargs["has_gamma"] and not kwargs["has_beta"] and kwargs["eps"] == pytest.approx(1e-5)
    assert len(_call_args(after)) == 1


def test_gamma_with_leading_unit_dims_is_reshaped(monkeypatch):
    gamma = np.arange(8, dtype="float32").reshape(1, 8)
    after, report, builders = _run(monkeypatch, _decomposed(gamma=gamma), Expected["lut_layer_norm"])
    assert [e.form for e in report.replaced] == ["decomposed, gamma"]
    x, g = _call_args(after)
    np.testing.assert_array_equal(g.value.numpy(), gamma.reshape(8))


def test_a_residual_add_is_not_taken_for_beta(monkeypatch):
    residual = np.ones((2, 8), dtype="float32")
    before = _decomposed(after=lambda n: R.add(n, relax.const(residual)))
    after, report, builders = _run(monkeypatch, before, Expected["lut_layer_norm"])
    assert [e.form for e in report.replaced] == ["decomposed"]  # the normalization alone; the add stays
    assert "R.add(" in after["main"].script()


def test_different_reduction_axes_are_not_a_layer_norm(monkeypatch):
    before = _decomposed(mean_axis=0)  # mean over rows, variance over columns
    after, report, builders = _run(monkeypatch, before, Expected["lut_layer_norm"])
    tvm.ir.assert_structural_equal(after, before)
    assert report.replaced == [] and builders.calls == []


@I.ir_module
class ExpectedResidual:
    @T.prim_func(private=True)
    def lut_layer_norm(x: T.Buffer((2, 8), "float32"), residual: T.Buffer((2, 8), "float32"),
                       gamma: T.Buffer((8,), "float32"), beta: T.Buffer((8,), "float32"),
                       out: T.Buffer((2, 8), "float32")):
        T.func_attr({"tvm_lut.kernel": "stand-in"})
        for i, j in T.grid(2, 8):
            out[i, j] = (x[i, j] + residual[i, j]) * gamma[j] + beta[j]

    @R.function
    def main(x: R.Tensor((2, 8), "float32"), gamma: R.Tensor((8,), "float32"),
             beta: R.Tensor((8,), "float32")) -> R.Tensor((2, 8), "float32"):
        cls = ExpectedResidual
        with R.dataflow():
            h = R.multiply(x, R.const(2.0, "float32"))
            y = R.call_tir(cls.lut_layer_norm, (h, x, gamma, beta), out_ty=R.Tensor((2, 8), "float32"))
            R.output(y)
        return y


def _residual(layer_norm, residual_shape=(2, 8)):
    """`layer_norm(2 * x + r, gamma, beta)`: r is x itself, or a constant of `residual_shape` (broadcast)."""
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32"), gamma: R.Tensor((8,), "float32"),
                 beta: R.Tensor((8,), "float32")) -> R.Tensor((2, 8), "float32"):
            with R.dataflow():
                h = R.multiply(x, R.const(2.0, "float32"))
                s = R.add(h, x)
                y = layer_norm(s, gamma, beta)
                R.output(y)
            return y

    if residual_shape == (2, 8):
        return Before
    return tvm.script.from_source(Before.script().replace("R.add(h, x)", "R.add(h, R.const(1.0, 'float32'))"))


def _fused_layer_norm(s, gamma, beta):
    return R.nn.layer_norm(s, gamma, beta, axes=[-1], epsilon=1e-5)


def _onnx_layer_norm(s, gamma, beta):
    d = R.subtract(s, R.mean(s, axis=[-1], keepdims=True))
    v = R.mean(R.power(d, R.const(2.0, "float32")), axis=[-1], keepdims=True)
    return R.add(R.multiply(R.divide(d, R.sqrt(R.add(v, R.const(1e-5, "float32")))), gamma), beta)


@pytest.mark.parametrize("layer_norm, form", [(_fused_layer_norm, "R.nn.layer_norm, residual add"),
                                              (_onnx_layer_norm, "decomposed, gamma+beta, residual add")])
def test_a_residual_add_before_layer_norm_is_fused_in(monkeypatch, layer_norm, form):
    after, report, builders = _run(monkeypatch, _residual(layer_norm), ExpectedResidual["lut_layer_norm"])
    tvm.ir.assert_structural_equal(after, ExpectedResidual)
    assert [e.form for e in report.replaced] == [form]
    ((_, _, kwargs),) = builders.calls
    assert kwargs["residual"] is True


def test_a_broadcasting_add_before_layer_norm_stays(monkeypatch):
    after, report, builders = _run(monkeypatch, _residual(_fused_layer_norm, ()), Expected["lut_layer_norm"])
    assert [e.form for e in report.replaced] == ["R.nn.layer_norm"]
    assert "R.add(" in after["main"].script() and "residual" not in builders.calls[0][2]
