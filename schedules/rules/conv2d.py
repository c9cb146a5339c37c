"""Direct NCHW conv2d as Relax legalizes it: a padding stage, `conv2d_nchw`, and a fused epilogue (bias, ReLU).

Fits a function with exactly one reduction block over (n, co, oh, ow | ci, kh, kw) that reads the input as
`[n, ci, f(oh, kh), g(ow, kw)]` and the weight as `[co, ci, kh, kw]` (strides, dilation and padding are free;
grouped and depthwise convs and other layouts do not fit). Rows (n, co block, oh) run in parallel, each with a
register tile of outputs whose (ci, kh, kw) reduction runs with kh and kw unrolled, and the epilogue is applied to
each tile while it is hot. The tile takes one of two forms:

- channel block (as oneDNN's NCHWc kernels): output channels blocked by the SIMD width, which needs the weight
  repacked to `[co/V, ci, kh, kw, V]` so one block of output channels is one vector load. The repacking is a
  separate block marked as MetaSchedule's layout-rewrite preprocessing: the `tvm_lut` pipeline splits it into its
  own function (`SplitLayoutRewritePreproc`) and folds it at compile time when the weight is a constant, as it is
  in imported models (a weight passed at run time is repacked on every call). `R` pixels along the output width
  are accumulated in `[n, co/V, oh, ow, V]` order (each accumulator one contiguous vector), each reduction step
  broadcasting R input pixels into fused multiply-adds with one weight vector; the epilogue writes NCHW back.
- row (AVX-512, one input channel, stride 1 along the width): a vector along the output row (up to two registers,
  masked lanes where the row is not a multiple of 16) for each of up to 16 output channels; each step loads one
  input vector and broadcasts one weight per channel. No repacking and no transposes. With one input channel a
  channel block has only kh*kw multiply-adds per output to pay for its transposes (1->32 28x28 3x3: row 5.9 us,
  channel block 9.4 us); with more, rows lose (masked lanes, and accumulators LLVM spills on two-register rows):
  measured at one thread on znver4, weights folded, row vs channel block: 32->64 14x14 3x3 72.3 vs 65.9 us,
  64->64 7x7 1x1 5.5 vs 4.3, 3->32 28x28 3x3 51.4 vs 17.1, 64->64 56x56 1x1 2822 vs 286. AVX2 has no masks, so
  it always takes the channel block.
"""

import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from ..target import vector_lanes
from .common import PARTITION_HINT, WEIGHT_PREPACK, CPURule, inline_injective, largest_divisor, output_dtype
from .common import output_shape, parallelize, read_stride, static_extent, the_reduction, vectorize_innermost

# Output pixels per register tile, best first: R accumulator vectors plus a weight vector and a broadcast must
# fit the 16 vector registers of AVX2, or the 32 of AVX-512 (its wider tile loads each weight vector half as
# often); 7 and 14 divide the widths of 28x28 and 14x14 maps.
WIDTH_TILES = (8, 7, 6, 4, 5, 3, 2, 1)
WIDE_WIDTH_TILES = (14, 16, 12, 8, 7, 6, 4, 5, 3, 2, 1)
# Unroll the (kh, kw) window only while its body stays small: window x tile fused multiply-adds.
MAX_UNROLLED_WINDOW = 25
# Row tiles (AVX-512 only): vectors along the output width of at least this many pixels (fewer waste the
# register), at most this many accumulator registers of the 32 (the rest hold input vectors and weights).
MIN_ROW_VECTOR = 4
ROW_ACCUMULATORS = 16


_AXES = ("n", "co", "oh", "ow", "ci", "kh", "kw")
_REDUCED = {"ci", "kh", "kw"}


def _indexed_by(expr, var: tirx.Var | None) -> bool:
    """`expr` is `var`, or a constant where the axis has been dropped (extent 1)."""
    return expr.same_as(var) if var is not None else isinstance(expr, tirx.IntImm)


def _var(expr) -> tirx.Var | None:
    return expr if isinstance(expr, tirx.Var) else None


def conv_axes(sch: s_tir.Schedule, info: SBlockInfo) -> tuple[int, dict[str, int]] | None:
    """(read index of the weight, loop position of each conv axis) if the block is a direct NCHW conv2d.

    The block is normalized (dlight drops unit axes: a batch of 1 or a 1x1 window has no loop), so the axes are
    found by how the operands are indexed: output `[n, co, oh, ow]`, weight `[co, ci, kh, kw]`, data
    `[n, ci, f(oh, kh), g(ow, kw)]`, with n, kh and kw possibly constant; spatial axes come in that order, then
    ci, kh, kw.
    """
    block = sch.get(info.block_rv)
    out = [r.min for r in block.writes[0].region]
    reads = [(i, [r.min for r in read.region]) for i, read in enumerate(block.reads)
             if not read.source.same_as(block.writes[0].source)]
    if len(reads) != 2 or len(out) != 4 or any(len(index) != 4 for _, index in reads):
        return None
    position = {it.var: k for k, it in enumerate(info.iters)}
    for (weight_index, weight), (_, data) in (reads, reads[::-1]):
        names = {"n": _var(out[0]), "co": _var(out[1]), "oh": _var(out[2]), "ow": _var(out[3]),
                 "ci": _var(weight[1]), "kh": _var(weight[2]), "kw": _var(weight[3])}
        named = {name: var for name, var in names.items() if var is not None}
        if not all(name in named for name in ("co", "oh", "ow")) or not weight[0].same_as(named["co"]):
            continue
        if not all(isinstance(weight[k], tirx.IntImm) for k, name in ((1, "ci"), (2, "kh"), (3, "kw"))
                   if name not in named) or not _REDUCED & set(named):
            continue
        if set(named.values()) != set(position) or len(named) != len(position):
            continue
        order = [name for name in _AXES if name in named]
        kinds = "".join("R" if name in _REDUCED else "S" for name in order)
        if [position[named[name]] for name in order] != list(range(len(order))) or info.dom_kind() != kinds:
            continue
        used = lambda expr: set(tirx.analysis.undefined_vars(expr))  # noqa: E731
        window = lambda axis, tap: {named[axis]} | ({named[tap]} if tap in named else set())  # noqa: E731
        if (all(_indexed_by(data[k], named.get(name)) for k, name in ((0, "n"), (1, "ci"))) and used(data[2]) == window("oh", "kh")
                and used(data[3]) == window("ow", "kw")):
            return weight_index, {name: position[var] for name, var in named.items()}
    return None


class Conv2d(CPURule):
    """Rows parallel, a register tile of outputs per row, the epilogue per tile; see the module docstring."""

    divides_by_reciprocal = True  # hardswish's `/ 6` in the epilogue

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        conv = the_reduction(blocks)
        if conv is None:
            return None
        matched = conv_axes(sch, conv)
        if matched is None:
            return None
        weight_index, axes = matched
        loops = dict(zip(axes, sch.get_loops(conv.block_rv)))  # axes are in loop order
        extents = {name: static_extent(sch, loop) for name, loop in loops.items()}
        if None in extents.values():
            return None
        position = blocks.index(conv)
        consumers = blocks[position + 1 :]
        shape = output_shape(sch, conv.block_rv)
        resized = [info for info in consumers if output_shape(sch, info.block_rv) != shape]
        if resized and (len(resized) > 1 or resized[0] is not consumers[-1] or len(consumers) < 2):
            return None
        # A last stage of another shape (the next layer's padding, fused in) cannot run per tile: the tiles cover
        # only the conv's outputs and would leave the border unwritten. It runs after the conv, as a copy.
        epilogue = [info.block_rv for info in inline_injective(sch, consumers[:-1] if resized else consumers)]
        dtype = output_dtype(sch, conv.block_rv)
        lanes = vector_lanes(target, dtype)
        wide = lanes * tvm.DataType(dtype).bits >= 512
        row = _divisor(extents["ow"], range(2 * lanes, MIN_ROW_VECTOR - 1, -1)) if wide else None
        row_form = (bool(row) and "ci" not in extents  # one input channel: dlight dropped its unit axis
                    and read_stride(sch, conv.block_rv, conv.iters[axes["ow"]].var) == 1)
        if row_form:  # a vector along the row, up to ROW_ACCUMULATORS registers of channels
            width = row
            channels = _divisor(extents["co"], range(max(ROW_ACCUMULATORS // -(-row // lanes), 1), 0, -1))
            vector_size = width
        else:  # a vector of channels, `width` pixels unrolled
            width = _divisor(extents["ow"], WIDE_WIDTH_TILES if wide else WIDTH_TILES)
            channels = vector_size = largest_divisor(extents["co"], lanes)
            packed = sch.cache_read(conv.block_rv, weight_index, "global")
            sch.transform_layout(packed, ("write", 0), lambda o, c, y, x: (o // channels, c, y, x, o % channels))
            sch.annotate(packed, WEIGHT_PREPACK, 1)

        co_outer, co_inner = sch.split(loops["co"], [None, channels])
        ow_outer, ow_inner = sch.split(loops["ow"], [None, width])
        batch = [loops["n"]] if "n" in loops else []
        reduced = [loops[name] for name in ("ci", "kh", "kw") if name in loops]
        window = [loops[name] for name in ("kh", "kw") if name in loops]
        vector, unrolled = (ow_inner, co_inner) if row_form else (co_inner, ow_inner)
        sch.reorder(*batch, co_outer, loops["oh"], ow_outer, *reduced, unrolled, vector)
        rows = sch.fuse(*batch, co_outer, loops["oh"])
        if not epilogue:  # write the output through a register tile
            epilogue = [sch.cache_write(conv.block_rv, 0, "global")]
        if not row_form:
            # The accumulators in channel-block-last order, so each is one contiguous vector (in NCHW a vector of
            # channels is strided: every update would be a gather and a scatter, and none would stay in a register).
            sch.transform_layout(conv.block_rv, ("write", 0), lambda n, c, y, x: (n, c // channels, y, x, c % channels))
        for consumer in epilogue:
            sch.reverse_compute_at(consumer, ow_outer, preserve_unit_loops=True)
            *_, consumer_channels, _, consumer_width = sch.get_loops(consumer)  # NCHW: contiguous along the width
            if row_form:
                sch.vectorize(consumer_width)
            else:
                sch.unroll(vectorize_innermost(sch, consumer_width, lanes))
            sch.unroll(consumer_channels)

        parallelize(sch, rows, math.prod(extents.values()), target)
        if resized:
            _schedule_copy(sch, resized[0].block_rv, target)
        if vector_size > 1:
            sch.vectorize(vector)
        sch.unroll(unrolled)
        if math.prod(extents.get(name, 1) for name in ("kh", "kw")) <= MAX_UNROLLED_WINDOW:
            for loop in window:
                sch.unroll(loop)
        init = sch.decompose_reduction(conv.block_rv, reduced[0])
        if vector_size > 1:
            sch.vectorize(sch.get_loops(init)[-1])
        return sch


def _schedule_copy(sch: s_tir.Schedule, block, target: Target) -> None:
    """A padding stage after the conv: planes in parallel, each split at the padding's edges into a plain copy."""
    *planes, height, width = sch.get_loops(block)
    fused = sch.fuse(*planes) if len(planes) > 1 else planes[0]
    parallelize(sch, fused, math.prod(static_extent(sch, loop) for loop in sch.get_loops(block)), target)
    for loop in (height, width):
        sch.annotate(loop, PARTITION_HINT, 1)


def _divisor(extent: int, candidates) -> int | None:
    """The first of `candidates` that divides `extent`."""
    return next((c for c in candidates if extent % c == 0), None)
