"""LUT-NN kernels for a few rows (a dense layer at batch 1): vectors across centroids and outputs, not rows.

`pq_encode` and `pq_lookup` put rows in SIMD lanes, 32 or 64 at a time, the layout the shuffle lookup needs. A layer
with fewer rows than that pays for the padded ones: at one row, the CNN's fc1 (576 -> 128, V=4) took 5.9 us to
encode and 7.8 us to look up, where its exact matrix-vector product takes 2.6 us. Here each row is encoded with
the K centroid distances of a codebook in one vector, and looked up by adding, per codebook, the table row of its
code: M int8 entries, contiguous in the bundle's (C, K, M) layout, widened to int32. Same results as the row
kernels: `pq_encode_reference` (the same centered distances, the first minimum, code 0 for a sub-vector that is
not finite) and `pq_lookup_reference` (exact integer sums, then `float32(acc) * scale + bias`).
"""

import numpy as np
import tvm
from tvm.script import tirx as T

from .pq_encode import centered_records, record_length, record_offsets, record_parts
from .pq_lookup import output_tile

# The lookup's accumulators: the largest divisor of M up to this many int32 lanes (four AVX-512 registers).
MAX_OUTPUT_VECTOR = 64


def pack_centroids_by_dim(centroids: np.ndarray) -> np.ndarray:
    """centroids (C, K, V) -> float32 (C, R): `pq_encode.centered_records` with the weights dim-major (v * K + k),
    so that the K distances of one codebook update as one vector per dim."""
    centroids = np.asarray(centroids, np.float32)
    if centroids.ndim != 3:
        raise ValueError(f"centroids must be (C, K, V), got shape {centroids.shape}")
    _, num_centroids, sub_len = centroids.shape
    records = centered_records(centroids)
    weights, _, _ = record_parts(records, num_centroids, sub_len)
    weights[...] = weights.transpose(0, 2, 1).reshape(weights.shape)  # the same slot, dim-major (reshape copies)
    return records


def pq_encode_rows_func(rows: int, codebooks: int, centroids: int, sub_len: int) -> tvm.tirx.PrimFunc:
    """`(x (N, C*V), centroids (C, R) from pack_centroids_by_dim) -> codes (N, C) int32`, scheduled
    (`tirx.is_scheduled`); the distances as `pq_encode`'s, `||c'||^2 + (x - m) . (-2 c')`."""
    features = codebooks * sub_len
    record = record_length(centroids, sub_len)
    mean_at, norms_at = record_offsets(centroids, sub_len)

    @T.prim_func
    def pq_encode_rows(x: T.Buffer((rows, features), "float32"),
                       table_centroids: T.Buffer((codebooks, record), "float32"),
                       codes: T.Buffer((rows, codebooks), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "tvm_lut.kernel": "pq_encode_rows"})
        for n, c in T.grid(rows, codebooks):
            dist = T.alloc_local((centroids,), "float32")
            best = T.alloc_local((1,), "float32")
            best_k = T.alloc_local((1,), "int32")
            for k in T.vectorized(centroids):
                dist[k] = table_centroids[c, norms_at + k]
            for v in range(sub_len):
                for k in T.vectorized(centroids):
                    dist[k] = dist[k] + (x[n, c * sub_len + v] - table_centroids[c, mean_at + v]) * table_centroids[
                        c, v * centroids + k]
            best[0] = T.float32("inf")
            best_k[0] = 0
            for k in range(centroids):  # the first minimum; a NaN or +inf distance never wins
                best_k[0] = T.Select(dist[k] < best[0], k, best_k[0])
                best[0] = T.Select(dist[k] < best[0], dist[k], best[0])
            codes[n, c] = T.Select(best[0] == T.float32("-inf"), 0, best_k[0])  # not finite: code 0

    return pq_encode_rows


def pq_lookup_rows_func(rows: int, codebooks: int, centroids: int, outputs: int) -> tvm.tirx.PrimFunc:
    """`(codes (N, C) int32, table (C, K, M) int8, scale (M,), bias (M,)) -> y (N, M)`, scheduled."""
    chunk = output_tile(outputs, MAX_OUTPUT_VECTOR)

    @T.prim_func
    def pq_lookup_rows(codes: T.Buffer((rows, codebooks), "int32"),
                       table: T.Buffer((codebooks, centroids, outputs), "int8"),
                       scale: T.Buffer((outputs,), "float32"), bias: T.Buffer((outputs,), "float32"),
                       y: T.Buffer((rows, outputs), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "tvm_lut.kernel": "pq_lookup_rows"})
        for n, mo in T.grid(rows, outputs // chunk):
            acc = T.alloc_local((chunk,), "int32")
            for m in T.vectorized(chunk):
                acc[m] = 0
            for c in range(codebooks):
                for m in T.vectorized(chunk):
                    acc[m] = acc[m] + T.Cast("int32", table[c, codes[n, c], mo * chunk + m])
            for m in T.vectorized(chunk):
                y[n, mo * chunk + m] = T.Cast("float32", acc[m]) * scale[mo * chunk + m] + bias[mo * chunk + m]

    return pq_lookup_rows
