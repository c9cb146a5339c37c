"""Softmax: `R.nn.softmax` on any axis becomes one call of the softmax kernel; what cannot be served stays exact."""

import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

import schedules
from nonlinear_stand_ins import RecordingBuilders, bundle, module_of
from relay_passes import LUTNonlinear
from relay_passes.report import PassReport, without_reports


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            y = R.nn.softmax(x, axis=-2)
            R.output(y)
        return y


@I.ir_module
class Expected:
    @T.prim_func(private=True)
    def lut_softmax(x: T.Buffer((2, 8), "float32"), out: T.Buffer((2, 8), "float32")):
        T.func_attr({"tvm_lut.kernel": "stand-in"})
        for i, j in T.grid(2, 8):
            out[i, j] = x[i, j]

    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        cls = Expected
        with R.dataflow():
            y = R.call_tir(cls.lut_softmax, (x,), out_ty=R.Tensor((2, 8), "float32"))
            R.output(y)
        return y


@I.ir_module
class TwoSoftmaxes:
    """Two softmaxes of one shape and axis share one kernel; a float16 one and a dynamic one stay exact."""

    @R.function
    def main(x: R.Tensor((2, 8), "float32"), h: R.Tensor((2, 8), "float16"), d: R.Tensor(("rows", 8), "float32")):
        with R.dataflow():
            a = R.nn.softmax(x, axis=-1)
            b = R.nn.softmax(a, axis=1)
            c = R.nn.softmax(h, axis=-1)
            e = R.nn.softmax(d, axis=-1)
            y = (b, c, e)
            R.output(y)
        return y


def test_softmax_on_a_non_last_axis(monkeypatch):
    builders = RecordingBuilders({"softmax_func": Expected["lut_softmax"]}).install(monkeypatch)
    after, report = _apply(LUTNonlinear(bundle(knots=9)), Before)
    tvm.ir.assert_structural_equal(after, Expected)
    ((name, args, kwargs),) = builders.calls
    assert (name, [t.name for t in args[:2]], tuple(args[2]), kwargs) == (
        "softmax_func", ["exp", "reciprocal"], (2, 8), {"axis": 0})
    assert report.counts() == {"softmax": 1}


def _apply(lut, mod):
    """The rewritten module without its report, and the report."""
    after = lut(mod)
    return without_reports(after), PassReport.of(after, "LUTNonlinear")


def test_one_kernel_per_shape_and_axis_and_exact_fallbacks(monkeypatch):
    builders = RecordingBuilders({"softmax_func": Expected["lut_softmax"]}).install(monkeypatch)
    after, report = _apply(LUTNonlinear(bundle(knots=9)), TwoSoftmaxes)
    assert len(builders.calls) == 1  # a and b: same (shape, axis) once normalized
    kernels = [gv.name_hint for gv, f in after.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernels == ["lut_softmax"]
    assert [e.function for e in report.replaced] == ["lut_softmax", "lut_softmax"]
    assert [(e.dtype, e.shape, e.reason) for e in report.kept] == [
        ("float16", (2, 8), "dtype float16: the LUT kernels compute in float32"),
        ("float32", None, "dynamic shape: the LUT kernels need static shapes"),
    ]
    assert "R.nn.softmax" in after["main"].script() and after["main"].script().count("call_tir") == 2


def test_missing_reciprocal_table(monkeypatch):
    RecordingBuilders({}).install(monkeypatch)
    after, report = _apply(LUTNonlinear(bundle(knots=9, without=("reciprocal",))), Before)
    tvm.ir.assert_structural_equal(after, Before)
    assert [e.reason for e in report.kept] == ["no 'reciprocal' table in the bundle"]


def test_a_kernel_that_rejects_the_op_keeps_it_exact(monkeypatch):
    def reject(*args, **kwargs):
        raise ValueError("softmax axis 0 is not supported")

    monkeypatch.setattr(schedules, "softmax_func", reject)
    after, report = _apply(LUTNonlinear(bundle(knots=9)), Before)
    tvm.ir.assert_structural_equal(after, Before)
    assert [e.reason for e in report.kept] == ["softmax_func: softmax axis 0 is not supported"]


@pytest.mark.parametrize("ops", [("relu",), ("gelu", "sigmoid")])
def test_unknown_ops_raise(ops):
    with pytest.raises(ValueError, match=r"cannot replace \[.*\]: it serves gelu, softmax, layer_norm"):
        LUTNonlinear(ops=ops)


def test_ops_must_be_a_sequence_of_names():
    with pytest.raises(TypeError, match="ops must be a sequence of op names"):
        LUTNonlinear(ops="gelu")


@pytest.mark.parametrize("bundle_value", [{"gelu": None}, "tables.safetensors"])
def test_bundle_must_be_a_bundle(bundle_value):
    with pytest.raises(TypeError, match="bundle must be a tvm_lut.Bundle or None"):
        LUTNonlinear(bundle_value)


def _decomposed(max_axis, sum_axis):
    def build(bb, x):
        e = bb.emit(R.exp(bb.emit(R.subtract(x, bb.emit(R.max(x, axis=max_axis, keepdims=True))))))
        return R.divide(e, bb.emit(R.sum(e, axis=sum_axis, keepdims=True)))

    return module_of(build)


def test_decomposed_softmax_as_onnx_expands_it(monkeypatch):
    builders = RecordingBuilders({"softmax_func": Expected["lut_softmax"]}).install(monkeypatch)
    after, report = _apply(LUTNonlinear(bundle(knots=9)), _decomposed([0], [-2]))
    tvm.ir.assert_structural_equal(after, Expected)
    assert [e.form for e in report.replaced] == ["decomposed"]
    assert builders.calls[0][2] == {"axis": 0}


@pytest.mark.parametrize("max_axis, sum_axis", [([0], [1]), ([0, 1], [0, 1])])
def test_decomposed_look_alikes_are_left_alone(monkeypatch, max_axis, sum_axis):
    RecordingBuilders({}).install(monkeypatch)
    before = _decomposed(max_axis, sum_axis)
    after, report = _apply(LUTNonlinear(bundle(knots=9)), before)
    tvm.ir.assert_structural_equal(after, before)
    assert report.replaced == [] and report.kept == []


def _attention_scores(scale_op, mask_shape=(1, 8), mask_first=False, axis=-1):
    """`softmax(x op c + mask, axis)` of (2, 8) scores: the scaling (divide, multiply, none) then the mask add."""
    def build(bb, x):
        mask = bb.emit(R.multiply(R.const(-10000.0, "float32"), bb.emit(R.ones(R.shape(mask_shape), "float32"))))
        c = R.const(4.0, "float32")
        scores = {"divide": lambda: bb.emit(R.divide(x, c)), "multiply": lambda: bb.emit(R.multiply(c, x)),
                  None: lambda: x}[scale_op]()
        total = bb.emit(R.add(mask, scores) if mask_first else R.add(scores, mask))
        return R.nn.softmax(total, axis=axis)

    return module_of(build)


@pytest.mark.parametrize("scale_op, mask_first, form, scale", [
    ("divide", False, "R.nn.softmax, scale and mask add", ("divide", 4.0)),
    ("multiply", True, "R.nn.softmax, scale and mask add", ("multiply", 4.0)),
    (None, False, "R.nn.softmax, mask add", None),
])
def test_scale_and_mask_add_before_a_last_axis_softmax_are_fused_in(monkeypatch, scale_op, mask_first, form, scale):
    builders = RecordingBuilders({"softmax_func": Expected["lut_softmax"]}).install(monkeypatch)
    after, report = _apply(LUTNonlinear(bundle(knots=9)), _attention_scores(scale_op, mask_first=mask_first))
    assert [e.form for e in report.replaced] == [form]
    ((_, _, kwargs),) = builders.calls
    assert kwargs["mask_shape"] == (1, 8) and kwargs.get("scale") == scale
    script = after["main"].script()
    assert "R.add(" not in script and "R.divide(" not in script


@pytest.mark.parametrize("mask_shape, axis", [((2, 1), -1), ((1, 8), 0)])
def test_a_per_row_shift_or_another_axis_keeps_its_add(monkeypatch, mask_shape, axis):
    builders = RecordingBuilders({"softmax_func": Expected["lut_softmax"]}).install(monkeypatch)
    after, report = _apply(LUTNonlinear(bundle(knots=9)), _attention_scores("divide", mask_shape, axis=axis))
    assert [e.form for e in report.replaced] == ["R.nn.softmax"]
    assert "mask_shape" not in builders.calls[0][2] and "R.add(" in after["main"].script()
