"""WinogradConv2d on graphs from both importers: the 3x3 stride-1 convs it serves rewritten (bias and ReLU fused
into the kernel), every other conv left direct with its reason, outputs equal to PyTorch's."""

import numpy as np
import pytest
import torch
import tvm

import tvm_lut
from relay_passes import PassReport, WinogradConv2d
from schedules import host_target
from tvm_lut.frontend import from_onnx, from_torch
from tvm_lut.models.cnn import FashionCNN

TARGET = host_target()


class Convs(torch.nn.Module):
    """One conv Winograd serves (with bias, then ReLU), and four it does not: stride 2, grouped, dilated, too few
    input channels."""

    def __init__(self):
        super().__init__()
        self.served = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.strided = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.grouped = torch.nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.dilated = torch.nn.Conv2d(16, 8, 3, padding=2, dilation=2)
        self.narrow = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)

    def forward(self, x, rgb):
        y = self.dilated(self.grouped(self.strided(torch.relu(self.served(x)))))
        return y, self.narrow(rgb)


def _import(net, args, importer):
    net.eval()
    return from_torch(net, args) if importer == "torch" else from_onnx(net, example_args=args)


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_serves_3x3_stride_1_and_says_why_not_the_rest(importer):
    torch.manual_seed(0)
    args = (torch.randn(2, 8, 11, 10), torch.randn(1, 3, 6, 6))
    pass_ = WinogradConv2d()
    rewritten = pass_(_import(Convs(), args, importer))
    report = PassReport.of(rewritten, "WinogradConv2d")
    assert [(e.op, e.shape) for e in report.replaced] == [("conv2d", (2, 16, 11, 10))]
    reasons = sorted(e.reason.split(":")[0] for e in report.kept)
    assert reasons == ["3 input channel(s)", "3x3 kernel, stride (1, 1), dilation (2, 2)",
                       "3x3 kernel, stride (2, 2), dilation (1, 1)", "groups=2"]
    assert sum(name.startswith("winograd_conv2d") for name in (gv.name_hint for gv in rewritten.get_global_vars())) == 1


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_compiled_model_matches_torch_with_the_epilogue_fused(importer):
    torch.manual_seed(1)
    net = Convs().eval()
    args = (torch.randn(2, 8, 11, 10), torch.randn(1, 3, 6, 6))
    executable = tvm_lut.compile(_import(net, args, importer), target=TARGET)
    assert any(name.startswith("fused_winograd_conv2d") and name.endswith("relu") and rule == "Winograd"
               for name, rule in executable.lut_report.scheduled.items())
    assert executable.lut_report.unscheduled == []
    assert "WinogradConv2d: 1 rewritten, 4 not" in str(executable.lut_report)
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    outputs = vm["main"](*[tvm.runtime.tensor(a.numpy()) for a in args])
    with torch.no_grad():
        expected = net(*args)
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_the_cnn_with_and_without_winograd():
    """The Fashion-MNIST CNN: conv2 (32 -> 64, 14x14) is rewritten; `winograd=False` keeps every conv direct and
    gives the same logits."""
    torch.manual_seed(2)
    model, x = FashionCNN().eval(), torch.randn(1, 1, 28, 28)
    mod = from_torch(model, (x,))
    logits = {}
    for winograd in (True, False):
        executable = tvm_lut.compile(mod, target=TARGET, winograd=winograd)
        rules = set(executable.lut_report.scheduled.values())
        assert ("Winograd" in rules) == winograd
        logits[winograd] = tvm.relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(logits[True], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits[True], logits[False], rtol=1e-4, atol=1e-4)
