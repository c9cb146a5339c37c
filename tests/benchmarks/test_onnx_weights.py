"""benchmarks.helpers.onnx_weights and end_to_end's `--bundle MODEL=OUT_DIR`: the learned weights come back from an
artifact's ONNX model bit for bit (folded Linear transposes and MiniLM's embedding constants included), and a
misread or foreign model fails naming what is wrong."""

import numpy as np
import pytest
import torch

from benchmarks import end_to_end
from benchmarks.helpers.onnx_weights import load_onnx_weights
from tvm_lut.artifact import load_artifact, save_artifact
from tvm_lut.bundle import Bundle
from tvm_lut.model_spec import InputSpec
from tvm_lut.models.cnn import FashionCNN
from tvm_lut.models.minilm import MiniLM, MiniLMConfig

TINY = MiniLMConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=16)
TOKENS = [InputSpec("input_ids", (2, 8), "int64"), InputSpec("attention_mask", (2, 8), "int64")]


def _trained(model, seed: int):
    """`model` with every parameter moved (as training would), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _artifact(tmp_path, model, inputs):
    return load_artifact(save_artifact(tmp_path / "art", model, inputs, Bundle(), source="test"))


def test_minilm_weights_come_back_from_the_artifacts_onnx(tmp_path):
    torch.manual_seed(0)
    trained = _trained(MiniLM(TINY), seed=1)
    artifact = _artifact(tmp_path, trained, TOKENS)
    torch.manual_seed(2)
    fresh = MiniLM(TINY).eval()
    unread = {name: tensor.clone() for name, tensor in fresh.state_dict().items()}
    loaded = load_onnx_weights(fresh, artifact.model_path, artifact.inputs).state_dict()
    for name, tensor in trained.state_dict().items():
        if name == "embeddings.position_embeddings.weight":  # rows past 8 tokens are not in an 8-token export
            assert torch.equal(loaded[name][:8], tensor[:8]) and torch.equal(loaded[name][8:], unread[name][8:])
        elif name == "embeddings.token_type_embeddings.weight":  # the model reads row 0 only
            assert torch.equal(loaded[name][0], tensor[0]) and torch.equal(loaded[name][1], unread[name][1])
        else:
            assert torch.equal(loaded[name], tensor), name


def test_cnn_weights_come_back_from_the_artifacts_onnx(tmp_path):
    torch.manual_seed(0)
    trained = _trained(FashionCNN(), seed=1)
    artifact = _artifact(tmp_path, trained, [InputSpec("input", (1, 1, 28, 28), "float32")])
    loaded = load_onnx_weights(FashionCNN().eval(), artifact.model_path, artifact.inputs).state_dict()
    for name, tensor in trained.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


def test_a_model_of_another_architecture_names_the_weights_it_lacks(tmp_path):
    artifact = _artifact(tmp_path, FashionCNN().eval(), [InputSpec("input", (1, 1, 28, 28), "float32")])
    with pytest.raises(ValueError, match="no weights found for .*encoder.layer.0"):
        load_onnx_weights(MiniLM(TINY).eval(), artifact.model_path, artifact.inputs)


def test_a_module_that_computes_something_else_fails_the_onnx_runtime_check(tmp_path):
    artifact = _artifact(tmp_path, _trained(MiniLM(TINY, output="tokens"), seed=1), TOKENS)
    with pytest.raises(ValueError, match="differs from ONNX Runtime"):
        load_onnx_weights(MiniLM(TINY, output="sentence").eval(), artifact.model_path, artifact.inputs)


def test_end_to_end_reads_an_artifact_directory(tmp_path, monkeypatch):
    torch.manual_seed(0)
    trained = _trained(MiniLM(TINY), seed=1)
    directory = save_artifact(tmp_path / "art", trained, TOKENS, Bundle(), source="test")
    monkeypatch.setattr(end_to_end, "fresh_model", lambda family: MiniLM(TINY).eval())
    bundle, model = end_to_end.learned("minilm", directory, None)
    assert any(entry.kind == "pwl" for _, entry in bundle.items())  # PQ tables only: the shipped NN-LUT tables join
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 1000, (1, 8)))
    mask = torch.ones(1, 8, dtype=torch.int64)
    with torch.no_grad():  # another batch than the export's, the reason the torch module is rebuilt
        assert torch.equal(model(ids, mask), trained(ids, mask))


def test_end_to_end_refuses_weights_beside_an_artifact_and_a_missing_path(tmp_path, capsys):
    (tmp_path / "art").mkdir()
    with pytest.raises(SystemExit):
        end_to_end.main(["--bundle", f"minilm={tmp_path / 'art'}", "--pq-weights", "minilm=w.safetensors"])
    assert "holds its weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        end_to_end.main(["--bundle", f"minilm={tmp_path / 'none'}"])
    assert "no such file or directory" in capsys.readouterr().err
