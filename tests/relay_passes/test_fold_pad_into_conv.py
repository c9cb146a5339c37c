"""FoldPadIntoConv: explicit zero paddings (TensorFlow-style asymmetric, zero-width,
added to a conv's own padding) folded into the convs, paddings it cannot fold (non-zero value, reflect, of the
channels) left in place, outputs equal to PyTorch's."""

import numpy as np
import onnx
import onnx.numpy_helper
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

import tvm_lut
from relay_passes.fold_pad_into_conv import FoldPadIntoConv
from schedules import host_target
from tvm_lut.frontend import from_onnx, from_torch

TARGET = host_target()


class Padded(torch.nn.Module):
    """Convs after explicit zero pads: asymmetric before a strided conv (TF "SAME"), zero-width before a 1x1, on top
    of a conv's own padding before a depthwise conv."""

    def __init__(self):
        super().__init__()
        self.strided = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.pointwise = torch.nn.Conv2d(8, 16, 1)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)

    def forward(self, x):
        y = self.strided(F.pad(x, (0, 1, 0, 1)))
        y = self.pointwise(F.pad(y, (0, 0, 0, 0)))
        return self.depthwise(F.pad(y, (2, 0, 1, 3)))


class Unfoldable(torch.nn.Module):
    """Pads a conv's own padding cannot express: a non-zero value, reflection, extra channels."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Conv2d(4, 4, 3)
        self.second = torch.nn.Conv2d(4, 4, 3)
        self.third = torch.nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.first(F.pad(x, (1, 1, 1, 1), value=0.5))
        y = self.second(F.pad(y, (1, 1, 1, 1), mode="reflect"))
        return self.third(F.pad(y, (0, 0, 0, 0, 1, 1)))


def _pads(mod: tvm.IRModule) -> int:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.nn.pad" else None)
    return len(found)


def _run(executable, x: torch.Tensor) -> np.ndarray:
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()


def test_zero_pads_fold_into_the_convs_and_the_model_matches_torch():
    torch.manual_seed(0)
    net, x = Padded().eval(), torch.randn(2, 3, 13, 12)
    mod = from_torch(net, (x,))
    assert _pads(FoldPadIntoConv()(mod)) == 0
    expected = net(x).detach().numpy()
    np.testing.assert_allclose(_run(tvm_lut.compile(mod, target=TARGET), x), expected, rtol=1e-5, atol=1e-5)


def test_an_onnx_pad_is_left_to_its_own_function():
    """TVM's ONNX importer emits Pad as a TIR function, not `R.nn.pad`: the pass leaves it (and the model right).
    (Built by hand with constant widths: torch's exporter computes them at run time, which the importer refuses.)"""
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Pad", ["x", "pads"], ["padded"], mode="constant"),
         onnx.helper.make_node("Conv", ["padded", "w"], ["y"], strides=[2, 2])],
        "padded_conv", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 10, 9])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 1, 2], np.int64), "pads"),
         onnx.numpy_helper.from_array(weight, "w")])
    mod = from_onnx(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    tvm.ir.assert_structural_equal(FoldPadIntoConv()(mod), mod)
    x = torch.randn(1, 3, 10, 9)
    expected = F.conv2d(F.pad(x, (1, 2, 0, 1)), torch.from_numpy(weight), stride=2).numpy()
    np.testing.assert_allclose(_run(tvm_lut.compile(mod, target=TARGET), x), expected, rtol=1e-5, atol=1e-5)


def test_pads_a_conv_cannot_express_stay():
    torch.manual_seed(1)
    net, x = Unfoldable().eval(), torch.randn(1, 4, 7, 9)
    mod = from_torch(net, (x,))
    folded = FoldPadIntoConv()(mod)
    assert _pads(folded) == _pads(mod) >= 2  # reflection may import as another op; the others stay pads
    expected = net(x).detach().numpy()
    np.testing.assert_allclose(_run(tvm_lut.compile(mod, target=TARGET), x), expected, rtol=1e-5, atol=1e-5)
