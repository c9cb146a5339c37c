"""Matmul and batch matmul with a fused injective epilogue (bias, GELU, residual add, scaling).

Fits a function with exactly one reduction block `C[b.., i, j] += A[b.., i, k] * B[b.., k, j]` whose right operand
is contiguous along `j`, preceded by injective producers that can be inlined and followed by injective consumers.
Schedule (a register-tiled micro-kernel, as in BLIS/oneDNN): an `MR x NR` tile of C lives in vector registers
(NR = two SIMD vectors along `j`); for each k one row of the B panel is loaded and each of the MR elements of A is
broadcast into a fused multiply-add; k is unrolled; tiles run in parallel; the epilogue is applied to each tile
while it is hot, so the intermediate C is never written to memory.
"""

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from ..target import vector_lanes
from .common import CPURule, inline_injective, largest_divisor, output_dtype, parallelize, static_extent, vectorize_innermost

# Rows of C per register tile, best first: MR x 2 vectors of accumulators, plus 2 B vectors and a broadcast,
# must fit the 16 (AVX2) or 32 (AVX-512) vector registers.
ROW_TILES = (8, 6, 4, 7, 5, 3, 2, 1)
K_UNROLL = 4


def _index_vars(region) -> list:
    return [r.min if isinstance(r.min, tirx.Var) else None for r in region.region]


class Matmul(CPURule):
    """Register-tiled, vectorized, parallel matmul with its epilogue computed per tile."""

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        reductions = [info for info in blocks if not info.is_injective()]
        if len(reductions) != 1 or not reductions[0].dom_kind().endswith("SSR"):
            return None
        matmul = reductions[0]
        if not self._is_matmul(sch, matmul):
            return None
        position = blocks.index(matmul)
        for producer in blocks[:position]:
            sch.compute_inline(producer.block_rv)
        epilogue = [info.block_rv for info in inline_injective(sch, blocks[position + 1 :])]

        *batch, m, n, k = [static_extent(sch, loop) for loop in matmul.get_loops()]
        if None in (m, n, k):
            return None
        lanes = vector_lanes(target, output_dtype(sch, matmul.block_rv))
        row_tile = next(r for r in ROW_TILES if m % r == 0)
        col_tile = largest_divisor(n, 2 * lanes)
        k_unroll = largest_divisor(k, K_UNROLL)

        *batch_loops, i, j, kk = sch.get_loops(matmul.block_rv)
        io, ii = sch.split(i, [None, row_tile])
        jo, ji = sch.split(j, [None, col_tile])
        ko, ki = sch.split(kk, [None, k_unroll])
        sch.reorder(*batch_loops, jo, io, ko, ki, ii, ji)
        tile_loop = sch.fuse(*batch_loops, jo, io)
        if not epilogue:  # write C through a register tile
            epilogue = [sch.cache_write(matmul.block_rv, 0, "global")]
        for block in epilogue:
            sch.reverse_compute_at(block, tile_loop, preserve_unit_loops=True)
            *_, rows, cols = sch.get_loops(block)
            vectorize_innermost(sch, cols, lanes)
            sch.unroll(rows)

        parallelize(sch, tile_loop, m * n * k, target)
        sch.vectorize(ji)
        sch.unroll(ii)
        sch.unroll(ki)
        init = sch.decompose_reduction(matmul.block_rv, ko)
        vectorize_innermost(sch, sch.get_loops(init)[-1], lanes)
        return sch

    @staticmethod
    def _is_matmul(sch: s_tir.Schedule, info: SBlockInfo) -> bool:
        """Two operands: A indexed by (.., i, k) and B by (.., k, j) with j last (the vector axis)."""
        block = sch.get(info.block_rv)
        reads = [r for r in block.reads if not r.source.same_as(block.writes[0].source)]
        if len(reads) != 2:
            return False
        i, j, k = (it.var for it in info.iters[-3:])
        lhs, rhs = (_index_vars(r) for r in reads)
        if rhs[-1:] != [j]:
            lhs, rhs = rhs, lhs
        return rhs[-1:] == [j] and k in rhs and j not in lhs and k in lhs and i in lhs
