"""LUT-NN lookup-accumulate on AVX-512 VBMI + VNNI: `vpermb` looks up 4 codebooks for 16 rows at once, `vpdpbusd`
adds each row's 4 entries into its int32 accumulator. Same result as `pq_lookup` (`pq_lookup_reference`: exact
integer sums, then `float32(acc) * scale + bias`) in about a third of the instructions.

The `vpshufb` kernel (`pq_lookup`) spends, per 64 lookups, a table broadcast, the shuffle, two sign extensions to
int16 and two adds. Here a 64-byte register holds the 16-entry tables of 4 codebooks (`vpermb` indexes 64 bytes),
the codes of one row for those 4 codebooks sit in adjacent bytes with codebook j's code offset by 16 j, and
`vpdpbusd(acc, ones, looked_up)` sums each 4-byte group into the row's int32 lane: two instructions per 64 lookups,
no widening, no int16 blocks (int32 cannot overflow below 2^24 codebooks).

Layouts (`DotLookupLayout`; codes written so by `pq_encode`, the table packed once by `pack_table_dot`):
- codes (NG, CG, 64) uint8: group of 16 rows, group of 4 codebooks; byte 4 r + j = code[16 g + r, 4 cg + j] + 16 j.
  Codebooks past C (CG = ceil(C / 4)) have code 0 and zero tables.
- table (M / 16, CG, 16, 64) int8: per tile of 16 outputs and codebook group, each output's 64 bytes
  `table[4 cg + j, k, m]` at byte 16 j + k (zero for k >= K and past C): a tile's tables for one group are 1 KB.
- y (N, M) float32; with an `activation` table (a dense layer followed by NN-LUT's GELU), `table(y)` instead:
  the epilogue applies it to the 16 x 16 block in registers, bit for bit the lookup then the elementwise table
  kernel (`pwl_reference` of `pq_lookup_reference`), without writing y and reading it back (MiniLM at one sentence:
  the intermediate layer's 64 x 1536 outputs).

Schedule (in the function, `tirx.is_scheduled`): row parts x output tiles x row groups in parallel. The row groups
are split into one contiguous part per thread (`row_parts`; TVM hands thread p the p-th contiguous range of a
parallel loop), so each thread writes the rows that the next kernels (LayerNorm, the encodes, the attention
matmuls, which all split by rows) read on the same thread: with output tiles outermost, each thread wrote half the
columns of every row, and every row then crossed between the threads' caches (still the order of `split_outputs`,
for the outputs that attention at one sequence reads by heads, i.e. by columns). Within its part a thread walks the
output tiles, each down its row groups (inner, so a tile's tables stay in L1); even parts walk their groups last to
first, odd parts first to last, so that no sweep runs toward its neighbour's rows: the hardware prefetcher, trained
on a sweep's row stride, fetched past the end of the part into the rows the other thread was writing at that moment
(both sweep in step). MiniLM 8x64's 512 x 384 -> 1536 lookup at two threads (AMD EPYC znver4; one L3 / two dies
of the host): plain row parts 156-160 / 389-481 us, mirrored 110 / 110 us, output tiles outermost 108 / 126 us.
Every row group of a tile prefetches its share of the next tile's tables into L2
(`prefetch`; with the tables flushed from cache, prefetching MiniLM's 64 x 384 -> 1536 lookup took it from 85 to
68 us, 39 us warm; spreading the prefetches over the row groups instead of issuing them all in the first made the
whole 1x64 model 5-6 % faster at one thread, 2.10 -> 1.99 and 2.63 -> 2.46 ms of CPU time, 8x64 16.52 -> 16.27 ms;
AMD EPYC znver4); 16 int32x16 accumulators, one per output, walk the codebook groups; the epilogue
scales them (one FMA per output) and transposes the 16 x 16 block in registers (`transpose16`) into 16 rows of y.
Needs M % 16 == 0 and a target with avx512vbmi and avx512vnni (`dot_lookup_supported`); otherwise `pq_lookup`.
"""

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import target_has_features

from ..intrin import TABLE_ENTRIES
from .pq_lookup import SPLIT_ATTR, PQLayerSizes
from .prefetch import prefetch
from .pwl import PARALLEL_WORK_ATTR
from .pwl_expr import PWLSpec, Table, evaluate
from .transpose16 import HALF, SQUARE, transpose_16x16

GROUP = 4  # codebooks per vpermb (4 x 16 entries = 64 bytes)
BYTES = GROUP * TABLE_ENTRIES
FEATURES = ("avx512vbmi", "avx512vnni")
# The encode's row block beside this kernel: on AVX-512, 64 rows (four zmm per centroid) encoded MiniLM's 512 x 384
# rows in 98 us against 108 us at 32 (AMD EPYC znver4). With fewer rows than a block of 64 for every thread, blocks
# of 32 (`encode_lanes`): the encode then splits by rows as this kernel does, where whole blocks split it by
# codebooks and every thread read codes of every row (MiniLM 1x64 at two threads: 3 % faster with both vCPUs on one
# L3, 13 % on two dies).
ENCODE_LANES = 64
SMALL_ENCODE_LANES = 32


def encode_lanes(rows: int, threads: int) -> int:
    """The encode's row block for `rows` rows on `threads` threads (see ENCODE_LANES)."""
    return ENCODE_LANES if rows >= ENCODE_LANES * threads else SMALL_ENCODE_LANES


def dot_lookup_supported(target: Target, outputs: int) -> bool:
    """Whether `target` runs this kernel (x86 with AVX-512 VBMI and VNNI) and M is a multiple of 16."""
    if target.kind.name != "llvm" or outputs % SQUARE:
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    return (not triple or triple.startswith("x86_64")) and bool(target_has_features(list(FEATURES), target))


@dataclass(frozen=True)
class DotLookupLayout(PQLayerSizes):
    """This kernel's operands (module docstring) for one PQ layer's sizes; `lanes` is the encode kernel's row block
    (a multiple of 16)."""

    def __post_init__(self):
        super().__post_init__()
        if self.outputs % SQUARE or self.lanes % SQUARE:
            raise ValueError(f"M = {self.outputs} and lanes = {self.lanes} must be multiples of {SQUARE}")

    @property
    def row_groups(self) -> int:
        return self.row_blocks * self.lanes // SQUARE

    @property
    def codebook_groups(self) -> int:
        return -(-self.codebooks // GROUP)

    @property
    def padded_codebooks(self) -> int:
        return self.codebook_groups * GROUP

    @property
    def codes_shape(self) -> tuple[int, int, int]:
        return (self.row_groups, self.codebook_groups, BYTES)

    @property
    def table_shape(self) -> tuple[int, int, int, int]:
        return (self.outputs // SQUARE, self.codebook_groups, SQUARE, BYTES)


def pack_codes_dot(codes: np.ndarray, layout: DotLookupLayout) -> np.ndarray:
    """codes (N, C) in [0, K) -> the kernel's (NG, CG, 64) uint8 (what `pq_encode` writes for this layout)."""
    codes = np.asarray(codes)
    if codes.shape != (layout.rows, layout.codebooks):
        raise ValueError(f"codes must be {(layout.rows, layout.codebooks)}, got {codes.shape}")
    full = np.zeros((layout.row_groups * SQUARE, layout.padded_codebooks), np.uint8)
    full[:layout.rows, :layout.codebooks] = codes
    full += (np.arange(layout.padded_codebooks) % GROUP * TABLE_ENTRIES).astype(np.uint8)
    grouped = full.reshape(layout.row_groups, SQUARE, layout.codebook_groups, GROUP)
    return np.ascontiguousarray(grouped.transpose(0, 2, 1, 3).reshape(layout.codes_shape))


def pack_table_dot(table: np.ndarray, layout: DotLookupLayout) -> np.ndarray:
    """(C, K, M) int8 -> (M / 16, CG, 16, 64) int8, zero-padded in K and C (see the module docstring)."""
    table = np.asarray(table)
    expected = (layout.codebooks, layout.centroids, layout.outputs)
    if table.dtype != np.int8 or table.shape != expected:
        raise ValueError(f"table must be int8 {expected}, got {table.dtype} {table.shape}")
    padded = np.zeros((layout.padded_codebooks, TABLE_ENTRIES, layout.outputs), np.int8)
    padded[:layout.codebooks, :layout.centroids] = table
    grouped = padded.reshape(layout.codebook_groups, BYTES, layout.outputs // SQUARE, SQUARE)
    return np.ascontiguousarray(grouped.transpose(2, 0, 3, 1))


def _lookup_add(acc, tables, codes):
    """acc (int32x16) + per row the sum of its 4 codebooks' entries: `vpermb` then `vpdpbusd` with all-ones."""
    looked_up = T.call_llvm_pure_intrin("int8x64", "llvm.x86.avx512.permvar.qi.512", tables,
                                        T.reinterpret("int8x64", codes))
    return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", acc, T.Broadcast(T.int8(1), BYTES),
                                   looked_up)


def row_parts(groups: int, threads: int) -> tuple[int, int]:
    """(parts, groups per part): `groups` row groups in contiguous parts, one per thread (fewer parts when there are
    fewer groups than threads; the last part may be short)."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    per_part = max(-(-groups // threads), 1)
    return -(-groups // per_part), per_part


def pq_lookup_dot_func(layout: DotLookupLayout, activation: PWLSpec | None = None,
                       threads: int = 1, split_outputs: bool = False) -> tvm.tirx.PrimFunc:
    """The scheduled lookup PrimFunc `(codes, table, scale, bias) -> y (N, M)` for `layout` (module docstring),
    with `activation` (a table with scaling "none") applied to y when given; `threads` (the target's `num-cores`)
    sets its row parts. `split_outputs`: the threads split the output tiles instead (thread p writes the p-th
    contiguous range of columns of every row), for outputs that the next kernels split by columns
    (`relay_passes.thread_split`)."""
    if activation is not None:
        activation = Table(activation, "activation")
        if activation.scaling != "none":
            raise ValueError(f"the lookup's activation must be a table with scaling 'none' (GELU), got "
                             f"{activation.scaling!r}")
    num_rows, outputs, groups = layout.rows, layout.outputs, layout.codebook_groups
    used_groups, tiles = -(-num_rows // SQUARE), outputs // SQUARE
    parts, per_part = (1, max(used_groups, 1)) if split_outputs else row_parts(used_groups, threads)
    span = tiles * per_part  # the tiles of one part
    every, all_bytes = T.ramp(0, 1, SQUARE), T.ramp(0, 1, BYTES)
    lines_per_group = -(-SQUARE // per_part)  # of a tile's 16 table lines per codebook group, prefetched

    @T.prim_func
    def pq_lookup_dot(codes: T.Buffer(layout.codes_shape, "uint8"), table: T.Buffer(layout.table_shape, "int8"),
                      scale: T.Buffer((outputs,), "float32"), bias: T.Buffer((outputs,), "float32"),
                      y: T.Buffer((num_rows, outputs), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "tvm_lut.kernel": "pq_lookup_dot",
                     PARALLEL_WORK_ATTR: layout.lookups, SPLIT_ATTR: "outputs" if split_outputs else "rows"})
        for tile in T.parallel(parts * span):
            column = T.meta_var(tile % span // per_part)  # the tile of 16 outputs
            step = T.meta_var(tile % per_part)  # the sweep's step down the part's row groups
            first = T.meta_var(tile // span * per_part)  # the part's first row group
            group = T.meta_var(first + T.if_then_else(tile // span % 2 == 0, per_part - 1 - step, step)
                               if parts > 1 else first + step)  # even parts sweep last to first
            if group < used_groups:  # the last part may be short
                # Accumulators and the epilogue's block as (8, 16) halves: on the stack, in registers (`transpose16`).
                acc_head = T.alloc_buffer((HALF, SQUARE), "int32", scope="global")  # outputs 0-7, a row per lane
                acc_tail = T.alloc_buffer((HALF, SQUARE), "int32", scope="global")  # outputs 8-15
                head = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
                tail = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
                scratch_head = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
                scratch_tail = T.alloc_buffer((HALF, SQUARE), "float32", scope="global")
                for m in T.unroll(HALF):
                    acc_head[m, every] = T.Broadcast(T.int32(0), SQUARE)
                    acc_tail[m, every] = T.Broadcast(T.int32(0), SQUARE)
                for cg in range(groups):
                    # The next tile's tables for this group, a share of its 16 lines in each of this tile's row groups
                    for m in T.unroll(lines_per_group):
                        if step * lines_per_group + m < SQUARE:
                            prefetch(T.address_of(table[T.min(column + 1, tiles - 1), cg, step * lines_per_group + m,
                                                        0]))
                    for m in T.unroll(HALF):
                        acc_head[m, every] = _lookup_add(acc_head[m, every], table[column, cg, m, all_bytes],
                                                         codes[group, cg, all_bytes])
                        acc_tail[m, every] = _lookup_add(acc_tail[m, every], table[column, cg, HALF + m, all_bytes],
                                                         codes[group, cg, all_bytes])
                for m in T.unroll(HALF):
                    head[m, every] = T.Cast("float32x16", acc_head[m, every]) * T.Broadcast(
                        scale[column * SQUARE + m], SQUARE) + T.Broadcast(bias[column * SQUARE + m], SQUARE)
                    tail[m, every] = T.Cast("float32x16", acc_tail[m, every]) * T.Broadcast(
                        scale[column * SQUARE + HALF + m], SQUARE) + T.Broadcast(
                        bias[column * SQUARE + HALF + m], SQUARE)
                if activation is not None:  # lane by lane, vectorized: lowered for the target's registers
                    for m in T.unroll(HALF):
                        for lane in T.vectorized(SQUARE):
                            head[m, lane] = evaluate(activation, head[m, lane])
                        for lane in T.vectorized(SQUARE):
                            tail[m, lane] = evaluate(activation, tail[m, lane])
                if num_rows % SQUARE == 0:
                    transpose_16x16(head, tail, scratch_head, scratch_tail, y, group * SQUARE, column * SQUARE)
                else:  # the last group may hold rows past N: through a block in memory, row by row
                    block = T.alloc_buffer((SQUARE, SQUARE), "float32", scope="global")
                    transpose_16x16(head, tail, scratch_head, scratch_tail, block, 0, 0)
                    for r in range(SQUARE):
                        if group * SQUARE + r < num_rows:
                            y[group * SQUARE + r, T.ramp(column * SQUARE, 1, SQUARE)] = block[r, every]

    return pq_lookup_dot
