"""FuseLayoutIntoMatmul on attention from both importers: the heads' reshapes and transposes grouped with the
matmuls, every group scheduled by the Matmul rule, the model's output bit for bit the same as without the pass."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import relax as R

from nonlinear_stand_ins import module_of
from relay_passes import FuseLayoutIntoMatmul
from relay_passes import pipeline
from relay_passes.pipeline import legalize_passes
from relay_passes.report import PassReport
from schedules import ApplyCPUSchedules, ScheduleReport, host_target
from tvm_lut.frontend import from_onnx, from_torch

TARGET = host_target(1)


def _run(mod, inputs):
    executable = tvm.compile(mod, target=TARGET, relax_pipeline="tvm_lut")
    return relax.VirtualMachine(executable, tvm.cpu())["main"](*(tvm.runtime.tensor(t.numpy()) for t in inputs)).numpy()


@pytest.mark.parametrize("source, scores, context", [
    # torch.export: Q's chain (and K's after its last-axis transpose) into the scores; V's and the merge into the
    # context product
    ("torch", "reshape reshape permute_dims broadcast_to reshape broadcast_to reshape matmul reshape",
     "reshape reshape permute_dims broadcast_to reshape broadcast_to reshape matmul reshape permute_dims reshape "
     "reshape"),
    # ONNX: K's permutation moves its last axis: it stays a copy of its own
    (14, "reshape permute_dims matmul", "reshape permute_dims matmul permute_dims reshape"),
    (17, "reshape permute_dims matmul", "reshape permute_dims matmul permute_dims reshape"),
])
def test_attention_layouts_are_grouped_and_the_output_is_unchanged(monkeypatch, tiny_bert, source, scores, context):
    model, inputs = tiny_bert
    mod = from_torch(model, inputs) if source == "torch" else from_onnx(model, opset=source, example_args=inputs)
    fused = FuseLayoutIntoMatmul()(mod)
    report = PassReport.of(fused, "FuseLayoutIntoMatmul")
    assert [e.form for e in report.replaced] == [scores, context]
    with TARGET:
        scheduled = ApplyCPUSchedules()(tvm.transform.Sequential(legalize_passes(TARGET))(fused))
    schedules = ScheduleReport.of(scheduled)
    grouped = [name for name in schedules.scheduled if name.startswith("fused_relax_")]
    assert len(grouped) == 2 and {schedules.scheduled[name] for name in grouped} == {"Matmul"}
    assert schedules.unscheduled == []
    with_pass = _run(mod, inputs)
    monkeypatch.setattr(pipeline, "exact_passes", lambda winograd=True, _f=pipeline.exact_passes: _f(winograd)[:-1])
    np.testing.assert_array_equal(with_pass, _run(mod, inputs))
    with torch.no_grad():
        np.testing.assert_allclose(with_pass, model(*inputs).numpy(), atol=1e-5, rtol=1e-5)


def _heads(bb, x, transpose_last=False, reuse=False, weight=False):
    """(4, 8) -> heads (2, 4, 4) by reshape + permute, times the heads of 2 * x (or a constant), merged back."""
    a = bb.emit(R.permute_dims(bb.emit(R.reshape(x, (4, 2, 4))), [1, 0, 2]))
    if weight:
        b = relax.const(np.ones((2, 4, 4), "float32"))
    else:
        y = bb.emit(R.multiply(x, R.const(2.0, "float32")))
        b = bb.emit(R.permute_dims(bb.emit(R.reshape(y, (4, 2, 4))), [1, 2, 0] if transpose_last else [1, 0, 2]))
    merged = R.reshape(bb.emit(R.permute_dims(bb.emit(R.matmul(a, b)), [1, 0, 2])), (4, 8))
    return R.add(bb.emit(merged), bb.emit(R.reshape(a, (4, 8)))) if reuse else merged


@pytest.mark.parametrize("options, form", [
    ({}, "reshape permute_dims reshape permute_dims matmul permute_dims reshape"),
    ({"transpose_last": True}, "reshape permute_dims matmul permute_dims reshape"),  # B's last axis moved: not B
    ({"reuse": True}, "reshape permute_dims matmul permute_dims reshape"),           # A read twice: not A
    ({"weight": True}, None),                                                        # a constant operand: dense
])
def test_what_is_grouped(options, form):
    mod = module_of(lambda bb, x: _heads(bb, x, **options), (4, 8))
    report = PassReport.of(FuseLayoutIntoMatmul()(mod), "FuseLayoutIntoMatmul")
    assert [e.form for e in report.replaced] == ([form] if form else [])
