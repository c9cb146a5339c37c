"""Pretrained models that install offline, for accuracy measurements on real networks."""

from tvm_lut.models.minilm import MiniLM, MiniLMConfig, load_minilm, load_tokenizer, mean_pool, tokenize

__all__ = ["MiniLM", "MiniLMConfig", "load_minilm", "load_tokenizer", "mean_pool", "tokenize"]
