"""Row reductions and what is fused around them: softmax, layer/RMS norm, sums and means, pooling, direct conv.

Fits a function whose blocks (after inlining what can be inlined) share their leading spatial axes, with at least
one reduction block: rows run in parallel over the fused leading axes, every block is computed at that row loop,
injective blocks are vectorized on their inner axes, and each reduction over a single innermost axis is rfactored
into a vector of partial results (one per SIMD lane, zeroed before the loop so it stays in a register) that a
short scalar tail combines (a global pool's (h, w) counts as one axis when it walks whole planes; a 1x1 conv on a
1x1 map, `x[0, c, 0, 0]`, reads c contiguously). A per-row value (a row's mean, LayerNorm's rsqrt, softmax's
reciprocal) stays a stage of its own: rows then go in tiles of one vector, so it is computed for a vector of rows
at once. A reduction over several axes alone (a pooling window, a direct convolution) runs its window for a vector
of outputs along the last spatial axis.
"""

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from ..target import vector_lanes
from .common import PARTITION_HINT, CPURule, inline_injective, largest_divisor, output_dtype, parallelize
from .common import read_stride, static_extent, vector_width, vectorize_innermost
from .elementwise import Elementwise


def _leading_spatial(info: SBlockInfo) -> int:
    kinds = info.dom_kind()
    return len(kinds) - len(kinds.lstrip("S"))


def _size(info: SBlockInfo) -> int | None:
    """A block's iteration count (a reduction's outputs times its reduced extent); None for a dynamic shape."""
    extents = [int(d) if isinstance(d, (int, tirx.IntImm)) else None for d in info.dom()]
    return None if None in extents else math.prod(extents)


def _iterations(blocks: list[SBlockInfo]) -> int | None:
    """The largest stage's iteration count: the work a thread launch is weighed against (`parallelize`)."""
    sizes = [_size(info) for info in blocks]
    return None if None in sizes else max(sizes)


def _is_unit(extent) -> bool:
    return isinstance(extent, (int, tirx.IntImm)) and int(extent) == 1


def _reads_contiguously(sch: s_tir.Schedule, info: SBlockInfo) -> bool:
    """Whether every input that varies with the reduction axis walks its last dimension with it (a vector load per
    step); inputs that do not depend on the axis (a row's mean) are loop-invariant and do not count.

    A reduction over a strided axis (a column sum, `x @ w` with one row) would gather each lane: slower than the
    scalar loop, so it is not rfactored.
    """
    block = sch.get(info.block_rv)
    axis = info.iters[-1].var
    inputs = [r for r in block.reads if not r.source.same_as(block.writes[0].source)]
    varying = [r for r in inputs if any(v.same_as(axis) for d in r.region for v in tirx.analysis.undefined_vars(d.min))]
    return bool(varying) and all(_innermost_index(r).same_as(axis) for r in varying)


def _reads_whole_planes(sch: s_tir.Schedule, info: SBlockInfo) -> bool:
    """Whether a reduction over its last two axes (h, w) reads every input that varies with them as whole
    trailing planes `x[..., h, w]` (w spanning the last dimension): the two axes are then one contiguous run, and
    a global average pool reduces it in vectors like a row."""
    if info.dom_kind().count("R") != 2 or not info.dom_kind().endswith("RR"):
        return False
    block = sch.get(info.block_rv)
    h, w = (it.var for it in info.iters[-2:])
    width = info.dom()[-1]
    for read in block.reads:
        if read.source.same_as(block.writes[0].source):
            continue
        indices = [r.min for r in read.region]
        used = {v for index in indices for v in tirx.analysis.undefined_vars(index)}
        if not any(v.same_as(h) or v.same_as(w) for v in used):
            continue
        if len(indices) < 2 or not (indices[-2].same_as(h) and indices[-1].same_as(w)):
            return False
        if not isinstance(width, (int, tirx.IntImm)) or int(read.source.shape[-1]) != int(width):
            return False
    return True


def _innermost_index(read):
    """The index of the innermost dimension of a read that is not of extent 1: the one whose steps are
    contiguous (a 1x1 conv on a 1x1 map, a squeeze-and-excitation gate's, reads `x[0, c, 0, 0]`)."""
    shape = read.source.shape
    dims = [k for k, extent in enumerate(shape) if not _is_unit(extent)]
    return read.region[dims[-1] if dims else -1].min


def _loops_by_iter(sch: s_tir.Schedule, block) -> list:
    """The loops of `block` in the order of the block's iterators (each bound to one loop variable)."""
    loops = sch.get_loops(block)
    realize = sch.get(loops[-1]).body
    while not isinstance(realize, s_tir.SBlockRealize):
        realize = realize.body
    by_var = {sch.get(loop).loop_var: loop for loop in loops}
    return [next(rv for var, rv in by_var.items() if value.same_as(var)) for value in realize.iter_values]


def _per_row_values(sch: s_tir.Schedule, blocks: list[SBlockInfo]) -> list[SBlockInfo]:
    """The injective blocks computed from a reduction that compute fewer values than the output (LayerNorm's
    rsqrt per row, a squeeze-and-excitation gate per channel): inlined, each would be recomputed for every element
    it broadcasts to."""
    output = blocks[-1]
    width = _leading_spatial(output)

    downstream, kept = set(), []
    for info in blocks:  # in program order: producers first
        producers = {sch.get(p).name_hint for p in sch.get_producers(info.block_rv)}
        if not info.is_injective() or producers & downstream:
            downstream.add(sch.get(info.block_rv).name_hint)
        if info.is_injective() and producers & downstream and (
            len(info.dom()) < width or (None not in (_size(info), _size(output)) and _size(info) < _size(output))
        ):
            kept.append(info)
    return kept


def _shared_rows(blocks: list[SBlockInfo], rows: int) -> int:
    """How many of the first `rows` axes every block shares, extent for extent: the rows that run in parallel (an
    (n, c) gate computed from a (n, c, 1, 1) reduction and applied to (n, c, h, w) features shares two)."""
    doms = [[str(d) for d in info.dom()[:rows]] for info in blocks]
    shared = 0
    while shared < rows and len({dom[shared] for dom in doms}) == 1:
        shared += 1
    return shared


class Reduction(CPURule):
    """Rows in parallel, reductions vectorized through rfactor, injective stages vectorized."""

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        if all(info.is_injective() for info in blocks):
            return None
        # A per-row value computed from a reduction (LayerNorm's rsqrt, softmax's reciprocal) stays a stage of its
        # own, once per row: inlined, it would sit in the per-element loop and rely on LLVM to hoist it.
        blocks = inline_injective(sch, blocks, keep=_per_row_values(sch, blocks))
        if any(set(info.dom_kind().lstrip("S")) - {"R"} for info in blocks):  # spatial axes first, then reductions
            return None
        leading = min(_leading_spatial(info) for info in blocks)
        rows = _shared_rows(blocks, leading)
        lanes = vector_lanes(target, output_dtype(sch, blocks[-1].block_rv))
        if rows == 0 < leading:
            # One row (a softmax over (1, n)): the reductions keep a unit row axis that the elementwise stages lack.
            # Every stage runs once, in place; the elementwise ones vectorized, the reductions as scalar loops.
            # Rows of other extents (a softmax over a leading axis): every stage on its own.
            if not all(_is_unit(d) for info in blocks if not info.is_injective() for d in info.dom()[:leading]):
                return self._apart(sch, blocks, lanes, target)
            return self._place(sch, blocks, 0, lanes, target, tile_rows=False, rfactor=False)
        single_row = all(_is_unit(d) for d in blocks[0].dom()[:rows])
        window = blocks[0].dom_kind().count("R") > 1 and not _reads_whole_planes(sch, blocks[0])
        if len(blocks) == 1 and window and rows >= 2:  # a pooling window (a global pool is a row: `_rfactor`)
            return self._window(sch, blocks[0], rows, lanes, target)
        if single_row and any(info.dom_kind().count("R") > 1 for info in blocks):
            return None  # no rows to run in parallel and no single reduction axis to vectorize

        if not single_row and any(self._ragged(sch, info, lanes) for info in blocks if not info.is_injective()):
            return self._ragged_rows(sch, blocks, rows, lanes, target)
        # With per-row values (LayerNorm's rsqrt, softmax's reciprocal), rows go in tiles of one vector: every stage
        # but the output runs over the tile's rows, so a per-row value is computed for a vector of rows at once
        # (a tile's rows stay in L1 for the output pass). Where the tiled form does not fit, rows go one by one.
        if any(info.is_injective() and len(info.dom()) == rows for info in blocks[:-1]):
            tiled = sch.copy()
            try:
                return self._place(tiled, blocks, rows, lanes, target, tile_rows=True)
            except s_tir.ScheduleError:
                pass
        return self._place(sch, blocks, rows, lanes, target, tile_rows=False)

    def _place(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], rows: int, lanes: int, target: Target,
               tile_rows: bool, rfactor: bool = True) -> s_tir.Schedule:
        """Rows in parallel (in tiles of one vector with `tile_rows`), every stage at the row loop, vectorized."""
        # Split each innermost reduction into per-lane partial results before the blocks move under the row loop
        # (rfactor under that loop would hoist the partials into a loop nest of their own, all rows first).
        stages = []  # (block, kind) in program order; kind: "injective", "partial", "reduce"
        work = _iterations(blocks)  # before rfactor: a row sum's last stage would count rows x lanes only
        for info in blocks:
            if info.is_injective():
                stages.append((info.block_rv, "injective"))
                continue
            partial = self._rfactor(sch, info, lanes) if rfactor else None
            if partial is not None:
                stages.append((partial, "partial"))
            stages.append((info.block_rv, "reduce"))

        anchor_depth, tile = 0, 1
        if rows:  # else a single row (unit dimensions are not iterated): every block stays where it is
            last, _ = stages[-1]
            loops = sch.get_loops(last)
            extents = [static_extent(sch, loop) for loop in loops]
            tile = largest_divisor(extents[rows - 1], lanes) if tile_rows else 1
            row_loops = loops[:rows]
            if tile > 1:  # the tile splits the last row axis alone: fused first, the bindings would not stay affine
                *row_loops, _ = row_loops[:-1] + sch.split(row_loops[-1], factors=[None, tile])
            anchor = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]
            parallelize(sch, anchor, work, target)
            for block, _ in reversed(stages[:-1]):
                sch.compute_at(block, anchor, preserve_unit_loops=True)
            anchor_depth = 1
        for block, kind in stages[:-1]:
            self._vectorize_row(sch, block, sch.get_loops(block)[anchor_depth:], kind, lanes)
        last, kind = stages[-1]
        self._vectorize_row(sch, last, sch.get_loops(last)[anchor_depth + (tile > 1) :], kind, lanes)
        return sch

    @staticmethod
    def _ragged(sch: s_tir.Schedule, info: SBlockInfo, lanes: int) -> bool:
        """Whether a reduction runs over a single contiguous axis longer than a vector that no vector width divides
        (ViT's 197 tokens, a prime: `_place` would leave it scalar). Swin's 49-token windows are not ragged: 7-lane
        vectors divide them, and measured faster than whole vectors with a tail in `_ragged_rows`."""
        extent = static_extent(sch, sch.get_loops(info.block_rv)[-1])
        return (info.dom_kind().count("R") == 1 and extent is not None and extent > lanes
                and vector_width(extent, lanes) < 2 and _reads_contiguously(sch, info))

    def _ragged_rows(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], rows: int, lanes: int,
                     target: Target) -> s_tir.Schedule:
        """Rows whose reduction axis no vector divides, each stage a pass of its own over every row (rows in
        parallel). A reduction goes in whole vectors of partial results and a last, partial vector: the axis is split
        by the vector width with a bound check, and rfactored. The stages stay apart because TVM 0.27's `compute_at`
        drops a split's bound check (the partial vector would read past the row) and `rfactor` refuses a reduction
        that shares its row loop with an earlier stage. An elementwise stage's row is left to LLVM's vectorizer,
        which adds its own tail."""
        for info in blocks:
            loops = sch.get_loops(info.block_rv)
            extents = [static_extent(sch, loop) for loop in loops]
            work = None if None in extents else math.prod(extents)
            if info.is_injective() or not self._ragged(sch, info, lanes):
                row = sch.fuse(*loops[:rows]) if rows > 1 else loops[0]
                parallelize(sch, row, work, target)
                continue
            outer, inner = sch.split(loops[-1], factors=[None, lanes])
            partial = sch.rfactor(inner, factor_axis=rows)
            lane, *row_loops, outer = _loops_by_iter(sch, partial)  # rfactor's iters: lane, rows, outer
            sch.reorder(*row_loops, outer, lane)
            row = sch.fuse(*row_loops) if len(row_loops) > 1 else row_loops[0]
            parallelize(sch, row, work, target)
            sch.annotate(outer, PARTITION_HINT, 1)
            sch.vectorize(lane)
            final = sch.get_loops(info.block_rv)
            parallelize(sch, sch.fuse(*final[:rows]) if rows > 1 else final[0], work, target)
        return sch

    def _apart(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], lanes: int, target: Target) -> s_tir.Schedule:
        """Stages with no row axis in common (a softmax or LayerNorm over a leading axis: the reductions run over
        (4, 5) rows of a (3, 4, 5) tensor, the elementwise stages over all of it), each scheduled on its own: the
        elementwise ones fused, vectorized and parallel, each reduction over a leading axis as a window
        (`_window`: the reduced axis outside, a vector of outputs along the contiguous last axis inside).
        A reduction with a single spatial axis stays a scalar loop."""
        for info in blocks:
            if info.is_injective():
                Elementwise.schedule_block(sch, info.block_rv, target)
            elif _leading_spatial(info) >= 2:
                self._window(sch, info, _leading_spatial(info), lanes, target)
        return sch

    @staticmethod
    def _window(sch: s_tir.Schedule, info: SBlockInfo, rows: int, lanes: int, target: Target) -> s_tir.Schedule:
        """A window reduction (pooling): every spatial axis but the last in parallel; the window's loops go outside
        the last one, so each step updates a row of outputs kept in registers: the whole row as one vector up to
        two registers long, else split in vectors (max pool 2x2, one thread, outputs 32x14x14: 10.3 -> 3.7 us,
        64x7x7: 6.0 -> 1.9). Left scalar, LLVM vectorizes some strided rows better (1.6 us for 32x14x14) and
        others far worse (17 us for 32x8x8 on AVX-512), so the rule does not rely on it.

        A window strided along the row (2x2 pooling with stride 2) would gather every lane: the input row it
        covers is first copied whole, as contiguous vectors, to a local buffer that LLVM keeps in registers, and
        the strided reads pick lanes from it (max pool 2x2: 32x28x28 3.6 -> 3.0 us, 64x14x14 1.9 -> 0.9).
        """
        loops = sch.get_loops(info.block_rv)
        extents = [static_extent(sch, loop) for loop in loops]  # the work: outputs times window
        anchor = sch.fuse(*loops[: rows - 1]) if rows > 2 else loops[0]
        parallelize(sch, anchor, None if None in extents else math.prod(extents), target)
        spatial, *window = loops[rows - 1 :]
        sch.reorder(*window, spatial)
        whole = extents[rows - 1] is not None and extents[rows - 1] <= 2 * lanes

        def vectorize_row(loop):  # returns the loop left outside the vector (the row itself when whole)
            if whole:
                sch.vectorize(loop)
                return loop
            return vectorize_innermost(sch, loop, lanes)

        strided = (read_stride(sch, info.block_rv, info.iters[rows - 1].var) or 1) > 1
        block = sch.get(info.block_rv)
        inputs = [k for k, read in enumerate(block.reads) if not read.source.same_as(block.writes[0].source)]
        if strided and whole and len(window) > 1 and len(inputs) == 1:  # one input (a padding inlined into it)
            row = sch.cache_read(info.block_rv, inputs[0], "local")
            sch.compute_at(row, window[-2])
            sch.vectorize(sch.get_loops(row)[-1])
            sch.unroll(window[-1])
        outer = vectorize_row(spatial)
        if not outer.same_as(spatial):
            sch.reorder(outer, *window)
        init = sch.decompose_reduction(info.block_rv, window[0])
        vectorize_row(sch.get_loops(init)[-1])
        return sch

    @staticmethod
    def _rfactor(sch: s_tir.Schedule, info: SBlockInfo, lanes: int):
        """rfactor the innermost reduction loop by the SIMD width; returns the partial-result block or None."""
        loops = sch.get_loops(info.block_rv)
        reductions = info.dom_kind().count("R")
        if _reads_whole_planes(sch, info):
            loops, reductions = loops[:-2] + [sch.fuse(*loops[-2:])], 1  # a mean over (h, w): one run of h * w
        factor = vector_width(static_extent(sch, loops[-1]), lanes)
        if reductions != 1 or factor < 2 or not _reads_contiguously(sch, info):
            return None
        _, inner = sch.split(loops[-1], factors=[None, factor])
        return sch.rfactor(inner, factor_axis=len(loops) - 1)

    @staticmethod
    def _vectorize_row(sch: s_tir.Schedule, block, loops: list, kind: str, lanes: int) -> None:
        """Vectorize what one row of a block computes (`loops`: its loops below the row loop)."""
        if kind == "injective" and loops:
            row = static_extent(sch, loops[-1])
            if largest_divisor(row, lanes) < vector_width(row, lanes):  # (c, 49) of a 7x7 map's gate multiply
                _, inner = sch.split(loops[-1], factors=[None, vector_width(row, lanes)])
                sch.vectorize(inner)
                return
            inner = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            vectorize_innermost(sch, inner, lanes, row=row)
        elif kind == "partial":
            # compute_at makes one loop per block iter, in iter order, and rfactor puts the lane iter first:
            # (lane, row loops, outer reduction); the row loops are unit ones, or a tile's rows. The lane goes
            # innermost as one vector; its zero-init moves before the reduction loop, so the partial sums stay in a
            # register for the whole row.
            lane, outer = loops[0], loops[-1]
            sch.reorder(*loops[1:], lane)
            sch.vectorize(lane)
            init = sch.decompose_reduction(block, outer)
            sch.vectorize(sch.get_loops(init)[-1])
