"""Elementwise and broadcast chains (also reshapes, transposes, casts): every block of the function is spatial.

All blocks are inlined into the last; its loops are fused into one, split into SIMD vectors on the inside and run
in parallel on the outside. The vector is taken from the innermost output dimension, where the reads of an
elementwise or broadcast chain are contiguous.
"""

import math

from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from ..target import vector_lanes
from .common import CPURule, inline_injective, output_dtype, parallelize, static_extent, vectorize_innermost


class Elementwise(CPURule):
    """Injective functions: fuse the spatial loops, vectorize the inner part, parallelize the outer part."""

    serves_empty = True  # its vector split falls back to scalar on an extent of 0

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        if not all(info.is_injective() for info in blocks):
            return None
        for info in inline_injective(sch, blocks):
            self.schedule_block(sch, info.block_rv, target)
        return sch

    @staticmethod
    def schedule_block(sch: s_tir.Schedule, block, target: Target) -> None:
        loops = sch.get_loops(block)
        if not loops:
            return
        extents = [static_extent(sch, loop) for loop in loops]
        work = None if None in extents else math.prod(extents)
        if work == 0:
            return
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        outer = vectorize_innermost(sch, fused, vector_lanes(target, output_dtype(sch, block)), row=extents[-1])
        parallelize(sch, outer, work, target)
