"""Padding (`nn.pad`, TF-style "same" padding before a strided conv): a copy whose every element asks whether it
lies in the border.

Fits a function of one spatial block of rank >= 2 whose value is an `if_then_else` on the output's indices (what
`topi.nn.pad` legalizes to; chains before it are inlined). The Elementwise rule would fuse its loops into one and
evaluate the condition per element (MobileNetV2's 144x57x57 padding: 2 ms, a depthwise conv's time). Here the
leading axes run in parallel and the two innermost loops are split at the padding's edges (TVM's loop
partitioning), so the interior is a plain row copy LLVM vectorizes, and the border is a fill.
"""

import math

import tvm
from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from .common import PARTITION_HINT, CPURule, inline_injective, parallelize, static_extent


def _is_select(value) -> bool:
    return isinstance(value, tvm.ir.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "prim.if_then_else"


class Padding(CPURule):
    """Leading axes parallel, the two innermost loops partitioned at the border; see the module docstring."""

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        if not all(info.is_injective() for info in blocks):
            return None
        remaining = inline_injective(sch, blocks)
        if len(remaining) != 1 or not _is_select(sch.get(remaining[0].block_rv).body.value):
            return None
        block = remaining[0].block_rv
        loops = sch.get_loops(block)
        extents = [static_extent(sch, loop) for loop in loops]
        if len(loops) < 2 or None in extents:
            return None
        *leading, height, width = loops
        if leading:
            outer = sch.fuse(*leading) if len(leading) > 1 else leading[0]
            parallelize(sch, outer, math.prod(extents), target)
        for loop in (height, width):
            sch.annotate(loop, PARTITION_HINT, 1)
        return sch
