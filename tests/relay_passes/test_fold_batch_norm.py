"""FoldBatchNorm on graphs from both importers: batch norms after convs (plain, biased, grouped, depthwise, strided)
folded away, one it cannot fold (after a conv whose weight is a run-time input) left in place, outputs equal to
PyTorch's."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import tvm_lut
from relay_passes.fold_batch_norm import FoldBatchNorm
from schedules import host_target
from tvm_lut.frontend import from_onnx, from_torch

TARGET = host_target()


def _bn(channels: int) -> torch.nn.BatchNorm2d:
    """A batch norm with statistics far from the identity (so a missed fold shows in the numbers)."""
    bn = torch.nn.BatchNorm2d(channels)
    bn.running_mean.uniform_(-2, 2)
    bn.running_var.uniform_(0.1, 4)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    return bn


class Folded(torch.nn.Module):
    """Four convs a batch norm follows: without bias (a MobileNet's), with bias, grouped 3x3, depthwise stride 2."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(5, 12, 1, bias=False), _bn(12), torch.nn.ReLU6(),
            torch.nn.Conv2d(12, 12, 3, padding=1), _bn(12),
            torch.nn.Conv2d(12, 12, 3, padding=1, groups=3, bias=False), _bn(12), torch.nn.Hardswish(),
            torch.nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12), _bn(12))

    def forward(self, x):
        return self.body(x)


class RuntimeWeight(torch.nn.Module):
    """A conv whose weight is an input: nothing to fold into."""

    def __init__(self):
        super().__init__()
        self.bn = _bn(4)

    def forward(self, x, weight):
        return self.bn(torch.nn.functional.conv2d(x, weight))


def _import(net, args, importer):
    net.eval()
    return from_torch(net, args) if importer == "torch" else from_onnx(net, example_args=args)


def _count(mod: tvm.IRModule, op_name: str) -> int:
    calls = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) and e.op.name == op_name else None)
    return len(calls)


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_every_batch_norm_after_a_constant_conv_folds_and_the_model_matches_torch(importer):
    torch.manual_seed(0)
    net, x = Folded().eval(), torch.randn(2, 5, 9, 11)
    mod = _import(net, (x,), importer)
    folded = FoldBatchNorm()(mod)
    assert _count(folded, "relax.nn.batch_norm") == 0
    assert _count(folded, "relax.nn.conv2d") == 4
    executable = tvm_lut.compile(mod, target=TARGET)
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    expected = net(x).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_a_conv_with_a_run_time_weight_keeps_its_batch_norm():
    torch.manual_seed(1)
    net = RuntimeWeight().eval()
    args = (torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3))
    folded = FoldBatchNorm()(_import(net, args, "torch"))
    assert _count(folded, "relax.nn.batch_norm") == 1
    executable = tvm_lut.compile(folded, target=TARGET)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](*(tvm.runtime.tensor(a.numpy()) for a in args)).numpy()
    np.testing.assert_allclose(out, net(*args).detach().numpy(), rtol=1e-5, atol=1e-5)
