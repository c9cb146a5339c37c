"""What every CPU rule shares: the rule base class, block analysis, and the loop moves (vectorize, parallel).

`CPURule.apply` follows dlight's contract: it returns a `Schedule`, or `None` when the rule does not fit the
function. Subclasses implement `schedule(sch, blocks, target)`; a schedule primitive that refuses (a
`ScheduleError`) also means "does not fit", so no rule ever raises on a function it cannot handle. An empty
function (a loop of extent 0) fits only rules that say `serves_empty`: splitting or fusing an empty loop divides by
zero, and its naive loops run zero times anyway. A rule that says `divides_by_reciprocal` schedules the function
with its float32 divisions by constants turned into products (the convs' hardswish and hard-sigmoid epilogues).
"""

import logging
import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.sym import detect_linear_equation
from tvm.target import Target

from ..kernels.pwl import PARALLEL_WORK_ATTR
from ..kernels.segments_op import bind_register_width
from .vector_math import divisions_as_products, vectorizable_math

logger = logging.getLogger(__name__)

# A block a rule marks with this (MetaSchedule's key) repacks a weight: the `tvm_lut` pipeline splits it into a
# function of its own and folds it on constant weights, so it is not part of what a model runs.
WEIGHT_PREPACK = "meta_schedule.layout_rewrite_preproc"
# A loop with this annotation is split where a condition on its variable changes (TVM's LoopPartition pass): a
# padding's border apart from its interior, which becomes a plain copy.
PARTITION_HINT = "pragma_loop_partition_hint"


def for_target(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """`func` as the CPU rules compile it for `target`: float32 exp and erf as vector arithmetic
    (`vector_math`), table lookups bound to the target's registers (`segments_op.bind_register_width`)."""
    return bind_register_width(vectorizable_math(func), target)


class CPURule(ScheduleRule):
    """A schedule rule for LLVM (CPU) targets; see the module docstring for the contract."""

    serves_empty = False  # whether `schedule` handles loops of extent 0
    # whether divisions by constants become products with reciprocals (`vector_math.divisions_as_products`)
    divides_by_reciprocal = False

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        func = for_target(func, target)
        if self.divides_by_reciprocal:
            func = divisions_as_products(func)
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if not blocks or (not self.serves_empty and _has_empty_loop(sch, blocks)):
            return None
        try:
            return self.schedule(sch, blocks, target)
        except s_tir.ScheduleError as err:
            logger.debug("%s does not fit: %s", type(self).__name__, err)
            return None

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        raise NotImplementedError


def _has_empty_loop(sch: s_tir.Schedule, blocks: list[SBlockInfo]) -> bool:
    """A loop of extent 0 in any block."""
    return any(static_extent(sch, loop) == 0 for info in blocks for loop in sch.get_loops(info.block_rv))


def the_reduction(blocks: list[SBlockInfo]) -> SBlockInfo | None:
    """The one reduction block of a function (a conv's, a matmul's), or None when it has none or several."""
    reductions = [info for info in blocks if not info.is_injective()]
    return reductions[0] if len(reductions) == 1 else None


def static_extent(sch: s_tir.Schedule, loop) -> int | None:
    """The loop's extent if it is a constant, else None."""
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def output_shape(sch: s_tir.Schedule, block) -> list[int]:
    """The static shape of the buffer the block writes."""
    return [int(d) for d in sch.get(block).writes[0].source.shape]


def output_dtype(sch: s_tir.Schedule, block) -> str:
    writes = sch.get(block).writes
    return str(writes[0].source.dtype) if writes else "float32"


def inline_injective(sch: s_tir.Schedule, blocks: list[SBlockInfo], keep=()) -> list[SBlockInfo]:
    """Inline every injective block that can be (producers forward, then consumers backward); return the rest.

    A producer is inlined only into a single consumer, so no element is computed twice. Blocks in `keep` stay.
    """
    remaining = list(blocks)
    changed = True
    while changed:
        changed = False
        for info in list(remaining):
            if not info.is_injective() or len(remaining) == 1 or info in keep:
                continue
            if _try(sch.compute_inline, info.block_rv, single_consumer=sch) or (
                _reads_producers_one_to_one(sch, info.block_rv) and not _producers_initialize(sch, info.block_rv)
                and _try(sch.reverse_compute_inline, info.block_rv)
            ):
                remaining.remove(info)
                changed = True
    return remaining


def _producers_initialize(sch: s_tir.Schedule, block_rv) -> bool:
    """Whether a producer of the block has an init statement: a reduction whose reduced axes all have extent 1 (a 1x1
    conv of one input channel), which dlight's normalization calls injective. TVM 0.27's `reverse_compute_inline`
    inlines a consumer into both its init and its update, so the epilogue (bias, ReLU) is applied twice."""
    return any(sch.get(producer).init is not None for producer in sch.get_producers(block_rv))


def _reads_producers_one_to_one(sch: s_tir.Schedule, block_rv) -> bool:
    """Whether the block reads each intermediate buffer one to one: every spatial iterator of the block indexes it
    once, other indices are constants into dimensions of extent 1 (`y[0, i, j]` of an `(i, j)` block), as reverse
    inlining needs. A broadcast read (`gate[n, c, 0, 0]` of an `(n, c, h, w)` block, a squeeze-and-excitation gate)
    makes TVM 0.27's `reverse_compute_inline` fail an internal check instead of refusing with a `ScheduleError`, so
    such a block is not tried.
    """
    block = sch.get(block_rv)
    produced = [write.source for producer in sch.get_producers(block_rv) for write in sch.get(producer).writes]
    spatial = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    for read in block.reads:
        if not any(read.source.same_as(buffer) for buffer in produced):
            continue
        axes = []
        for index, extent in zip((r.min for r in read.region), read.source.shape):
            axis = next((k for k, var in enumerate(spatial) if index.same_as(var)), None)
            unit = isinstance(index, tirx.IntImm) and isinstance(extent, tirx.IntImm) and int(extent) == 1
            if axis is None and not unit:
                return False
            axes += [] if axis is None else [axis]
        if sorted(axes) != list(range(len(spatial))):
            return False
    return True


def _try(primitive, block, single_consumer: s_tir.Schedule | None = None) -> bool:
    if single_consumer is not None and len(single_consumer.get_consumers(block)) > 1:
        return False
    try:
        primitive(block)
    except (s_tir.ScheduleError, tvm.error.InternalError):  # InternalError: TVM's index analysis gave up (Swin's
        return False  # strided slices of a reshape); the block then stays a stage of its own
    return True


def read_stride(sch: s_tir.Schedule, block_rv, var: tirx.Var) -> int | None:
    """The largest step the inputs' last index takes per step of `var` (None if not a constant)."""
    block = sch.get(block_rv)
    steps = []
    for read in block.reads:
        if read.source.same_as(block.writes[0].source):
            continue
        coefficient = detect_linear_equation(read.region[-1].min, [var])
        if len(coefficient) != 2 or not isinstance(coefficient[0], tirx.IntImm):
            return None
        steps.append(abs(int(coefficient[0])))
    return max(steps, default=0)


def largest_divisor(extent: int | None, limit: int) -> int:
    """The largest power of two <= limit dividing `extent` (1 when the extent is symbolic)."""
    if extent is None:
        return 1
    lanes = limit
    while lanes > 1 and extent % lanes:
        lanes //= 2
    return lanes


def vector_width(extent: int | None, lanes: int) -> int:
    """Elements per vector along a loop of `extent`: a power of two if one of at least half a register divides it,
    else the largest divisor up to `lanes` (7 for the 7- and 49-long rows of 7x7 maps, where no power of two
    above 1 divides: LLVM fills a 7-element vector into one register, a 49-element one into four)."""
    power = largest_divisor(extent, lanes)
    if extent is None or 2 * power >= lanes:
        return power
    return max(d for d in range(1, lanes + 1) if extent % d == 0)


def vectorize_innermost(sch: s_tir.Schedule, loop, lanes: int, row: int | None = None):
    """Split `loop` so its inner part is one SIMD vector and vectorize it; returns the outer loop.

    Uses the largest power-of-two factor of the extent that fits `lanes` (and divides `row`, the innermost
    dimension of a fused loop, so a vector never straddles two rows of a broadcast), so no tail predicate is
    needed; a loop with no such factor (or a symbolic extent) is left scalar.
    """
    factor = largest_divisor(static_extent(sch, loop), lanes)
    if row is not None:
        factor = largest_divisor(row, factor)
    if factor < 2:
        return loop
    outer, inner = sch.split(loop, factors=[None, factor])
    sch.vectorize(inner)
    return outer


def parallel_pays(work: int | None, target: Target) -> bool:
    """Whether `work` (multiply-adds or elements; None: unknown, taken as large) pays for a thread launch on
    `target`: it has several cores and the work reaches its `CPUParams.min_parallel_work`."""
    from ..target import cpu_params, num_cores

    return num_cores(target) > 1 and (work is None or work >= cpu_params(target).min_parallel_work)


def parallelize(sch: s_tir.Schedule, loop, work: int | None, target: Target) -> None:
    """Mark `loop` parallel if the function does enough work to pay for the thread launch (`parallel_pays`)."""
    extent = static_extent(sch, loop)
    if parallel_pays(work, target) and (extent is None or extent > 1):
        sch.parallel(loop)


def serial_unless_parallel_pays(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """A hand-scheduled kernel (`tirx.is_scheduled`, its loops marked parallel where it wrote them) with every
    parallel loop made serial when its work does not pay for a thread launch on `target` (`parallel_pays`: one
    core, or less work than `min_parallel_work`); else unchanged. The work is what the kernel states
    (`PARALLEL_WORK_ATTR`), else the elements of its largest buffer (the data a row kernel streams)."""
    stated = func.attrs.get(PARALLEL_WORK_ATTR) if func.attrs is not None else None
    shapes = [param.shape for param in func.params if hasattr(param, "shape")]  # the buffer parameters
    if stated is not None:
        work = int(stated)
    elif all(isinstance(d, tirx.IntImm) for shape in shapes for d in shape):
        work = max((math.prod(int(d) for d in shape) for shape in shapes), default=0)
    else:
        work = None  # run-time shapes: unknown, taken as large
    if parallel_pays(work, target):
        return func

    def serial(loop):
        if loop.kind != tirx.ForKind.PARALLEL:
            return loop
        return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.SERIAL, loop.body, loop.thread_binding,
                        loop.annotations, loop.step)

    return tvm_ffi.structural_map(func, (tirx.For, serial), order="post")
