import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

import tvm_lut
from schedules import host_target
from tvm_lut.compiler import CompileReport
from tvm_lut.frontend import from_onnx, from_torch


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)

    def forward(self, x):
        return torch.softmax(self.norm(nn.functional.gelu(self.dense(x))), dim=-1)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    model, x = Head().eval(), torch.randn(4, 8, 16)
    with torch.no_grad():
        return model, x, model(x).numpy()


def _run(executable, x):
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_exact_compile_matches_torch_and_reports_every_function(head, importer):
    model, x, expected = head
    mod = from_torch(model, (x,)) if importer == "torch" else from_onnx(model, example_args=(x,))
    executable = tvm_lut.compile(mod)
    np.testing.assert_allclose(_run(executable, x), expected, rtol=1e-4, atol=1e-6)
    report = executable.lut_report
    assert isinstance(report, CompileReport) and report.unscheduled == [] and report.passes == []
    assert report.target == str(host_target())
    assert "unscheduled: none" in str(report)


def test_nonlinear_reports_what_it_replaced(head):
    model, x, expected = head
    executable = tvm_lut.compile(from_torch(model, (x,)), nonlinear=True)
    (lut,) = executable.lut_report.passes
    assert {entry["op"] for entry in lut["replaced"]} >= {"gelu", "softmax", "layer_norm"}
    assert "LUTNonlinear: replaced" in str(executable.lut_report)
    np.testing.assert_allclose(_run(executable, x), expected, atol=0.02)


def test_rejects_what_it_cannot_compile(head):
    model, x, _ = head
    with pytest.raises(TypeError, match="Relax tvm.IRModule"):
        tvm_lut.compile(model)
    with pytest.raises(ValueError, match="CPUs"):
        tvm_lut.compile(from_torch(model, (x,)), target={"kind": "cuda"})


def test_cli_tune_then_compile_an_onnx_file(head, tmp_path, capsys):
    import json

    import onnx

    from tvm_lut.cli import main
    from tvm_lut.frontend import _torch_to_onnx

    model, x, expected = head
    path = tmp_path / "head.onnx"
    onnx.save(_torch_to_onnx(model, (x,), 17), path)
    assert main(["tune", str(path), "--db", str(tmp_path / "db"), "--trials", "1"]) == 0
    assert main(["compile", str(path), "--db", str(tmp_path / "db"), "-o", str(tmp_path / "head.so"),
                 "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["unscheduled"] == [] and report["tuned"] and not report["scheduled"]
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "head.so")), tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x.numpy())).numpy(), expected, rtol=1e-4, atol=1e-6)
    assert "wrote" in capsys.readouterr().out


def test_an_empty_batch_compiles_and_runs():
    """Zero rows: no rule schedules an empty function (splitting a loop of extent 0 divided by zero); they stay
    naive, are reported, and run zero times."""
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((0, 384), "float32"))
    weight = relax.const(np.ones((384, 384), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(builder.emit(relax.op.nn.gelu(relax.op.matmul(x, weight))))
        builder.emit_func_output(out)
    with pytest.warns(UserWarning, match="left naive"):
        executable = tvm_lut.compile(builder.get(), target=host_target())
    assert executable.lut_report.unscheduled
    result = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(np.zeros((0, 384), "float32")))
    assert result.numpy().shape == (0, 384)
