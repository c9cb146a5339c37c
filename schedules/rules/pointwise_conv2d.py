"""1x1 NCHW conv2d with stride 1 as a matrix product over pixels (`W[co, ci] @ X[ci, pixels]`), with its epilogue.

Fits a function whose one reduction block is a direct NCHW conv (`conv2d.conv_axes`) with a 1x1 window, stride 1
and no padding (the copy Relax makes of the input is read in place), no unit axis (one channel, a one-pixel row),
and output rows that hold a whole number of vectors of at least half a register. In NCHW the pixels of a channel
are contiguous, so a vector of pixels is one load of the input and one store of the output. The register tile is
`C` output channels x `R` rows x `P` vectors along a row (`register_tile`): each input channel loads `R x P` input
vectors and broadcasts `C` weights (scalars of the weight as it is: no repacking) into `C x R x P` fused
multiply-adds; the epilogue runs on the tile while it is hot and writes NCHW directly. Tiles run in parallel.

The `Conv2d` rule's channel block instead accumulates pixels in channel-vector order and transposes every tile
back to NCHW, which few input channels do not pay for: measured at one thread on znver4, MobileNetV2's 1x1 convs
on 112x112 and 56x56 maps ran at 62-78 GFLOPS there and at 104-112 here (ResNet-50's on 56x56 maps: about even).
On AVX-512, 56-wide rows take 8-lane vectors (znver4 runs them at the same multiply-add rate).
"""

import math

import tvm
from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from ..target import vector_lanes
from .common import CPURule, inline_injective, largest_divisor, output_dtype, output_shape, parallelize
from .common import static_extent, the_reduction, vectorize_innermost
from .conv2d import conv_axes

# Vectors along the output row per register tile (more: fewer weight broadcasts per multiply-add, more registers).
MAX_ROW_VECTORS = 8


def register_tile(height: int, width_vectors: int, channels: int, registers: int) -> tuple[int, int, int]:
    """(output channels C, rows R, row vectors P) of the tile, each dividing its extent: the C x R x P accumulators
    plus R x P input vectors and a broadcast within `registers`; the most accumulators, then the fewest loads
    (C + R x P) per input channel."""
    def divisors(extent, limit):
        return [d for d in range(1, min(extent, limit) + 1) if extent % d == 0]

    best, best_key = (1, 1, 1), (1, -3)
    for vectors in divisors(width_vectors, MAX_ROW_VECTORS):
        for rows in divisors(height, MAX_ROW_VECTORS // vectors):
            for outs in divisors(channels, registers):
                pixels = rows * vectors
                key = (outs * pixels, -(outs + pixels))
                if outs * pixels + pixels + 1 <= registers and key > best_key:
                    best, best_key = (outs, rows, vectors), key
    return best


class PointwiseConv2d(CPURule):
    """A register tile of output channels x vectors of pixels, weights broadcast; see the module docstring."""

    divides_by_reciprocal = True  # hardswish's `/ 6` in the epilogue

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        conv = the_reduction(blocks)
        if conv is None:
            return None
        position = blocks.index(conv)
        for producer in blocks[:position]:  # the input's copy (a padding of 0) is read in place
            sch.compute_inline(producer.block_rv)
        matched = conv_axes(sch, conv)
        if matched is None:
            return None
        weight_index, axes = matched
        if "kh" in axes or "kw" in axes or not {"co", "oh", "ow", "ci"} <= set(axes):
            return None  # a window, or a unit axis dropped (one channel, a one-pixel row or column)
        block = sch.get(conv.block_rv)
        data = next([r.min for r in read.region] for k, read in enumerate(block.reads)
                    if k != weight_index and not read.source.same_as(block.writes[0].source))
        oh, ow = (conv.iters[axes[name]].var for name in ("oh", "ow"))
        if not (data[2].same_as(oh) and data[3].same_as(ow)):
            return None  # a strided or padded read
        loops = dict(zip(axes, sch.get_loops(conv.block_rv)))
        extents = {name: static_extent(sch, loop) for name, loop in loops.items()}
        if None in extents.values():
            return None
        dtype = output_dtype(sch, conv.block_rv)
        lanes = vector_lanes(target, dtype)
        vector = largest_divisor(extents["ow"], lanes)
        if 2 * vector < lanes or vector < 2:
            return None  # a row of no whole vectors: the channel block's form serves it
        registers = 32 if lanes * tvm.DataType(dtype).bits >= 512 else 16
        channels, rows_per_tile, row_vectors = register_tile(extents["oh"], extents["ow"] // vector, extents["co"],
                                                             registers)
        epilogue = [info.block_rv for info in inline_injective(sch, blocks[position + 1 :])]
        if any(output_shape(sch, consumer) != output_shape(sch, conv.block_rv) for consumer in epilogue):
            return None  # a fused next-layer padding: the tiles would leave its border unwritten

        co_outer, co_inner = sch.split(loops["co"], [None, channels])
        oh_outer, oh_inner = sch.split(loops["oh"], [None, rows_per_tile])
        ow_outer, ow_vectors, ow_lanes = sch.split(loops["ow"], [None, row_vectors, vector])
        batch = [loops["n"]] if "n" in loops else []
        sch.reorder(*batch, oh_outer, ow_outer, co_outer, loops["ci"], co_inner, oh_inner, ow_vectors, ow_lanes)
        rows = sch.fuse(*batch, oh_outer, ow_outer)
        if not epilogue:  # write the output through a register tile
            epilogue = [sch.cache_write(conv.block_rv, 0, "global")]
        for consumer in epilogue:
            sch.reverse_compute_at(consumer, co_outer, preserve_unit_loops=True)
            *_, consumer_channels, consumer_rows, consumer_width = sch.get_loops(consumer)
            sch.unroll(vectorize_innermost(sch, consumer_width, vector))
            sch.unroll(consumer_rows)
            sch.unroll(consumer_channels)
        parallelize(sch, rows, math.prod(extents.values()), target)
        sch.vectorize(ow_lanes)
        sch.unroll(ow_vectors)
        sch.unroll(oh_inner)
        sch.unroll(co_inner)
        init = sch.decompose_reduction(conv.block_rv, loops["ci"])
        sch.vectorize(sch.get_loops(init)[-1])
        return sch
