"""Matmul and batch matmul with a fused injective epilogue (bias, GELU, residual add, scaling).

Fits a function with exactly one reduction block `C[b.., i, j] += A[b.., i, k] * B[b.., k, j]` whose right operand
is contiguous along `j`, preceded by injective producers that can be inlined and followed by injective consumers.
Schedule (a register-tiled micro-kernel, as in BLIS/oneDNN): an `MR x NR` tile of C lives in vector registers
(NR = two SIMD vectors along `j`); for each k one row of the B panel is loaded and each of the MR elements of A is
broadcast into a fused multiply-add; k is unrolled; tiles run in parallel; the epilogue is applied to each tile
while it is hot, so the intermediate C is never written to memory. A product with a single row of A (a dense layer
at batch 1: the unit row axis is not iterated) gets one-row tiles of ROWLESS_VECTORS vectors instead.
A large 2-D right operand (a dense layer's weight) is read as `[N / NR, K, NR]` panels, repacked in a block the
`tvm_lut` pipeline folds at compile time on a constant weight (`_prepack_weight`).
"""

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.target import Target

from ..target import cpu_params, vector_lanes
from .common import PARTITION_HINT, WEIGHT_PREPACK, CPURule, inline_injective, largest_divisor, output_dtype
from .common import parallelize, static_extent, the_reduction, vectorize_innermost

# Rows of C per register tile (MR x 2 vectors of accumulators, plus 2 B vectors and a broadcast, must fit the
# vector registers), the k unrolling and the repacking threshold are per-target `CPUParams` (`schedules.target`).
# Vectors of C per tile of a one-row product: more independent accumulators hide the multiply-add latency.
ROWLESS_VECTORS = 4


def _index_vars(region) -> list:
    return [r.min if isinstance(r.min, tirx.Var) else None for r in region.region]


class Matmul(CPURule):
    """Register-tiled, vectorized, parallel matmul with its epilogue computed per tile."""

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        matmul = the_reduction(blocks)
        if matmul is None:
            return None
        has_rows = self._has_rows(sch, matmul)
        if has_rows is None:
            return None
        if any(static_extent(sch, loop) is None for loop in sch.get_loops(matmul.block_rv)):
            return None
        pads = _pad_ragged(sch, matmul, has_rows, target)
        if pads:
            blocks = normalize_prim_func(sch)
            matmul = next(info for info in blocks if not info.is_injective())
        position = blocks.index(matmul)
        for producer in blocks[:position]:
            if sch.get(producer.block_rv).name_hint not in pads:
                sch.compute_inline(producer.block_rv)
        epilogue = [info.block_rv for info in inline_injective(sch, blocks[position + 1 :])]

        col_tile = register_tile(sch, matmul.block_rv, epilogue, has_rows, target)
        _prepack_weight(sch, matmul.block_rv, col_tile, cpu_params(target).prepack_min_elements)
        for name in pads:  # what the weight's repacking did not absorb: a copy, split at the padding's edge
            for loop in _loops_of(sch, name):
                sch.annotate(loop, PARTITION_HINT, 1)
        return sch

    @staticmethod
    def _has_rows(sch: s_tir.Schedule, info: SBlockInfo) -> bool | None:
        """Whether a matmul iterates rows of A (None: not a matmul).

        A matmul reads two operands: A indexed by (.., [i,] k) and B by (.., k, j) with j last (the vector axis).
        """
        block = sch.get(info.block_rv)
        reads = [r for r in block.reads if not r.source.same_as(block.writes[0].source)]
        if len(reads) != 2 or not info.dom_kind().endswith("SR"):
            return None
        j, k = (it.var for it in info.iters[-2:])
        lhs, rhs = (_index_vars(r) for r in reads)
        if rhs[-1:] != [j]:
            lhs, rhs = rhs, lhs
        if rhs[-1:] != [j] or k not in rhs or j in lhs or k not in lhs:
            return None
        *batch, i = [None, *(it.var for it in info.iters[:-2])]
        if i is not None and i in lhs and i not in rhs:
            return True
        # One row: every other axis must index both operands (a batch), or this is no matmul (e.g. a 1x1 conv).
        return False if all(b in lhs and b in rhs for b in [*batch, i] if b is not None) else None


def _pad_ragged(sch: s_tir.Schedule, info: SBlockInfo, has_rows: bool, target: Target) -> set[str]:
    """Pad a ragged matmul (rows that no register tile divides, columns no SIMD vector divides: ViT's 197 tokens)
    to full tiles with `pad_einsum`: the operands are copied into zero-padded buffers, the product is computed on
    whole tiles, and only the valid part reaches the epilogue. Returns the names of the padding blocks (none when
    the shape is tile-friendly)."""
    loops = sch.get_loops(info.block_rv)
    extents = [static_extent(sch, loop) for loop in loops]
    m, n = (extents[-3] if has_rows else 1), extents[-2]
    lanes = vector_lanes(target, output_dtype(sch, info.block_rv))
    row_tiles = cpu_params(target).matmul_row_tiles
    row_tile = next(r for r in row_tiles if m % r == 0)
    pad_m = row_tiles[0] if has_rows and m > row_tiles[0] and row_tile < 4 else 1
    pad_n = lanes if n > lanes and largest_divisor(n, lanes) < lanes else 1
    if pad_m == pad_n == 1:
        return set()
    before = {sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))}
    padding = [1] * len(loops)
    padding[-2] = pad_n
    if has_rows:
        padding[-3] = pad_m
    sch.pad_einsum(info.block_rv, padding)
    after = {sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))}
    matmul_name = sch.get(info.block_rv).name_hint
    return {name for name in after - before if name != f"{matmul_name}_pad"}


def _loops_of(sch: s_tir.Schedule, name: str) -> list:
    """The loops of the block named `name`, none if it was inlined."""
    try:
        return sch.get_loops(sch.get_sblock(name))
    except s_tir.ScheduleError:
        return []


def register_tile(sch: s_tir.Schedule, block, epilogue: list, has_rows: bool, target: Target) -> int:
    """Schedule the matmul `block` (loops `[batch.., [i,] j, k]`, static extents) as the module docstring says:
    MR x NR register tiles in parallel, `epilogue` (blocks consuming C, or none: C is written through a tile)
    computed per tile. Returns NR."""
    loops = sch.get_loops(block)
    extents = [static_extent(sch, loop) for loop in loops]
    # One row (a unit row axis is not iterated): a matrix-vector product, whose tile is one row of wider vectors.
    *batch_loops, i, j, kk = loops if has_rows else [*loops[:-2], None, *loops[-2:]]
    m, n, k = (extents[-3] if has_rows else 1), extents[-2], extents[-1]
    lanes = vector_lanes(target, output_dtype(sch, block))
    params = cpu_params(target)
    row_tile = next(r for r in params.matmul_row_tiles if m % r == 0)
    col_tile = largest_divisor(n, (2 if has_rows else ROWLESS_VECTORS) * lanes)
    k_unroll = largest_divisor(k, params.matmul_k_unroll)

    row_outer, row_inner = ([loop] for loop in sch.split(i, [None, row_tile])) if has_rows else ([], [])
    jo, ji = sch.split(j, [None, col_tile])
    ko, ki = sch.split(kk, [None, k_unroll])
    sch.reorder(*batch_loops, jo, *row_outer, ko, ki, *row_inner, ji)
    tile_loops = [*batch_loops, jo, *row_outer]
    tile_loop = sch.fuse(*tile_loops) if len(tile_loops) > 1 else jo
    if not epilogue:  # write C through a register tile
        epilogue = [sch.cache_write(block, 0, "global")]
    for consumer in epilogue:
        sch.reverse_compute_at(consumer, tile_loop, preserve_unit_loops=True)
        *rows, cols = sch.get_loops(consumer)[1:]
        vectorize_innermost(sch, cols, lanes)
        for row in rows:
            sch.unroll(row)

    parallelize(sch, tile_loop, m * n * k, target)
    sch.vectorize(ji)
    for row in row_inner:
        sch.unroll(row)
    sch.unroll(ki)
    init = sch.decompose_reduction(block, ko)
    vectorize_innermost(sch, sch.get_loops(init)[-1], lanes)
    return col_tile


def _prepack_weight(sch: s_tir.Schedule, block, col_tile: int, min_elements: int) -> None:
    """Lay a 2-D right operand (a dense layer's weight) out as `[N / NR, K, NR]` panels, in a block marked as
    weight repacking that the pipeline folds at compile time on a constant weight.

    A tile reads its `K x NR` panel of B one row of NR floats at a time; in `(K, N)` order those rows lie N floats
    apart, a new page every few rows, which the hardware prefetcher does not follow: with the weights out of cache
    (a whole model's do not fit), MiniLM's 64x384x1536 layer took 912 us instead of 595. A panel in one contiguous
    run streams. Small weights (under `min_elements`, which stay in cache) and batched ones are left alone.
    """
    stmt = sch.get(block)
    j = stmt.iter_vars[-2].var  # iterators (.., j, k): B is the operand read along j
    index = next((k for k, read in enumerate(stmt.reads)
                  if _index_vars(read)[-1:] == [j] and not read.source.same_as(stmt.writes[0].source)), None)
    if index is None or col_tile < 2:
        return
    shape = [int(d) for d in stmt.reads[index].source.shape]
    if len(shape) != 2 or shape[0] * shape[1] < min_elements:
        return
    packed = sch.cache_read(block, index, "global")
    for padding in sch.get_producers(packed):  # a ragged weight's zero padding (`_pad_ragged`) joins the repacking
        sch.compute_inline(padding)
    sch.transform_layout(packed, ("write", 0), lambda k, n: (n // col_tile, k, n % col_tile))
    sch.annotate(packed, WEIGHT_PREPACK, 1)
