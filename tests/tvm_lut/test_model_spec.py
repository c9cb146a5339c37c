"""The shared model vocabulary: input specs, model resolution, calibration files; every bad input names itself."""

import numpy as np
import pytest
import torch
from torch import nn

from tvm_lut.model_spec import InputSpec, UsageError, builtin_inputs, load_calibration, resolve_model


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, ids, x):
        return self.fc(x) + ids.float().sum()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "two.onnx"
    args = (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 8))
    torch.onnx.export(TwoInputs().eval(), args, str(path), input_names=["ids", "x"], opset_version=17, dynamo=False,
                      dynamic_axes={"x": {0: "batch"}})
    return path


def test_input_spec_parses_and_prints():
    spec = InputSpec.parse("input_ids:8x64:int64")
    assert spec == InputSpec("input_ids", (8, 64), "int64") and str(spec) == "input_ids:8x64:int64"
    assert InputSpec.parse("x:1X3x28x28").dtype == "float32"
    assert InputSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("text, message", [
    ("input_ids", "expected NAME:SHAPE"), ("x:8xa", "integers joined by 'x'"), ("x:8x0", "must be >= 1"),
    ("x:8:complex", "dtype 'complex' is not one of"), ("x:8:int64:extra", "expected NAME:SHAPE"),
])
def test_bad_input_specs(text, message):
    with pytest.raises(UsageError, match=message):
        InputSpec.parse(text)


def test_builtin_models():
    source = resolve_model("minilm-l6", batch=1, length=32)
    assert source.kind == "builtin" and [str(s) for s in source.inputs] == ["input_ids:1x32:int64",
                                                                            "attention_mask:1x32:int64"]
    assert builtin_inputs("fashion-cnn") == [InputSpec("x", (8, 1, 28, 28))]
    custom = resolve_model("fashion-cnn", [InputSpec("x", (2, 1, 28, 28))])
    assert custom.inputs == [InputSpec("x", (2, 1, 28, 28))]
    with pytest.raises(UsageError, match="has no input 'image'; its inputs are x"):
        resolve_model("fashion-cnn", [InputSpec("image", (1, 1, 28, 28))])
    with pytest.raises(UsageError, match="either with --input or with --batch"):
        resolve_model("fashion-cnn", [InputSpec("x", (1, 1, 28, 28))], batch=1)
    with pytest.raises(UsageError, match="unknown model 'resnet'"):
        resolve_model("resnet")
    with pytest.raises(UsageError, match="model file 'missing.onnx' does not exist"):
        resolve_model("missing.onnx")


def test_onnx_inputs_are_read_and_checked(onnx_file):
    with pytest.raises(UsageError, match="input 'x' has dynamic dimensions; give its shape with --input x:SHAPE"):
        resolve_model(str(onnx_file))
    source = resolve_model(str(onnx_file), [InputSpec("x", (5, 8))])
    assert source.kind == "onnx" and source.inputs == [InputSpec("ids", (2, 3), "int64"), InputSpec("x", (5, 8))]
    assert source.import_module()["main"].params[1].ty.shape[0] == 5
    for given, message in [
        (InputSpec("ids", (4, 3), "int64"), "has the fixed shape 2x3"),
        (InputSpec("ids", (2, 3), "int32"), "input 'ids' is int64, not int32"),
        (InputSpec("x", (5, 8, 1)), "has rank 2, the shape given has rank 3"),
        (InputSpec("y", (5, 8)), "has no input 'y'; its inputs are ids, x"),
    ]:
        with pytest.raises(UsageError, match=message):
            resolve_model(str(onnx_file), [given, InputSpec("x", (5, 8))] if given.name != "x" else [given])
    with pytest.raises(UsageError, match="--batch applies to the built-in models"):
        resolve_model(str(onnx_file), batch=2)


def test_a_foreign_file_is_named(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(UsageError, match="is not a readable ONNX model"):
        resolve_model(str(bad))
    other = tmp_path / "model.txt"
    other.write_text("x")
    with pytest.raises(UsageError, match="expected a .onnx or .pt2 file"):
        resolve_model(str(other))


def test_calibration_files(tmp_path):
    inputs = [InputSpec("ids", (4, 6), "int64"), InputSpec("mask", (4, 6), "int64")]
    ids = np.arange(10 * 6).reshape(10, 6)
    np.savez(tmp_path / "c.npz", ids=ids, mask=np.ones_like(ids))
    batches = load_calibration(tmp_path / "c.npz", inputs)
    assert len(batches) == 2 and batches[1]["ids"].shape == (4, 6) and batches[1]["ids"][0, 0] == 24
    from safetensors.numpy import save_file

    save_file({"ids": ids, "mask": np.ones_like(ids)}, str(tmp_path / "c.safetensors"))
    assert len(load_calibration(tmp_path / "c.safetensors", inputs)) == 2
    cases = {
        "missing.npz": "does not exist",
        "wrong_key.npz": "missing \\['mask'\\]",
        "wrong_shape.npz": "samples of shape \\(6,\\) expected",
        "few.npz": "holds 2 samples, less than one batch of 4",
        "floats.npz": "is float64, the input is int64",
    }
    np.savez(tmp_path / "wrong_key.npz", ids=ids, other=ids)
    np.savez(tmp_path / "wrong_shape.npz", ids=ids[:, :5], mask=ids[:, :5])
    np.savez(tmp_path / "few.npz", ids=ids[:2], mask=ids[:2])
    np.savez(tmp_path / "floats.npz", ids=ids.astype(float), mask=ids)
    for name, message in cases.items():
        with pytest.raises(UsageError, match=message):
            load_calibration(tmp_path / name, inputs)
