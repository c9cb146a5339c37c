import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from relay_passes.pipeline import LUTPipeline, tvm_lut_pipeline
from schedules import host_target
from tvm_lut.frontend import from_onnx, from_torch

TARGET = host_target()


class Block(nn.Module):
    """A transformer-shaped block: dense + bias, GELU, residual, LayerNorm, attention-like softmax."""

    def __init__(self, hidden=24):
        super().__init__()
        self.up, self.down = nn.Linear(hidden, 2 * hidden), nn.Linear(2 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x):
        h = self.norm(x + self.down(nn.functional.gelu(self.up(x))))
        return torch.softmax(h @ h.transpose(-1, -2), dim=-1)


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 10, 24)
    with torch.no_grad():
        expected = model(x).numpy()
    return model, x, expected


def _run(executable, x: torch.Tensor) -> np.ndarray:
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()))
    return out.numpy()


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_exact_model_is_fully_scheduled_and_exact(block, importer):
    model, x, expected = block
    mod = from_torch(model, (x,)) if importer == "torch" else from_onnx(model, example_args=(x,))
    pipeline = tvm_lut_pipeline(target=TARGET)
    result = _run(tvm.compile(mod, target=TARGET, relax_pipeline=pipeline), x)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)
    report = pipeline.report
    assert report["unscheduled"] == [] and report["passes"] == []
    assert "Matmul" in report["scheduled"].values() and "Reduction" in report["scheduled"].values()


def test_registered_name_works_with_no_arguments(block):
    model, x, expected = block
    executable = tvm.compile(from_torch(model, (x,)), target=TARGET, relax_pipeline="tvm_lut")
    np.testing.assert_allclose(_run(executable, x), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(relax.get_pipeline("tvm_lut"), tvm.transform.Pass)


def test_nonlinear_uses_the_shipped_tables_and_reports_them(block):
    model, x, expected = block
    pipeline = tvm_lut_pipeline(nonlinear=True, target=TARGET)
    result = _run(tvm.compile(from_torch(model, (x,)), target=TARGET, relax_pipeline=pipeline), x)
    (lut_report,) = pipeline.report["passes"]
    assert lut_report["pass"] == "LUTNonlinear" and lut_report["replaced"]
    assert pipeline.report["unscheduled"] == []
    np.testing.assert_allclose(result, expected, atol=0.05)


def test_without_a_target_says_so(block):
    model, x, _ = block
    with pytest.raises(ValueError, match="needs a target"):
        LUTPipeline()(from_torch(model, (x,)))


def test_missing_database_is_an_error(block, tmp_path):
    model, x, _ = block
    with pytest.raises(FileNotFoundError, match="no tuning database"):
        tvm.compile(from_torch(model, (x,)), target=TARGET,
                    relax_pipeline=tvm_lut_pipeline(database=tmp_path, target=TARGET))
