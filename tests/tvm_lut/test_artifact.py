"""The learned artifact: a round trip through every model form, and every refusal (nothing overwritten)."""

import json

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from tvm_lut import Bundle
from tvm_lut.artifact import FORMAT, FORMAT_VERSION, Artifact, ArtifactError, InputSpec, load_artifact, save_artifact
from tvm_lut.pq.table import PQTable


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    centroids = np.random.default_rng(0).standard_normal((2, 16, 4)).astype(np.float32)
    table = PQTable.from_weight(centroids, model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy())
    return model, [InputSpec("x", (3, 8))], Bundle({"fc": table}, {"made_by": "test"})


def _outputs(artifact: Artifact, x: np.ndarray) -> np.ndarray:
    executable = relax.build(artifact.import_module(), target="llvm")
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def test_torch_module_round_trip(tmp_path, tiny):
    model, inputs, bundle = tiny
    path = save_artifact(tmp_path / "out", model, inputs, bundle, source="tiny", provenance={"why": "test"},
                         extra_json={"plan.json": {"fc": "pq"}})
    artifact = load_artifact(path)
    assert artifact.manifest["format"] == FORMAT and artifact.manifest["format_version"] == FORMAT_VERSION
    assert artifact.manifest["model"]["format"] == "onnx" and artifact.manifest["source"] == "tiny"
    assert artifact.manifest["bundle"]["entries"] == {"pq": ["fc"]}
    assert artifact.inputs == inputs and list(artifact.bundle) == ["fc"]
    assert artifact.read_json("plan.json") == {"fc": "pq"} and artifact.read_json("other.json") is None
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(_outputs(artifact, x), model(torch.from_numpy(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    assert artifact.bundle.find_pq(model.fc.weight.detach().numpy()) is not None  # fingerprints survive export


@pytest.mark.parametrize("form", ["onnx_proto", "onnx_path", "pt2_path"])
def test_other_model_forms(tmp_path, tiny, form):
    import onnx

    from tvm_lut.frontend import _torch_to_onnx

    model, inputs, bundle = tiny
    x = torch.zeros(3, 8)
    if form == "pt2_path":
        given = tmp_path / "tiny.pt2"
        torch.export.save(torch.export.export(model, (x,)), given)
    else:
        given = _torch_to_onnx(model, (x,), 17)
        if form == "onnx_path":
            onnx.save(given, tmp_path / "tiny.onnx")
            given = tmp_path / "tiny.onnx"
    artifact = load_artifact(save_artifact(tmp_path / "out", given, inputs, bundle, source=form))
    assert artifact.manifest["model"]["format"] == ("torch.export" if form == "pt2_path" else "onnx")
    assert _outputs(artifact, np.ones((3, 8), np.float32)).shape == (3, 4)


def test_overwrites_its_own_format_only(tmp_path, tiny):
    model, inputs, bundle = tiny
    out = save_artifact(tmp_path / "out", model, inputs, bundle, source="first")
    save_artifact(out, model, inputs, bundle, source="second")
    assert load_artifact(out).manifest["source"] == "second"
    assert not list(tmp_path.glob(".*partial*"))


def _manifest(path, **fields):
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps(fields))
    (path / "keep.txt").write_text("user data")


@pytest.mark.parametrize("setup, message", [
    (lambda p: (p.mkdir(), (p / "cnn_pq.safetensors").write_text("old learn output")),
     "not empty and is not a tvm-lut artifact"),
    (lambda p: _manifest(p, format=FORMAT, format_version=0), "format version 0, this tvm-lut writes version 1"),
    (lambda p: _manifest(p, format="something-else"), "is not a tvm-lut-artifact directory"),
])
def test_refuses_to_overwrite(tmp_path, tiny, setup, message):
    model, inputs, bundle = tiny
    out = tmp_path / "out"
    setup(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ArtifactError, match=message):
        save_artifact(out, model, inputs, bundle, source="x")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_load_names_what_is_wrong(tmp_path, tiny):
    model, inputs, bundle = tiny
    with pytest.raises(ArtifactError, match="no artifact at"):
        load_artifact(tmp_path / "missing")
    bundle.save(tmp_path / "b.safetensors")
    with pytest.raises(ArtifactError, match="is a bundle file, not an artifact directory"):
        load_artifact(tmp_path / "b.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        load_artifact(tmp_path / "empty")
    out = save_artifact(tmp_path / "out", model, inputs, bundle, source="x")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99; this tvm-lut reads version 1"):
        load_artifact(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="model file 'model.onnx' was changed"):
        load_artifact(out)
    (out / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model file 'model.onnx' is missing"):
        load_artifact(out)


def test_save_checks_its_arguments(tmp_path, tiny):
    model, inputs, bundle = tiny
    with pytest.raises(ValueError, match="needs the model's inputs"):
        save_artifact(tmp_path / "a", model, [], bundle, source="x")
    with pytest.raises(TypeError, match="bundle must be a tvm_lut.Bundle"):
        save_artifact(tmp_path / "a", model, inputs, {"fc": None}, source="x")
    with pytest.raises(ValueError, match="extra_json names"):
        save_artifact(tmp_path / "a", model, inputs, bundle, source="x", extra_json={"../plan.json": {}})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        save_artifact(tmp_path / "a", 42, inputs, bundle, source="x")
    assert not (tmp_path / "a").exists()
