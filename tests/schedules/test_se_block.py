"""A squeeze-and-excitation block (global average pool, 1x1 convs, a sigmoid gate multiplied back into the
features) through `tvm_lut.compile` from both importers: it builds, every function is scheduled, and it matches
PyTorch. The gate's function used to fail the build inside the Reduction rule (TVM's `reverse_compute_inline` on a
broadcast read)."""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

import tvm_lut
from tvm_lut.frontend import from_onnx, from_torch


class SqueezeExcite(nn.Module):
    def __init__(self, channels=16, squeeze=4):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.reduce = nn.Conv2d(channels, channels // squeeze, 1)
        self.expand = nn.Conv2d(channels // squeeze, channels, 1)

    def forward(self, x):
        features = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(features.mean((2, 3), keepdim=True)))))
        return features * gate


@pytest.mark.parametrize("shape", [(2, 3, 12, 12), (1, 3, 7, 5)])
@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_squeeze_excite_compiles_scheduled_and_matches_torch(importer, shape):
    torch.manual_seed(0)
    model, x = SqueezeExcite().eval(), torch.randn(*shape)
    with torch.no_grad():
        expected = model(x).numpy()
    mod = from_torch(model, (x,)) if importer == "torch" else from_onnx(model, example_args=(x,))
    executable = tvm_lut.compile(mod)
    report = executable.lut_report
    assert report.unscheduled == [] and report.rule_failures == {}
    assert any("sigmoid" in name and rule == "Reduction" for name, rule in report.scheduled.items())
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
