"""GELU forms: each Before (as an importer writes it) becomes one call of the pwl kernel (Expected)."""

import math

import numpy as np
import pytest
import torch
import tvm
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from nonlinear_stand_ins import RecordingBuilders, bundle, module_of
from relay_passes import LUTNonlinear
from relay_passes.report import PassReport, without_reports

F32 = "float32"


@I.ir_module
class Expected:
    @T.prim_func(private=True)
    def lut_gelu(x: T.Buffer((2, 8), "float32"), out: T.Buffer((2, 8), "float32")):
        T.func_attr({"tvm_lut.kernel": "stand-in"})
        for i, j in T.grid(2, 8):
            out[i, j] = x[i, j]

    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        cls = Expected
        with R.dataflow():
            y = R.call_tir(cls.lut_gelu, (x,), out_ty=R.Tensor((2, 8), "float32"))
            R.output(y)
        return y


def _c(value, shape=()):
    from tvm import relax

    return relax.const(np.full(shape, value, dtype=F32))


@I.ir_module
class OnnxErf:
    """ONNX opset < 20 (torch.onnx.export of F.gelu): Div, Erf, Add, Mul x, Mul 0.5."""

    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            a = R.divide(x, R.const(1.4142135381698608, "float32"))
            b = R.erf(a)
            c = R.add(b, R.const(1.0, "float32"))
            d = R.multiply(x, c)
            y = R.multiply(d, R.const(0.5, "float32"))
            R.output(y)
        return y


@I.ir_module
class TorchHandWrittenErf:
    """`x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))` through torch.export."""

    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            h = R.multiply(x, R.const(0.5, "float32"))
            a = R.divide(x, R.const(1.4142135381698608, "float32"))
            b = R.erf(a)
            c = R.add(b, R.const(1.0, "float32"))
            y = R.multiply(h, c)
            R.output(y)
        return y


@I.ir_module
class OnnxTanh:
    """ONNX opset < 20 for F.gelu(approximate="tanh"): x * (x * x), constants on the left."""

    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            sq = R.multiply(x, x)
            cube = R.multiply(x, sq)
            a = R.multiply(R.const(0.044714998453855515, "float32"), cube)
            b = R.add(x, a)
            c = R.multiply(R.const(0.79788458347320557, "float32"), b)
            d = R.tanh(c)
            e = R.add(R.const(1.0, "float32"), d)
            f = R.multiply(x, e)
            y = R.multiply(R.const(0.5, "float32"), f)
            R.output(y)
        return y


@I.ir_module
class TorchHandWrittenTanh:
    """`0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))` through torch.export: pow(x, 3)."""

    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            h = R.multiply(x, R.const(0.5, "float32"))
            cube = R.power(x, R.const(3.0, "float32"))
            a = R.multiply(cube, R.const(0.044714998453855515, "float32"))
            b = R.add(x, a)
            c = R.multiply(b, R.const(0.79788458347320557, "float32"))
            d = R.tanh(c)
            e = R.add(d, R.const(1.0, "float32"))
            y = R.multiply(h, e)
            R.output(y)
        return y


@I.ir_module
class OnnxExpandedErf:
    """ONNX's own expansion of Gelu (the `test_gelu_default_*_expanded` node tests): `+ 1` is a Sum, imported as
    sum(stack) of broadcast operands, and sqrt 2 is Sqrt of a constant."""

    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            s = R.sqrt(R.const(2.0, "float32"))
            a = R.divide(x, s)
            b = R.erf(a)
            one = R.broadcast_to(R.const(1.0, "float32"), R.shape([2, 8]))
            e = R.broadcast_to(b, R.shape([2, 8]))
            stacked = R.stack((one, e), axis=0)
            h = R.multiply(R.const(0.5, "float32"), x)
            c = R.sum(stacked, axis=[0], keepdims=False)
            y = R.multiply(h, c)
            R.output(y)
        return y


@I.ir_module
class OnnxExpandedTanh:
    """ONNX's own expansion of Gelu(approximate="tanh"): both `+` are Sums (imported as sum(stack)), sqrt(2 / pi)
    is Sqrt of a constant."""

    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            cube = R.power(x, R.const(3.0, "float32"))
            a = R.multiply(R.const(0.044714998453855515, "float32"), cube)
            xs = R.broadcast_to(x, R.shape([2, 8]))
            as_ = R.broadcast_to(a, R.shape([2, 8]))
            inner_stack = R.stack((xs, as_), axis=0)
            k = R.sqrt(R.const(0.63661974668502808, "float32"))
            inner = R.sum(inner_stack, axis=[0], keepdims=False)
            c = R.multiply(k, inner)
            d = R.tanh(c)
            one = R.broadcast_to(R.const(1.0, "float32"), R.shape([2, 8]))
            ds = R.broadcast_to(d, R.shape([2, 8]))
            outer_stack = R.stack((one, ds), axis=0)
            h = R.multiply(R.const(0.5, "float32"), x)
            e = R.sum(outer_stack, axis=[0], keepdims=False)
            y = R.multiply(h, e)
            R.output(y)
        return y


@I.ir_module
class Fused:
    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            y = R.nn.gelu(x)
            R.output(y)
        return y


@I.ir_module
class FusedTanh:
    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            y = R.nn.gelu_tanh(x)
            R.output(y)
        return y


def _erf_term(bb, x, scale):
    scaled = bb.emit(R.multiply(x, _c(scale)) if scale < 1 else R.divide(x, _c(scale)))
    return bb.emit(R.erf(scaled))


# Built with the BlockBuilder: variants of operand order, association, 1/sqrt 2, folding and broadcast constants.
BUILT_ERF_FORMS = {
    "multiply by 1/sqrt2, 0.5 on the left": lambda bb, x: R.multiply(
        R.multiply(_c(0.5), x), bb.emit(R.add(_c(1.0), _erf_term(bb, x, 2**-0.5)))),
    "x * (0.5 * (1 + erf))": lambda bb, x: R.multiply(
        x, bb.emit(R.multiply(bb.emit(R.add(_erf_term(bb, x, 2**0.5), _c(1.0))), _c(0.5)))),
    "folded x * (0.5 + 0.5 * erf)": lambda bb, x: R.multiply(
        x, bb.emit(R.add(bb.emit(R.multiply(_erf_term(bb, x, 2**0.5), _c(0.5))), _c(0.5)))),
    "broadcast constants (1,) and (2, 8)": lambda bb, x: R.multiply(
        bb.emit(R.multiply(x, bb.emit(R.add(_erf_term(bb, x, 2**0.5), _c(1.0, (1,)))))), _c(0.5, (2, 8))),
}


def _run(monkeypatch, before, **kwargs):
    builders = RecordingBuilders({"pwl_func": Expected["lut_gelu"]}).install(monkeypatch)
    lut = LUTNonlinear(bundle(knots=9), **kwargs)
    after = lut(before)
    return without_reports(after), PassReport.of(after, "LUTNonlinear"), builders


@pytest.mark.parametrize(
    "before, form, table",
    [
        (Fused, "R.nn.gelu", "gelu"),
        (FusedTanh, "R.nn.gelu_tanh", "gelu_tanh"),
        (OnnxErf, "erf-decomposed", "gelu"),
        (TorchHandWrittenErf, "erf-decomposed", "gelu"),
        (OnnxTanh, "tanh-decomposed", "gelu_tanh"),
        (TorchHandWrittenTanh, "tanh-decomposed", "gelu_tanh"),
        (OnnxExpandedErf, "erf-decomposed", "gelu"),
        (OnnxExpandedTanh, "tanh-decomposed", "gelu_tanh"),
    ],
)
def test_importer_forms(monkeypatch, before, form, table):
    after, report, builders = _run(monkeypatch, before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert [(e.form, e.shape) for e in report.replaced] == [(form, (2, 8))]
    ((name, args, kwargs),) = builders.calls
    assert (name, args[0].name, tuple(args[1]), kwargs) == ("pwl_func", table, (2, 8), {"dtype": "float32"})


@pytest.mark.parametrize("variant", sorted(BUILT_ERF_FORMS))
def test_erf_variants(monkeypatch, variant):
    after, report, _ = _run(monkeypatch, module_of(BUILT_ERF_FORMS[variant]))
    tvm.ir.assert_structural_equal(after, Expected)
    assert report.counts() == {"gelu": 1}


@pytest.mark.parametrize(
    "build",
    [
        # a wrong constant: 0.4 * x * (1 + erf(x / sqrt 2)) is not GELU
        lambda bb, x: R.multiply(R.multiply(x, _c(0.4)), bb.emit(R.add(_erf_term(bb, x, 2**0.5), _c(1.0)))),
        # erf of another tensor: y * 0.5 * (1 + erf(x / sqrt 2)) with y != x
        lambda bb, x: R.multiply(
            R.multiply(bb.emit(R.add(x, x)), _c(0.5)), bb.emit(R.add(_erf_term(bb, x, 2**0.5), _c(1.0)))),
        # a constant that is not all 0.5
        lambda bb, x: R.multiply(
            R.multiply(x, R.const(np.linspace(0.4, 0.6, 8, dtype=F32))),
            bb.emit(R.add(_erf_term(bb, x, 2**0.5), _c(1.0)))),
        # a sum over the other axis of the stack is not `1 + erf`
        lambda bb, x: R.multiply(R.multiply(x, _c(0.5)), bb.emit(R.sum(bb.emit(R.stack(
            (bb.emit(R.broadcast_to(_c(1.0), R.shape([2, 8]))), _erf_term(bb, x, 2**0.5)), axis=0)), axis=[1]))),
    ],
    ids=["0.4", "other-operand", "varying-constant", "sum-over-another-axis"],
)
def test_look_alikes_are_left_alone(monkeypatch, build):
    before = module_of(build)
    after, report, builders = _run(monkeypatch, before)
    tvm.ir.assert_structural_equal(after, before)
    assert report.replaced == [] and report.kept == [] and builders.calls == []


def test_ops_filter_leaves_gelu_exact(monkeypatch):
    after, report, _ = _run(monkeypatch, OnnxErf, ops=("softmax",))
    tvm.ir.assert_structural_equal(after, OnnxErf)
    assert report.replaced == [] and report.kept == []


def test_missing_table_keeps_gelu_tanh_exact(monkeypatch):
    RecordingBuilders({}).install(monkeypatch)
    lut = LUTNonlinear(bundle(knots=9, without=("gelu_tanh",)))
    after = lut(FusedTanh)
    report = PassReport.of(after, "LUTNonlinear")
    after = without_reports(after)
    tvm.ir.assert_structural_equal(after, FusedTanh)
    ((kept,),) = [report.kept]
    assert (kept.op, kept.form, kept.reason) == ("gelu", "R.nn.gelu_tanh", "no 'gelu_tanh' table in the bundle")


class _ErfSqrtConstant(torch.nn.Module):
    """A hand-written GELU whose sqrt 2 is `torch.sqrt` of a constant, as torch.export keeps it."""

    def forward(self, x):
        return 0.5 * x * (1 + torch.erf(x / torch.sqrt(torch.tensor(2.0))))


class _TanhSqrtConstant(torch.nn.Module):
    def forward(self, x):
        inner = x + 0.044715 * torch.pow(x, 3)
        return 0.5 * x * (1 + torch.tanh(torch.sqrt(torch.tensor(2.0 / math.pi)) * inner))


def _onnx_expanded(name: str):
    """The ONNX node test's model of ONNX's own Gelu expansion (`+ 1` as Sum, sqrt of constants)."""
    from onnx.backend.test.loader import load_model_tests

    (case,) = [case for case in load_model_tests(kind="node") if case.name == name]
    return case.model


@pytest.mark.parametrize(
    "importer, make, approximate",
    [
        ("onnx", lambda: _onnx_expanded("test_gelu_default_2_expanded"), "none"),
        ("onnx", lambda: _onnx_expanded("test_gelu_tanh_2_expanded"), "tanh"),
        ("torch", _ErfSqrtConstant, "none"),
        ("torch", _TanhSqrtConstant, "tanh"),
    ],
    ids=["onnx-erf-sum", "onnx-tanh-sum", "torch-erf-sqrt", "torch-tanh-sqrt"],
)
def test_expanded_forms_from_both_importers_become_tables(importer, make, approximate):
    """Through the real importer and `tvm_lut.compile(nonlinear=True)`: one GELU replaced, within the shipped
    table's accuracy of PyTorch's GELU."""
    import tvm_lut
    from tvm import relax
    from tvm_lut.frontend import from_onnx, from_torch

    if importer == "onnx":
        model = make()
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        mod = from_onnx(model)
    else:
        shape = [4, 33]
        mod = from_torch(make(), (torch.zeros(shape),))
    executable = tvm_lut.compile(mod, nonlinear=True)
    (report,) = executable.lut_report.passes
    assert [entry["op"] for entry in report["replaced"]] == ["gelu"] and report["kept"] == []
    x = np.random.default_rng(0).uniform(-6, 6, shape).astype(F32)
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    expected = torch.nn.functional.gelu(torch.from_numpy(x), approximate=approximate).numpy()
    np.testing.assert_allclose(out, expected, atol=2e-2)
