"""Fixtures the pass tests share."""

import pytest


@pytest.fixture(scope="module")
def tiny_bert():
    """A one-layer, two-head MiniLM with random weights and a (2, 8) batch whose second row is padded."""
    import torch

    from tvm_lut.models.minilm import MiniLM, MiniLMConfig

    tiny = MiniLMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    model = MiniLM(tiny, output="tokens").eval()
    ids = torch.randint(1, tiny.vocab_size, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 6:] = 0
    return model, (ids, mask)
