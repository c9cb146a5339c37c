"""Ops that only build with TVM's CPU library dispatch, or whose weight repacking cannot be split out, through
`tvm_lut.compile` from both importers where the importer has them: CumSum (RoBERTa-style position ids), TopK, a
Slice of run-time bounds (ONNX only: torch.export makes its bounds static), a transposed conv with constant weights
(a decoder's 2x upsampling)."""

import numpy as np
import onnx
import pytest
import torch
import tvm
from onnx import TensorProto, helper
from torch import nn
from tvm import relax

import tvm_lut
from relay_passes.pipeline import _splittable
from schedules import host_target
from schedules.rules.common import WEIGHT_PREPACK
from tvm_lut.frontend import from_onnx, from_torch


def _import(model, args, importer):
    return from_torch(model, args) if importer == "torch" else from_onnx(model, example_args=args)


def _run(executable, *args):
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](*[tvm.runtime.tensor(np.asarray(a)) for a in args])
    return out.numpy() if hasattr(out, "numpy") else [o.numpy() for o in out]


class PositionIds(nn.Module):
    """RoBERTa's position ids: a cumulative sum over the mask of non-padding tokens."""

    def forward(self, ids):
        mask = ids.ne(1).int()
        return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + 1


class TopTwo(nn.Module):
    def forward(self, x):
        values, indices = torch.topk(x, 2, dim=-1)
        return values * 2, indices


class Upsample(nn.Module):
    """A decoder's 2x upsampling: a stride-2 transposed conv with constant weights, then a 3x3 conv."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.relu(self.up(x)))


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_cumsum_position_ids_build_and_match_torch(importer):
    ids = torch.tensor([[0, 5, 7, 1, 1], [3, 1, 4, 4, 9]])
    executable = tvm_lut.compile(_import(PositionIds(), (ids,), importer))
    np.testing.assert_array_equal(_run(executable, ids.numpy()), PositionIds()(ids).numpy())


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_topk_builds_and_matches_torch(importer):
    x = torch.randn(3, 7)
    values, indices = _run(tvm_lut.compile(_import(TopTwo(), (x,), importer)), x.numpy())
    expected_values, expected_indices = TopTwo()(x)
    np.testing.assert_allclose(values, expected_values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(indices, expected_indices.numpy())


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_transposed_conv_upsampling_builds_and_matches_torch(importer):
    torch.manual_seed(0)
    model, x = Upsample().eval(), torch.randn(2, 8, 5, 6)
    executable = tvm_lut.compile(_import(model, (x,), importer))
    with torch.no_grad():
        np.testing.assert_allclose(_run(executable, x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-5)


def _onnx_model(nodes, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_slice_of_run_time_bounds_builds_and_matches_numpy():
    int64 = TensorProto.INT64
    model = _onnx_model([helper.make_node("Slice", ["x", "starts", "ends"], ["y"])],
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20, 10, 5]),
                         helper.make_tensor_value_info("starts", int64, [2]),
                         helper.make_tensor_value_info("ends", int64, [2])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c"])])
    onnx.checker.check_model(model)
    x = np.random.default_rng(0).standard_normal((20, 10, 5), dtype="float32")
    executable = tvm_lut.compile(from_onnx(model))
    out = _run(executable, x, np.array([1, 2], "int64"), np.array([4, 9], "int64"))
    np.testing.assert_array_equal(out, x[1:4, 2:9])


def test_only_functions_whose_prepack_reads_parameters_are_split():
    """A matmul's packed weight (read straight from its parameter) is split; a function without a prepack block,
    and a prepack block reading an intermediate (a flipped kernel), are not."""
    from tvm import te, topi

    from schedules.rules import Matmul

    a, b = te.placeholder((64, 512), name="a"), te.placeholder((512, 256), name="b")
    matmul = Matmul().apply(te.create_prim_func([a, b, topi.matmul(a, b)]), host_target(), False).mod["main"]
    assert WEIGHT_PREPACK in matmul.script() and _splittable(matmul)
    assert not _splittable(te.create_prim_func([a, topi.exp(a)]))
    flipped = te.compute(b.shape, lambda i, j: b[511 - i, j], name="flipped")
    packed = te.compute((32, 512, 8), lambda o, k, i: flipped[k, o * 8 + i], name="packed",
                        attrs={WEIGHT_PREPACK: 1})
    out = te.compute((512, 256), lambda k, j: packed[j // 8, k, j % 8], name="out")
    assert not _splittable(te.create_prim_func([a, b, out]))
