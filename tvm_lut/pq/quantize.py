"""Symmetric int8 quantization of a PQ table with an overflow-safe scale per output column.

One scale per output m, not per tensor: a transformer's tables have outlier columns (MiniLM's FFN output
projections: the largest column 325x the median one), and one shared scale rounded every other entry of such
a table to 0. The kernels multiply by the column's scale in their epilogue (a vector load of the scales
where one constant was broadcast).

The kernels add int8 table rows in int16 over blocks of up to `INT16_BLOCK` codebooks, then in int32. Whatever
the input, the codes only pick table entries, so the worst partial sum of output m over a block is
`sum_c max_k |q[c, k, m]|`. The scale of column m is the larger of `max|T[:, :, m]| / 127` (entries fit int8,
-128 unused) and the value that keeps that worst sum within int16 (and the full sum within int32), like FAISS
fast-scan's scale. With `max / 127` alone, blocks of 256 codebooks can reach 256 * 127 = 32512 < 32767, so the
second term only bites for wider blocks; it is checked, not assumed.

Works on NumPy arrays; the training loop passes the detached table's per-(c, m) maxima.
"""

from __future__ import annotations

import numpy as np

INT8_MAX = 127
INT16_BLOCK = 256
_INT16_MAX = np.iinfo(np.int16).max
_INT32_MAX = np.iinfo(np.int32).max
# The kernels' int16 blocks are safe for any int8 entries in [-127, 127] only while this holds.
assert INT16_BLOCK * INT8_MAX <= _INT16_MAX


def _block_sums(max_abs: np.ndarray, block: int) -> np.ndarray:
    """Per output, `sum_c max_abs[c, m]` over aligned blocks of `block` codebooks: (num_blocks, M)."""
    num_codebooks, out = max_abs.shape
    pad = (-num_codebooks) % block
    padded = np.concatenate([max_abs, np.zeros((pad, out), max_abs.dtype)]) if pad else max_abs
    return padded.reshape(-1, block, out).sum(axis=1)


def overflow_safe_scale(max_abs: np.ndarray, block: int = INT16_BLOCK) -> np.ndarray:
    """The per-column scales (M,) float32 for a float table whose `max_k |T[c, k, m]|` is `max_abs` (C, M).

    Rounding may add half a step per codebook, so the bounds leave `block / 2` (and `C / 2`) of headroom.
    An all-zero column gets scale 1.0 (its entries quantize to 0).
    """
    max_abs = np.asarray(max_abs, dtype=np.float64)
    if max_abs.ndim != 2:
        raise ValueError(f"max_abs must be (C, M), got shape {max_abs.shape}")
    if not np.isfinite(max_abs).all():
        raise ValueError("the PQ table contains NaN or inf; its layer's weights or centroids have diverged")
    if block > 2 * _INT16_MAX:
        raise ValueError(f"block {block} leaves no int16 headroom")
    scale = max_abs.max(axis=0, initial=0.0) / INT8_MAX
    if max_abs.size:
        scale = np.maximum(scale, _block_sums(max_abs, block).max(axis=0) / (_INT16_MAX - block / 2))
        scale = np.maximum(scale, max_abs.sum(axis=0) / (_INT32_MAX - max_abs.shape[0] / 2))
    # float32 rounding must not shrink a scale below its bound: round up where it would.
    scale32 = scale.astype(np.float32)
    scale32 = np.where(scale32 < scale, np.nextafter(scale32, np.float32(np.inf)), scale32)
    return np.where(scale32 > 0, scale32, np.float32(1.0)).astype(np.float32)


def quantize_table(table: np.ndarray, block: int = INT16_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """float (C, K, M) -> (int8 (C, K, M), scales (M,) float32) with `table ~= q * scale` and no accumulator
    overflow."""
    table = np.asarray(table, dtype=np.float32)
    if table.ndim != 3:
        raise ValueError(f"a PQ table is (C, K, M), got shape {table.shape}")
    scale = overflow_safe_scale(np.abs(table).max(axis=1, initial=0.0), block)
    q = np.clip(np.rint(table / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def accumulator_bound(table: np.ndarray, block: int = INT16_BLOCK) -> int:
    """The largest |partial sum| any input can produce in an aligned block of `block` codebooks."""
    table = np.asarray(table)
    if table.size == 0:
        return 0
    max_abs = np.abs(table.astype(np.int64)).max(axis=1)
    return int(_block_sums(max_abs, block).max())
