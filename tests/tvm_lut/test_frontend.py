"""The two importers: weights become constants, `main` takes only the inputs, and the result runs like PyTorch."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from tvm_lut.frontend import from_onnx, from_torch


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(8)
        self.proj = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.softmax(self.proj(torch.nn.functional.gelu(self.norm(x))), dim=-1)


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    return _Block()


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 8)


def _run(mod, *inputs):
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(t.numpy()) for t in inputs)).numpy()


def _expect_weights_bound(mod):
    params = mod["main"].params
    assert len(params) == 1, f"weights should be constants, main takes {[p.name for p in params]}"
    assert isinstance(mod["main"].ret_ty, relax.TensorType)


def test_from_torch_matches_pytorch(block, x):
    mod = from_torch(block, (x,))
    _expect_weights_bound(mod)
    with torch.no_grad():
        expected = block(x).numpy()
    np.testing.assert_allclose(_run(mod, x), expected, rtol=1e-5, atol=1e-6)


def test_from_torch_accepts_a_single_tensor(block, x):
    mod = from_torch(block, x)
    assert [int(d) for d in mod["main"].params[0].ty.shape] == [3, 8]


@pytest.mark.parametrize("opset", [13, 17, 20])
def test_from_onnx_exports_a_torch_module(block, x, opset):
    mod = from_onnx(block, opset=opset, example_args=(x,))
    _expect_weights_bound(mod)
    with torch.no_grad():
        expected = block(x).numpy()
    np.testing.assert_allclose(_run(mod, x), expected, rtol=1e-5, atol=1e-6)


def test_from_onnx_reads_a_file_and_a_proto(block, x, tmp_path):
    import onnx

    proto = _onnx_proto(block, x, input_names=["tokens"])
    path = tmp_path / "block.onnx"
    onnx.save(proto, str(path))
    for source in (proto, path, str(path)):
        mod = from_onnx(source)
        _expect_weights_bound(mod)
        assert mod["main"].params[0].name == "tokens"


def test_from_onnx_shape_dict_fixes_symbolic_dims(block, x):
    proto = _onnx_proto(block, x, input_names=["tokens"], dynamic_axes={"tokens": {0: "batch"}})
    mod = from_onnx(proto, shape_dict={"tokens": (5, 8)})
    assert [int(d) for d in mod["main"].params[0].ty.shape] == [5, 8]


def test_misuse_is_reported(block, x):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        from_torch(lambda t: t, (x,))
    with pytest.raises(ValueError, match="needs example_args"):
        from_onnx(block)
    with pytest.raises(TypeError, match="onnx.ModelProto, a path"):
        from_onnx(42)
    proto = _onnx_proto(block, x)
    with pytest.raises(ValueError, match="only used when exporting"):
        from_onnx(proto, example_args=(x,))


def _onnx_proto(block, x, **export_options):
    import io

    import onnx

    buffer = io.BytesIO()
    torch.onnx.export(block.eval(), (x,), buffer, opset_version=17, dynamo=False, **export_options)
    return onnx.load_from_string(buffer.getvalue())
