"""Sentiment from a frozen encoder: sentence embeddings, a logistic-regression head, and the measures that
compare an exact encoder with its LUT version.

An encoder is any callable `(input_ids, attention_mask) -> embeddings` on NumPy arrays (int64 `(B, L)` in,
float `(B, H)` out): `torch_encoder` wraps a torch module, `vm_encoder` a compiled Relax executable. The head
is trained once on the FP32 embeddings and then applied unchanged to every encoder, so an accuracy difference
is the encoder's alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

Encoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


def torch_encoder(model) -> Encoder:
    """An encoder running a torch module `model(input_ids, attention_mask)` without autograd."""
    import torch

    def encode(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()

    return encode


def vm_encoder(executable, device=None, entry: str = "main") -> Encoder:
    """An encoder calling `entry` of a compiled Relax executable (or an existing `relax.VirtualMachine`).

    The compiled function has static shapes: feed it batches of exactly the shape it was compiled for
    (`embed` pads the last batch for that reason).
    """
    import tvm
    from tvm import relax

    device = device or tvm.cpu()
    vm = executable if isinstance(executable, relax.VirtualMachine) else relax.VirtualMachine(executable, device)
    function = vm[entry]

    def encode(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = function(tvm.runtime.tensor(input_ids, device), tvm.runtime.tensor(attention_mask, device))
        if not hasattr(out, "numpy"):  # a tuple return: the embeddings come first
            out = out[0]
        return out.numpy()

    return encode


def _batches(input_ids: np.ndarray, attention_mask: np.ndarray, batch_size: int):
    """Full batches of `batch_size` rows; the last one is padded with all-padding rows. Yields (ids, mask, n_real)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise ValueError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must be equal 2-D")
    for start in range(0, len(input_ids), batch_size):
        ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
        real = len(ids)
        if real < batch_size:
            pad = ((0, batch_size - real), (0, 0))
            ids, mask = np.pad(ids, pad), np.pad(mask, pad)
        yield np.ascontiguousarray(ids), np.ascontiguousarray(mask), real


def embed(
    encoder: Encoder,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    batch_size: int = 8,
    desc: str = "embedding",
    progress: bool = True,
) -> np.ndarray:
    """Embeddings `(N, H)` float32 of all rows, computed in batches of exactly `batch_size` (progress bar)."""
    from tvm_lut.progress import progress_bar

    outputs = []
    total = -(-len(input_ids) // batch_size) if batch_size > 0 else 0
    for ids, mask, real in progress_bar(
        _batches(input_ids, attention_mask, batch_size), total=total, desc=desc, unit="batch", progress=progress
    ):
        outputs.append(np.asarray(encoder(ids, mask), dtype=np.float32)[:real])
    if not outputs:
        raise ValueError("no rows to embed")
    return np.concatenate(outputs)


def batch_latency_ms(
    encoder: Encoder, input_ids: np.ndarray, attention_mask: np.ndarray, batch_size: int = 8, repeats: int = 5
) -> float:
    """Median wall time (ms) of one call on the first batch, after one warm-up call."""
    ids, mask, _ = next(_batches(input_ids, attention_mask, batch_size))
    encoder(ids, mask)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder(ids, mask)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


# Inverse regularization strength of the head, chosen by 5-fold cross-validation on the tweet training pool
# (MiniLM-L6 embeddings, 2,000 and 4,000 tweets; C in 0.001..1): never by looking at the held-out test set.
HEAD_C = 0.01


def train_head(embeddings: np.ndarray, labels: np.ndarray, C: float = HEAD_C, seed: int = 0):
    """A logistic-regression classifier (scikit-learn, standardized features) on FP32 embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    if not np.isfinite(embeddings).all():
        raise ValueError("training embeddings contain NaN or inf")
    head = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
    return head.fit(embeddings, labels)


# An embedding feature whose spread over the head's training tweets is below this fraction of the median feature's
# is dead: MiniLM's final LayerNorm has gains of ~1e-9 (std 1e-33 over tweets in two features). StandardScaler
# divides by that std, giving weights up to 1e30 that turn any change of those features (a PQ error, a LayerNorm
# step of 1e-4 when all weights are trained) into logits of 1e4. Dead features get weight 0.
DEAD_FEATURE = 1e-4


def live_features(embeddings: np.ndarray) -> np.ndarray:
    """Boolean mask (H,) of the embedding features that vary over `embeddings` (N, H): fit `train_head` on those."""
    spread = embeddings.std(axis=0)
    return spread > DEAD_FEATURE * np.median(spread)


def train_live_head(embeddings: np.ndarray, labels: np.ndarray):
    """(live feature mask, `train_head` on those features): apply the head to `embeddings[:, live]`."""
    live = live_features(embeddings)
    return live, train_head(embeddings[:, live], labels)


def accuracy(head, embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows the head labels correctly (a non-finite embedding counts as wrong)."""
    if len(embeddings) != len(labels) or len(labels) == 0:
        raise ValueError(f"need as many embeddings as labels, and some: {len(embeddings)} vs {len(labels)}")
    finite = np.isfinite(embeddings).all(axis=1)
    predictions = np.full(len(labels), -1)
    if finite.any():
        predictions[finite] = head.predict(embeddings[finite])
    return float(np.mean(predictions == labels))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two embedding sets of the same shape (NaN where a row is zero or not finite)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embedding sets must have the same 2-D shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, np.sum(a * b, axis=1) / norms, np.nan)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row-wise cosine; a NaN row (zero or non-finite) makes the mean NaN, so it cannot pass a threshold."""
    return float(np.mean(cosines(a, b)))
