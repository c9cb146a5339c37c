"""The Winograd conv2d of `schedules.kernels.winograd`, with whatever epilogue fusion gave it (bias, ReLU).

Fits a function holding the kernel's four blocks (found by name) plus injective consumers of its output. Each
stage gets the loop nest its data layout wants:

- data (padded NHWC copy of the input): rows in parallel, a vector of channels per pixel;
- input transform: per tile and vector of channels, the 16 transform positions unrolled, so the coefficient
  selects fold to four loads and three additions each;
- product: the `Matmul` rule's register tiles (tiles x output channels, batched over the 16 positions);
- output transform with the epilogue inlined: per tile and vector of output channels, the 2x2 outputs unrolled.
"""

import math

from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from ..target import vector_lanes
from .common import CPURule, inline_injective, largest_divisor, parallelize, static_extent
from .matmul import register_tile

STAGES = ("winograd_data", "winograd_input", "winograd_product", "winograd_output")


class Winograd(CPURule):
    """Each Winograd stage vectorized along channels, the product register-tiled; see the module docstring."""

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        names = [sch.get(info.block_rv).name_hint for info in blocks]
        if len(blocks) < len(STAGES) or not all(name.startswith(stage) for name, stage in zip(names, STAGES)):
            return None
        if any(name.startswith(STAGES) for name in names[len(STAGES) :]):
            return None  # a second Winograd conv fused in: not one this rule knows how to order
        output = blocks[len(STAGES) - 1]
        if inline_injective(sch, blocks[len(STAGES) - 1 :], keep=(output,)) != [output]:
            return None  # an epilogue that does not inline into the output transform
        axes = [_axes(sch, info) for info in blocks[: len(STAGES)]]
        if any(None in loops[1:] for loops in axes):
            return None  # a unit axis other than the batch: nothing worth a Winograd conv
        data, inputs, product, output = (info.block_rv for info in blocks[: len(STAGES)])
        lanes = vector_lanes(target, "float32")
        work = math.prod(static_extent(sch, loop) for loop in sch.get_loops(product))

        *rows, channels = (loop for loop in axes[0] if loop is not None)
        self._vector_rows(sch, sch.fuse(*rows) if len(rows) > 1 else rows[0], channels, lanes, work, target)

        position, pixel, channel = axes[1]
        outer, inner = self._vector_rows(sch, pixel, channel, lanes, work, target)
        sch.reorder(pixel, outer, position, inner)
        sch.unroll(position)

        register_tile(sch, product, [], True, target)

        batch, out_channel, y, x = axes[3]
        tile_y, row = sch.split(y, [None, 2])
        tile_x, column = sch.split(x, [None, 2])
        outer, inner = sch.split(out_channel, [None, largest_divisor(static_extent(sch, out_channel), lanes)])
        batch = [batch] if batch is not None else []
        sch.reorder(*batch, tile_y, tile_x, outer, row, column, inner)
        sch.unroll(row)
        sch.unroll(column)
        sch.vectorize(inner)
        parallelize(sch, sch.fuse(*batch, tile_y) if batch else tile_y, work, target)
        return sch

    @staticmethod
    def _vector_rows(sch: s_tir.Schedule, rows, channels, lanes: int, work: int, target: Target):
        """`channels` split into vectors (the inner part vectorized), `rows` parallel; (outer, inner) of the split."""
        outer, inner = sch.split(channels, [None, largest_divisor(static_extent(sch, channels), lanes)])
        sch.vectorize(inner)
        parallelize(sch, rows, work, target)
        return outer, inner


def _axes(sch: s_tir.Schedule, info: SBlockInfo) -> list:
    """The loop of each dimension of the block's output, None where the normalization dropped a unit axis."""
    def loop(index):
        return next((it.loop_rv for it in info.iters if it.var.same_as(index)), None)

    return [loop(r.min) for r in sch.get(info.block_rv).writes[0].region]
