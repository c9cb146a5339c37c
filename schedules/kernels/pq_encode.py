"""LUT-NN encode kernel: the nearest centroid of every sub-vector, written in the lookup kernel's code layout.

`codes[n, c] = argmin_k ||x[n, c*V:(c+1)*V] - centroids[c, k]||^2`, in float32 as `||c'_k||^2 + x' . (-2 c'_k)`
with m the mean of the codebook's centroids, `c'_k = c_k - m` and `x' = x - m` (the term `||x'||^2` is the same
for every k). One FMA per term where the direct form `sum (x - c)^2` takes a subtraction and an FMA: MiniLM's
encodes took 14-16 % less time (512 x 384 at V = 16: 112 against 132 us; 64 x 384: 10.5 against 12.3 us; 512 x 1536:
431 against 516 us; one thread, AMD EPYC znver4, the two forms interleaved in one process). Centering keeps what
made the uncentered form `||c||^2 - 2 x . c` cancel badly (an offset common to x and the centroids, large against
the distances between centroids: on MiniLM-L6 with learned tables it once flipped enough near-tie codes that one
sentence in 16 differed from the PyTorch reference by 4e-3) out of the sum: over the 5.3 M codes of 64 tweets
through all 36 layers of a learned V = 16 bundle, neither form flipped a code against float64 distances.
Centroids are packed once at compile time by `pack_centroids` into one record per codebook (`centered_records`:
the weights `-2 c'_k`, m, and the norms `||c'_k||^2`), zero-padded to the lookup layout's CP codebooks (padded
codebooks get code 0 and zero tables).

Semantics at the edges (also the NumPy reference's): ties go to the lowest k; a NaN distance never wins; a
sub-vector holding NaN or +-inf reaches no finite distance and gets code 0, as in the PyTorch reference (so does a
finite one so huge, |x| ~ 1e37, that a product overflows to -inf). Huge finite inputs otherwise keep their nearest
centroid: no square is formed to overflow.

Schedule (written into the function, which is marked `tirx.is_scheduled`): row blocks in parallel, each split
into ranges of codebooks when there are fewer blocks than threads (MiniLM at one sentence is one block of 64 rows,
whose encodes, a third of its time, ran on one thread of two); per codebook,
the `L x V` slice of x, minus m as it is read, moves into a transposed local tile (rows in lanes; rows past N repeat
row N-1): for dense
rows with V a multiple of 16 by 16 x 16 shuffle transposes of contiguous row loads (strided gathers cost 40%
of the kernel at V = 16; at V = 32 they made MiniLM's 512 x 384 encode 1.5x slower than V = 16's),
for conv patches by vector loads from the transposed patch matrix built first (element by element, with the
index arithmetic and border test per element, it took 86 of the CNN's 3x3 conv encode's 37 us), otherwise
element by element (other V). Then every
centroid's distances to the L rows are accumulated with vector FMAs, four centroids at a time (independent
chains hide the FMA latency), and the running minimum and its index are updated with vector selects (no branches).
While it does, the next codebook's record is prefetched, a share per step (MiniLM reads each layer's
centroids once per inference: at one sentence the whole 1x64 model took 3.6-3.8 % less CPU time, 2.14 -> 2.06 and
2.42 -> 2.33 ms, 8x64 unchanged; AMD EPYC znver4).
The output is one L-byte vector of codes per row block and codebook; in the dot-product lookup's layout, one
64-byte vector per 16 rows and group of 4 codebooks, assembled in int32 lanes (a byte store per row and codebook,
64 `vpextrb` with their address arithmetic, was 6-11 % of MiniLM's encodes).
"""

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..intrin import TABLE_ENTRIES
from .pq_lookup import LookupLayout
from .pq_lookup_dot import BYTES, GROUP, DotLookupLayout
from .prefetch import prefetch
from .pwl import PARALLEL_WORK_ATTR
from .transpose16 import HALF, SQUARE, transpose_16x16


FLOATS_PER_LINE = 16  # float32 in a 64-byte cache line


@dataclass(frozen=True)
class Im2col:
    """The rows of a conv2d (NCHW input, OIHW kernel): one per output pixel `(b, oh, ow)`, each the input patch
    flattened in the kernel's `(I, kh, kw)` order (zero outside the padded border). The encode kernel first builds
    the patch matrix transposed, a row per feature, from a zero-padded copy of the input, with vector copies along
    output rows."""

    input_shape: tuple[int, int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)

    @property
    def output_hw(self) -> tuple[int, int]:
        _, _, height, width = self.input_shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        top, left, bottom, right = self.padding
        return ((height + top + bottom - dh * (kh - 1) - 1) // sh + 1,
                (width + left + right - dw * (kw - 1) - 1) // sw + 1)

    @property
    def rows(self) -> int:
        out_h, out_w = self.output_hw
        return self.input_shape[0] * out_h * out_w

    @property
    def features(self) -> int:
        return self.input_shape[1] * self.kernel[0] * self.kernel[1]


@dataclass(frozen=True)
class DenseRows:
    """The rows of a dense layer's input (N, D), read as they are."""

    rows: int
    features: int

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.rows, self.features)


def record_length(num_centroids: int, sub_len: int) -> int:
    """Floats in one codebook's packed record (`pack_centroids`): K * V weights, V means and K norms, in whole
    cache lines."""
    return -(-(num_centroids * sub_len + sub_len + num_centroids) // FLOATS_PER_LINE) * FLOATS_PER_LINE


def record_offsets(num_centroids: int, sub_len: int) -> tuple[int, int]:
    """Where a record's V means and K norms start (its K * V weights start at 0)."""
    return num_centroids * sub_len, num_centroids * sub_len + sub_len


def record_parts(records: np.ndarray, num_centroids: int, sub_len: int):
    """(weights (C, K, V) as packed k-major, means (C, V), norms (C, K)): views of `centered_records`' records."""
    mean_at, norms_at = record_offsets(num_centroids, sub_len)
    return (records[:, :mean_at].reshape(len(records), num_centroids, sub_len), records[:, mean_at:norms_at],
            records[:, norms_at:norms_at + num_centroids])


def centered_records(centroids: np.ndarray) -> np.ndarray:
    """centroids (C, K, V) -> float32 (C, R) records (module docstring): per codebook, with m the mean of its
    centroids and c'_k = c_k - m, the weights -2 c'_k (k-major), then m, then ||c'_k||^2, zero-padded to R."""
    centroids = np.asarray(centroids, np.float32)
    num_codebooks, num_centroids, sub_len = centroids.shape
    mean = centroids.mean(axis=1, dtype=np.float32)
    centered = centroids - mean[:, None, :]
    records = np.zeros((num_codebooks, record_length(num_centroids, sub_len)), np.float32)
    weights, means, norms = record_parts(records, num_centroids, sub_len)
    weights[...] = np.float32(-2) * centered
    means[...] = mean
    norms[...] = (centered * centered).sum(-1, dtype=np.float32)
    return records


def pack_centroids(centroids: np.ndarray, layout: LookupLayout) -> np.ndarray:
    """centroids (C, K, V) -> float32 (CP, R): their `centered_records`, zero-padded to the layout's CP codebooks."""
    centroids = np.asarray(centroids)
    if centroids.ndim != 3 or centroids.shape[:2] != (layout.codebooks, layout.centroids):
        raise ValueError(f"centroids must be (C, K, V) with (C, K) = {(layout.codebooks, layout.centroids)}, "
                         f"got {centroids.shape}")
    if not np.isfinite(centroids).all():
        raise ValueError("centroids contain NaN or inf")
    records = centered_records(centroids)
    padded = np.zeros((layout.padded_codebooks, records.shape[1]), np.float32)
    padded[:layout.codebooks] = records
    return padded


def pq_encode_reference(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """NumPy reference: x (N, C*V) float32, centroids (C, K, V) -> codes (N, C) int64, the kernel's float32 order.

    Rounding can still differ from the kernel by an FMA; compare with a tolerance on near-ties (see the tests).
    """
    x = np.asarray(x, np.float32)
    centroids = np.asarray(centroids, np.float32)
    num_codebooks, num_centroids, sub_len = centroids.shape
    weights, mean, norms = record_parts(centered_records(centroids), num_centroids, sub_len)
    with np.errstate(invalid="ignore", over="ignore"):
        subs = x.reshape(x.shape[0], num_codebooks, sub_len) - mean  # (N, C, V)
        dist = np.broadcast_to(norms, subs.shape[:2] + (num_centroids,))  # (N, C, K)
        for v in range(sub_len):
            dist = dist + subs[:, :, v, None] * weights[None, :, :, v]
    dist = np.where(np.isnan(dist), np.float32(np.inf), dist)
    codes = dist.argmin(-1)  # the first minimum: ties go to the lowest k, all +inf (or NaN) to 0
    return np.where(dist.min(-1) == -np.inf, 0, codes).astype(np.int64)


def pq_encode_func(layout: LookupLayout | DotLookupLayout, sub_len: int,
                   source: DenseRows | Im2col | None = None, threads: int = 1) -> tvm.tirx.PrimFunc:
    """The scheduled encode PrimFunc `(x, centroids (CP, K, V)) -> codes`: (NB, CP, L) uint8 for a `LookupLayout`,
    the dot-product lookup's (NG, CG, 64) for a `DotLookupLayout`.

    `source` says how rows are read from `x`: `DenseRows` (the default, x is (N, C*V)) or `Im2col` (x is a conv's
    NCHW input); its rows and features must be the layout's N and C * V. `threads`: the threads it will run on
    (the target's `num-cores`), which fewer row blocks than threads split by codebooks.
    """
    if not isinstance(sub_len, (int, np.integer)) or sub_len < 1:
        raise ValueError(f"sub-vector length V must be a positive int, got {sub_len!r}")
    if not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    num_rows, lanes, num_centroids = layout.rows, layout.lanes, layout.centroids
    features = layout.codebooks * sub_len
    source = source if source is not None else DenseRows(num_rows, features)
    if (source.rows, source.features) != (num_rows, features):
        raise ValueError(f"{source} gives {source.rows} rows of {source.features} features; the layout needs "
                         f"{num_rows} rows of C * V = {features}")
    padded = layout.padded_codebooks
    dot = isinstance(layout, DotLookupLayout)  # the codes in `pq_lookup_dot`'s layout, else in `pq_lookup`'s
    groups_per_block = lanes // SQUARE
    transpose_in_registers = (isinstance(source, DenseRows) and sub_len % SQUARE == 0 and lanes % SQUARE == 0)
    group = next(g for g in (4, 2, 1) if num_centroids % g == 0)
    record = record_length(num_centroids, sub_len)
    mean_at, norms_at = record_offsets(num_centroids, sub_len)
    centroid_lines = record // FLOATS_PER_LINE  # cache lines of one codebook's record
    lines_per_step = -(-centroid_lines // (num_centroids // group))
    # Each row block's codebooks in `parts` ranges, so that `threads` threads have a task each (one range when the
    # row blocks alone are enough: a task allocates its four local buffers, a workspace call each, ~0.2 us a task).
    # Units of work: codebooks, or in the dot layout groups of GROUP codebooks (their codes are one vector store).
    per_unit = GROUP if dot else 1
    units = -(-layout.codebooks // per_unit)
    per_part = -(-units // min(units, -(-threads // max(layout.row_blocks, 1))))
    parts = -(-units // per_part)
    offsets = sum(j * TABLE_ENTRIES << 8 * j for j in range(GROUP))  # codebook j's codes start at 16 j

    im2col = isinstance(source, Im2col)
    if im2col:
        batch, channels, height, width = source.input_shape
        (kernel_h, kernel_w), (stride_h, stride_w) = source.kernel, source.stride
        dilation_h, dilation_w = source.dilation
        top, left, bottom, right = source.padding
        padded_shape = (batch, channels, height + top + bottom, width + left + right)
        out_h, out_w = source.output_hw

    @T.macro
    def nearest_centroids(x, centroids, patches, block, c, best_k):
        """best_k[i] = the nearest centroid of codebook c to row i of the block (module docstring)."""
        tile = T.alloc_local((sub_len, lanes), "float32")
        dist = T.alloc_local((group, lanes), "float32")
        best = T.alloc_local((lanes,), "float32")
        # Rows past N repeat row N-1 (conv patches: zeros): their codes are computed but never used.
        if transpose_in_registers:  # 16 x 16 blocks transposed by shuffles (`transpose16`)
            for half, square in T.grid(lanes // SQUARE, sub_len // SQUARE):
                head = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
                tail = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
                scratch_head = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
                scratch_tail = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
                for r in T.unroll(HALF):
                    head[r, T.ramp(0, 1, SQUARE)] = x[T.min(block * lanes + half * SQUARE + r, num_rows - 1),
                                                     T.ramp(c * sub_len + square * SQUARE, 1, SQUARE)] - centroids[
                                                         c, T.ramp(mean_at + square * SQUARE, 1, SQUARE)]
                    tail[r, T.ramp(0, 1, SQUARE)] = x[T.min(block * lanes + half * SQUARE + HALF + r, num_rows - 1),
                                                     T.ramp(c * sub_len + square * SQUARE, 1, SQUARE)] - centroids[
                                                         c, T.ramp(mean_at + square * SQUARE, 1, SQUARE)]
                transpose_16x16(head, tail, scratch_head, scratch_tail, tile, square * SQUARE, half * SQUARE)
        elif im2col:
            for v in range(sub_len):
                for i in T.vectorized(lanes):
                    tile[v, i] = patches[c * sub_len + v, block * lanes + i] - centroids[c, mean_at + v]
        else:
            for i, v in T.grid(lanes, sub_len):
                tile[v, i] = x[T.min(block * lanes + i, num_rows - 1), c * sub_len + v] - centroids[c, mean_at + v]
        for i in T.vectorized(lanes):
            best[i] = T.float32("inf")
            best_k[i] = 0
        # `group` centroids at a time: independent FMA chains hide the FMA latency.
        for k_outer in range(num_centroids // group):
            for line in T.unroll(lines_per_step):  # the next codebook's centroids, a share of them per step
                if k_outer * lines_per_step + line < centroid_lines:
                    prefetch(T.address_of(centroids[T.min(c + 1, padded - 1),
                                                    (k_outer * lines_per_step + line) * FLOATS_PER_LINE]))
            for k_inner in T.unroll(group):
                for i in T.vectorized(lanes):
                    dist[k_inner, i] = centroids[c, norms_at + k_outer * group + k_inner]
            for v in range(sub_len):
                for k_inner in T.unroll(group):
                    for i in T.vectorized(lanes):  # one FMA: x' times -2 c'
                        dist[k_inner, i] = dist[k_inner, i] + tile[v, i] * centroids[
                            c, (k_outer * group + k_inner) * sub_len + v]
            for k_inner in T.unroll(group):
                for i in T.vectorized(lanes):
                    best_k[i] = T.Select(dist[k_inner, i] < best[i], k_outer * group + k_inner, best_k[i])
                    best[i] = T.Select(dist[k_inner, i] < best[i], dist[k_inner, i], best[i])
        for i in T.vectorized(lanes):  # a sub-vector that is not finite reaches no finite distance: code 0
            best_k[i] = T.Select(best[i] == T.float32("-inf"), 0, best_k[i])

    @T.prim_func
    def pq_encode(x: T.Buffer(source.input_shape, "float32"),
                  centroids: T.Buffer((padded, record), "float32"),
                  codes: T.Buffer(layout.codes_shape, "uint8")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "tvm_lut.kernel": "pq_encode",
                     PARALLEL_WORK_ATTR: num_rows * layout.codebooks * num_centroids * sub_len})
        # The transposed patch matrix (one element, unused, for dense rows: the main loop reads it at function scope)
        patches = T.alloc_buffer((features if im2col else 1, layout.row_blocks * lanes if im2col else 1), "float32")
        if im2col:  # the patch matrix, transposed: one row per feature, contiguous over output pixels
            padded_x = T.alloc_buffer(padded_shape, "float32")
            for b, ch, h, w in T.grid(*padded_shape):
                padded_x[b, ch, h, w] = T.float32(0)
            for b, ch, h in T.grid(batch, channels, height):
                for w in T.vectorized(width):
                    padded_x[b, ch, h + top, w + left] = x[b, ch, h, w]
            for b, ch, kh, kw, oh in T.grid(batch, channels, kernel_h, kernel_w, out_h):
                for ow in T.vectorized(out_w):
                    patches[(ch * kernel_h + kh) * kernel_w + kw, (b * out_h + oh) * out_w + ow] = padded_x[
                        b, ch, oh * stride_h + kh * dilation_h, ow * stride_w + kw * dilation_w]
            for f, r in T.grid(features, layout.row_blocks * lanes - num_rows):
                patches[f, num_rows + r] = T.float32(0)  # rows past N: codes computed, never used
        for task in T.parallel(layout.row_blocks * parts):
            block = T.meta_var(task // parts)
            for unit in range(task % parts * per_part, T.min(task % parts * per_part + per_part, units)):
                # dot layout: the codes of a 16-row group and 4-codebook group as 16 int32 lanes (row r's bytes
                # 4 r + j = code + 16 j, little-endian), OR-ed together and stored as one 64-byte vector
                packed = T.alloc_buffer((lanes,), "int32", scope="global")
                if dot:
                    for i in T.vectorized(lanes):
                        packed[i] = T.int32(offsets)
                for j in range(per_unit):
                    c = T.meta_var(unit * per_unit + j)
                    if c < layout.codebooks:  # a dot layout's codebooks past C: code 0 (the offset alone)
                        best_k = T.alloc_local((lanes,), "int32")
                        nearest_centroids(x, centroids, patches, block, c, best_k)
                        if dot:
                            for i in T.vectorized(lanes):
                                packed[i] = packed[i] | T.shift_left(best_k[i], j * 8)
                        else:
                            for i in T.vectorized(lanes):
                                codes[block, c, i] = T.Cast("uint8", best_k[i])
                if dot:
                    for g in range(groups_per_block):
                        codes[block * groups_per_block + g, unit, T.ramp(0, 1, BYTES)] = T.reinterpret(
                            f"uint8x{BYTES}", packed[T.ramp(g * SQUARE, 1, SQUARE)])
        if not dot:
            for block, extra, i in T.grid(layout.row_blocks, padded - layout.codebooks, lanes):  # code 0
                codes[block, layout.codebooks + extra, i] = T.uint8(0)

    return pq_encode
