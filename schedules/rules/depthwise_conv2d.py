"""Depthwise NCHW conv2d (one input channel per output channel: MobileNets, ConvNeXt's 7x7) and its epilogue.

Fits a function with exactly one reduction block over (n, c, oh, ow | kh, kw) that reads the input as
`[n, c, f(oh, kh), g(ow, kw)]` and the weight as `[c, 0, kh, kw]` (Relax's `group_conv2d_nchw` with groups equal
to the channels; any kernel size, stride, dilation and padding). A depthwise conv has no channel reduction to
block, so it is a stencil over one plane: planes (n, c) run in parallel; each plane's input is staged once, padded
(and, with a stride s along the width, de-interleaved into s phases, so the taps of a strided row are one
contiguous vector load instead of a gather); then for each output row, vectors along the output width accumulate
the kh x kw taps (unrolled, each a broadcast weight times a vector of inputs), and the epilogue (batch norm, bias,
ReLU6, hardswish) runs on each output row in the conv's vectors while they are in registers (a fused padding of
the next layer, of another shape, runs over the plane while it is in cache).
"""

import math

from tvm import s_tir, tirx
from tvm.sym import Analyzer
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.sym import detect_linear_equation
from tvm.target import Target

from ..target import vector_lanes
from .common import PARTITION_HINT, CPURule, inline_injective, largest_divisor, output_dtype, output_shape
from .common import parallelize, static_extent, the_reduction, vector_width, vectorize_innermost

# Unroll the (kh, kw) taps while the unrolled body stays small (7x7 = 49 taps is ConvNeXt's).
MAX_UNROLLED_TAPS = 49


def _is(expr, var) -> bool:
    return isinstance(expr, tirx.Var) and expr.same_as(var)


def _match(sch: s_tir.Schedule, info: SBlockInfo) -> tuple[int, int, int] | None:
    """(read index of the data, stride along the width, loop count of the plane axes n and c) for a depthwise conv
    block, else None.

    The block is normalized (dlight drops unit axes: a batch of 1, the unit input channel of a group): spatial
    axes ([n,] c, oh, ow), then the window (kh, kw).
    """
    block = sch.get(info.block_rv)
    out = [r.min for r in block.writes[0].region]
    reads = [(k, [r.min for r in read.region]) for k, read in enumerate(block.reads)
             if not read.source.same_as(block.writes[0].source)]
    kinds = info.dom_kind()
    if len(out) != 4 or len(reads) != 2 or kinds.rstrip("R") + "R" * kinds.count("R") != kinds:
        return None
    spatial = [it.var for it in info.iters if it.kind == "S"]
    window = [it.var for it in info.iters if it.kind == "R"]
    if len(spatial) not in (3, 4) or not 1 <= len(window) <= 2:
        return None
    *plane, oh, ow = spatial
    c = plane[-1]
    if not (_is(out[1], c) and _is(out[2], oh) and _is(out[3], ow)):
        return None
    analyzer = Analyzer()
    for (data_index, data), (_, weight) in (reads, reads[::-1]):
        if len(data) != 4 or len(weight) != 4:
            continue
        if not _is(analyzer.simplify(weight[0]), c) or not _is(analyzer.simplify(data[1]), c):
            continue
        if not isinstance(analyzer.simplify(weight[1]), tirx.IntImm):
            continue
        if any(v not in window for d in weight[2:] for v in tirx.analysis.undefined_vars(d)):
            continue
        used = lambda expr: set(tirx.analysis.undefined_vars(expr))  # noqa: E731
        if not used(data[2]) - set(window) == {oh} or not used(data[3]) - set(window) == {ow}:
            continue
        stride = _linear(data[3], ow)
        if stride is None:
            continue
        return data_index, stride, len(plane)
    return None


def _linear(expr, var) -> int | None:
    """The constant coefficient of `var` in `expr` (a linear index), else None."""
    coefficients = detect_linear_equation(expr, [var])
    if len(coefficients) != 2 or not isinstance(coefficients[0], tirx.IntImm):
        return None
    return int(coefficients[0])


def row_vector(width: int, lanes: int, taps: int) -> int:
    """Outputs per vector along a row of `width` with `taps` taps along it: `vector_width`, but an odd width only
    when it spans at least two windows, else the power of two.

    Measured on the MobileNet and ConvNeXt shapes (AVX-512, one thread): vectors of 7 or 14 ran 3x3 convs on 7x7
    and 14x14 maps 2.5-3.5x faster than the scalar rows, 7x7 convs on 14x14 maps 3.4x; but 5x5 and 7x7 convs on
    7x7 maps 1.4-1.6x slower than the fully unrolled scalar row (the window is most of the row).
    """
    power, widest = largest_divisor(width, lanes), vector_width(width, lanes)
    return widest if widest == power or widest >= 2 * taps else power


class DepthwiseConv2d(CPURule):
    """Planes in parallel, the padded input plane staged (de-interleaved for strides), taps accumulated in vectors
    along the output row, the epilogue over each plane; see the module docstring."""

    divides_by_reciprocal = True  # hardswish's `/ 6` in the epilogue

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        conv = the_reduction(blocks)
        if conv is None:
            return None
        matched = _match(sch, conv)
        if matched is None:
            return None
        data_index, stride, plane_axes = matched
        loops = sch.get_loops(conv.block_rv)
        if any(static_extent(sch, loop) is None for loop in loops) or stride < 1:
            return None
        position = blocks.index(conv)
        data = sch.get(conv.block_rv).reads[data_index].source
        # The padding stage (the block writing the data the conv reads) is staged per plane; other producers inline.
        staging = [info for info in blocks[:position] if sch.get(info.block_rv).writes[0].source.same_as(data)]
        for producer in blocks[:position]:
            if producer not in staging:
                sch.compute_inline(producer.block_rv)
        epilogue = [info.block_rv for info in inline_injective(sch, blocks[position + 1 :])]
        lanes = vector_lanes(target, output_dtype(sch, conv.block_rv))

        loops = sch.get_loops(conv.block_rv)
        plane, (row, ow, *taps) = loops[:plane_axes], loops[plane_axes:]
        work = math.prod(static_extent(sch, loop) for loop in loops)
        anchor = sch.fuse(*plane) if len(plane) > 1 else plane[0]
        parallelize(sch, anchor, work, target)

        stage = staging[0].block_rv if staging else sch.cache_read(conv.block_rv, data_index, "global")
        sch.compute_at(stage, anchor, preserve_unit_loops=True)
        if stride > 1:  # width w -> (w % s, w // s): the taps of a strided output row become contiguous
            sch.transform_layout(stage, ("write", 0), lambda n, ch, h, w: (n, ch, h, w % stride, w // stride),
                                 pad_value=0.0)
            # Each phase of a row in its own loop: contiguous stores from loads `stride` apart, which LLVM
            # vectorizes as interleaved loads; in input order every store went to a computed address and the stage
            # ran scalar (2.5-2.9x slower for MobileNets' stride-2 3x3 convs on 112x112 and 56x56 maps).
            column, phase = sch.split(sch.get_loops(stage)[-1], factors=[None, stride])
            sch.reorder(phase, column)
        for loop in sch.get_loops(stage)[1:]:  # split at the padding's edges: the interior is a plain copy
            sch.annotate(loop, PARTITION_HINT, 1)

        factor = row_vector(static_extent(sch, ow), lanes, static_extent(sch, taps[-1]) if taps else 1)
        ow_inner = None
        if factor > 1:  # a vector of outputs along the row accumulates every tap
            _, ow_inner = sch.split(ow, factors=[None, factor])
            sch.reorder(*taps, ow_inner)
            sch.vectorize(ow_inner)
        window = 1
        for tap in taps:
            window *= static_extent(sch, tap)
        if window <= MAX_UNROLLED_TAPS:
            for tap in taps:
                sch.unroll(tap)
        if taps:
            init = sch.decompose_reduction(conv.block_rv, taps[0])
            if ow_inner is not None:
                sch.vectorize(sch.get_loops(init)[-1])
        same_shape = all(output_shape(sch, consumer) == output_shape(sch, conv.block_rv) for consumer in epilogue)
        for consumer in epilogue:
            if same_shape:  # each output row while it is in registers, in the conv's vectors
                sch.reverse_compute_at(consumer, row, preserve_unit_loops=True)
                width = sch.get_loops(consumer)[-1]
                if factor > 1:
                    sch.vectorize(sch.split(width, factors=[None, factor])[-1])
                continue
            sch.reverse_compute_at(consumer, anchor, preserve_unit_loops=True)  # a fused padding: over the plane
            rows = sch.get_loops(consumer)[1:]
            row_extent = static_extent(sch, rows[-1])  # vectors within a row: their indices stay linear
            vectorize_innermost(sch, sch.fuse(*rows) if len(rows) > 1 else rows[0], lanes, row=row_extent)
        return sch

