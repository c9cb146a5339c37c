"""Row reductions and what is fused around them: softmax, layer/RMS norm, sums and means, pooling, direct conv.

Fits a function whose blocks (after inlining what can be inlined) share their leading spatial axes, with at least
one reduction block: rows run in parallel over the fused leading axes, every block is computed at that row loop,
injective blocks are vectorized on their inner axes, and each reduction over a single innermost axis is rfactored
into a vector of partial results (one per SIMD lane) that a short scalar tail combines. Reductions over several
axes (pooling windows, convolutions) get the parallel rows only.
"""

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from ..target import vector_lanes
from .common import CPURule, inline_injective, largest_divisor, output_dtype, parallelize, static_extent
from .common import vectorize_innermost


def _leading_spatial(info: SBlockInfo) -> int:
    kinds = info.dom_kind()
    return len(kinds) - len(kinds.lstrip("S"))


def _reads_contiguously(sch: s_tir.Schedule, info: SBlockInfo) -> bool:
    """Whether every input of the block walks its last dimension with the reduction axis (a vector load per step).

    A reduction over a strided axis (a column sum, `x @ w` with one row) would gather each lane: slower than the
    scalar loop, so it is not rfactored.
    """
    block = sch.get(info.block_rv)
    axis = info.iters[-1].var
    inputs = [r for r in block.reads if not r.source.same_as(block.writes[0].source)]
    return bool(inputs) and all(r.region and r.region[-1].min.same_as(axis) for r in inputs)


class Reduction(CPURule):
    """Rows in parallel, reductions vectorized through rfactor, injective stages vectorized."""

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        if all(info.is_injective() for info in blocks):
            return None
        blocks = inline_injective(sch, blocks)
        rows = min(_leading_spatial(info) for info in blocks)
        if any(set(info.dom_kind().lstrip("S")) - {"R"} for info in blocks):  # spatial axes first, then reductions
            return None
        if len({tuple(str(d) for d in info.dom()[:rows]) for info in blocks}) != 1:
            return None
        single_row = all(isinstance(d, (int, tirx.IntImm)) and int(d) == 1 for d in blocks[0].dom()[:rows])
        if single_row and any(info.dom_kind().count("R") > 1 for info in blocks):
            return None  # no rows to run in parallel and no single reduction axis to vectorize
        lanes = vector_lanes(target, output_dtype(sch, blocks[-1].block_rv))

        # Split each innermost reduction into per-lane partial results before the blocks move under the row loop.
        stages = []  # (block, kind) in program order; kind: "injective", "partial", "reduce"
        for info in blocks:
            if info.is_injective():
                stages.append((info.block_rv, "injective"))
                continue
            partial = self._rfactor(sch, info, lanes)
            if partial is not None:
                stages.append((partial, "partial"))
            stages.append((info.block_rv, "reduce"))

        if rows:  # else a single row (unit dimensions are not iterated): every block stays where it is
            last, _ = stages[-1]
            loops = sch.get_loops(last)
            extents = [static_extent(sch, loop) for loop in loops]
            row_loop = sch.fuse(*loops[:rows]) if rows > 1 else loops[0]
            parallelize(sch, row_loop, None if None in extents else math.prod(extents), target)
            for block, _ in reversed(stages[:-1]):
                sch.compute_at(block, row_loop, preserve_unit_loops=True)
        for block, kind in stages:
            self._vectorize_row(sch, sch.get_loops(block)[1 if rows else 0 :], kind, lanes)
        return sch

    @staticmethod
    def _rfactor(sch: s_tir.Schedule, info: SBlockInfo, lanes: int):
        """rfactor the innermost reduction loop by the SIMD width; returns the partial-result block or None."""
        loops = sch.get_loops(info.block_rv)
        factor = largest_divisor(static_extent(sch, loops[-1]), lanes)
        if info.dom_kind().count("R") != 1 or factor < 2 or not _reads_contiguously(sch, info):
            return None
        _, inner = sch.split(loops[-1], factors=[None, factor])
        return sch.rfactor(inner, factor_axis=len(loops) - 1)

    @staticmethod
    def _vectorize_row(sch: s_tir.Schedule, loops: list, kind: str, lanes: int) -> None:
        """Vectorize what one row of a block computes (`loops`: its loops below the row loop)."""
        if kind == "injective" and loops:
            inner = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            vectorize_innermost(sch, inner, lanes, row=static_extent(sch, loops[-1]) if len(loops) == 1 else None)
        elif kind == "partial":
            # compute_at orders the loops as the block's iters: (lane, outer reduction); the lane goes inside.
            lane, outer = loops[-2:]
            sch.reorder(outer, lane)
            sch.vectorize(lane)
