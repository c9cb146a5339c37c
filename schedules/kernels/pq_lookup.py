"""LUT-NN lookup-accumulate kernel: `y[n, m] = scale[m] * sum_c table[c, codes[n, c], m] + bias[m]`, tensorized.

Layouts (packed once, at compile time, by `pack_table`; the codes come from `pq_encode` already packed):
- codes  (NB, CP, L) uint8: row block, codebook, row within the block; L = the intrinsic's lanes (rows per
  shuffle), NB = ceil(N / L). Rows past N are padding and never stored.
- table  (M, CP, 16) int8: per output and codebook one 16-entry table (one shuffle register); K < 16 is padded with
  zeros, and codebooks past C (CP = CB * CS) are all-zero so they add nothing.
- y      (N, M) float32, or (M, N) with `columns` (a conv: output channels by pixels, NCHW for one image). The
  accumulators hold 8 rows of one output per vector, so columns are stored as they are; rows are first
  transposed with shuffles.

Accumulation is exact: int8 entries are summed in int16 over blocks of CS <= 256 codebooks (256 * 127 < 2^15, so
no int8 table can overflow them), the blocks in int32, then `float32(acc) * scale + bias`, both per output (scale:
one per table column, so an outlier column does not round the others to zero; a vector multiply per 8 rows).

Schedule (carried by the kernel; the function is marked `tirx.is_scheduled` so CPU schedule rules skip it): row
blocks x output tiles of `m_tile` outputs run in parallel (row blocks outermost, unless `split_outputs`); each tile
keeps `m_tile` int16 accumulators of L lanes in registers while it walks the codebooks, loading each block of codes
once per tile; the inner `L x 16` lookup is tensorized with the target's intrinsic (`schedules.intrin`).
"""

import functools
import operator
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir
from tvm.script import tirx as T

from ..intrin import TABLE_ENTRIES, LookupIntrin
from .pwl import PARALLEL_WORK_ATTR

# How a PQ lookup's parallel loop splits its work between threads ("rows" or "outputs"): each thread takes a
# contiguous range of it, so this says which part of the output a thread writes.
SPLIT_ATTR = "tvm_lut.split"

INT16_BLOCK = 256  # codebooks an int16 sum can take whatever the int8 entries are (tvm_lut.pq.quantize says the same)


@dataclass(frozen=True)
class PQLayerSizes:
    """Sizes of one PQ layer, checked once for every lookup kernel's layout: N rows, C codebooks (K centroids each),
    M outputs, and the encode kernel's row block of L lanes."""

    rows: int
    codebooks: int
    centroids: int
    outputs: int
    lanes: int

    def __post_init__(self):
        for name in ("rows", "codebooks", "centroids", "outputs", "lanes"):
            if not isinstance(getattr(self, name), (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {getattr(self, name)!r}")
        if self.rows < 0 or self.codebooks < 1 or self.outputs < 1 or self.lanes < 1:
            raise ValueError(f"invalid PQ layer sizes: {self}")
        if not 1 <= self.centroids <= TABLE_ENTRIES:
            raise ValueError(f"K = {self.centroids} centroids: the lookup kernels serve 1 <= K <= {TABLE_ENTRIES} "
                             "(one shuffle register of int8 entries)")

    @property
    def lookups(self) -> int:
        """Table entries one call adds up: N x C x M (its work, `pwl.PARALLEL_WORK_ATTR`)."""
        return self.rows * self.codebooks * self.outputs

    @property
    def row_blocks(self) -> int:
        """The encode kernel's blocks of `lanes` rows."""
        return -(-self.rows // self.lanes)


@dataclass(frozen=True)
class LookupLayout(PQLayerSizes):
    """This kernel's packed operands (module docstring) for one PQ layer's sizes."""

    @property
    def int16_blocks(self) -> int:
        return -(-self.codebooks // INT16_BLOCK)

    @property
    def block_codebooks(self) -> int:
        """Codebooks per int16 block: C split evenly, so padding stays below one codebook per block."""
        return -(-self.codebooks // self.int16_blocks)

    @property
    def padded_codebooks(self) -> int:
        return self.int16_blocks * self.block_codebooks

    @property
    def codes_shape(self) -> tuple[int, int, int]:
        return (self.row_blocks, self.padded_codebooks, self.lanes)

    @property
    def table_shape(self) -> tuple[int, int, int]:
        return (self.outputs, self.padded_codebooks, TABLE_ENTRIES)


def pack_table(table: np.ndarray, layout: LookupLayout) -> np.ndarray:
    """(C, K, M) int8 -> (M, CP, 16) int8, zero-padded in K and C (see the module docstring)."""
    table = np.asarray(table)
    expected = (layout.codebooks, layout.centroids, layout.outputs)
    if table.dtype != np.int8 or table.shape != expected:
        raise ValueError(f"table must be int8 {expected}, got {table.dtype} {table.shape}")
    packed = np.zeros(layout.table_shape, np.int8)
    packed[:, :layout.codebooks, :layout.centroids] = table.transpose(2, 0, 1)
    return packed


def pq_lookup_reference(codes: np.ndarray, table: np.ndarray, scale: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """NumPy reference on unpacked operands: codes (N, C) ints, table (C, K, M) int8, scale (M,) (or one for
    all) -> (N, M) float32.

    The sum is exact (int64); the epilogue is the kernel's: `float32(acc) * float32(scale) + bias` in float32.
    """
    codes = np.asarray(codes, dtype=np.int64)
    acc = np.zeros((codes.shape[0], table.shape[2]), np.int64)
    for c in range(table.shape[0]):
        acc += table[c, codes[:, c]].astype(np.int64)
    out = acc.astype(np.float32) * np.asarray(scale, np.float32)
    return out if bias is None else out + np.asarray(bias, np.float32)


def _eight_rows(acc16, blocks: int, output, row):
    """The int32 sums over the int16 blocks of one output's accumulators, for 8 rows from `row`."""
    parts = [tvm.tirx.Cast("int32x8", acc16.vload([b, output, row], "int16x8")) for b in range(blocks)]
    return functools.reduce(operator.add, parts)


def _tiled_lookup(layout: LookupLayout, m_tile: int, columns: bool, split_outputs: bool):
    """The lookup stated as the intrinsics' one-hot select, in tiles of `lanes` rows x `m_tile` outputs; `y` is
    (N, M), or (M, N) with `columns`. The parallel loop runs row blocks outermost, or output tiles with
    `split_outputs` (so each thread's contiguous range of it holds rows, or outputs).

    Each tile is a block that allocates its own accumulators, so they live in registers: TVM places a
    buffer at the root of a function under a parallel loop whole, in memory, otherwise. Their scope is "global":
    TVM 0.27 gives a "local" buffer of any size a heap workspace (an allocation per tile), a small "global" one the
    stack.
    """
    num_rows, outputs, lanes = layout.rows, layout.outputs, layout.lanes
    row_blocks, blocks, per_block = layout.row_blocks, layout.int16_blocks, layout.block_codebooks
    m_tiles, padded = outputs // m_tile, layout.padded_codebooks
    blocks_divisor = max(row_blocks, 1)  # no rows: no tiles

    @T.prim_func(s_tir=True)
    def pq_lookup(codes: T.Buffer(layout.codes_shape, "uint8"), table: T.Buffer(layout.table_shape, "int8"),
                  scale: T.Buffer((outputs,), "float32"), bias: T.Buffer((outputs,), "float32"),
                  y: T.Buffer((outputs, num_rows) if columns else (num_rows, outputs), "float32")):
        T.func_attr({"tirx.noalias": True})
        for tile in T.parallel(row_blocks * m_tiles):
            with T.sblock("tile"):
                nb = T.axis.spatial(row_blocks, tile % blocks_divisor if split_outputs else tile // m_tiles)
                mo = T.axis.spatial(m_tiles, tile // blocks_divisor if split_outputs else tile % m_tiles)
                T.reads(codes[nb, 0:padded, 0:lanes], table[mo * m_tile:mo * m_tile + m_tile, 0:padded, 0:TABLE_ENTRIES],
                        scale[mo * m_tile:mo * m_tile + m_tile], bias[mo * m_tile:mo * m_tile + m_tile])
                if columns:
                    T.writes(y[mo * m_tile:mo * m_tile + m_tile, nb * lanes:nb * lanes + lanes])
                else:
                    T.writes(y[nb * lanes:nb * lanes + lanes, mo * m_tile:mo * m_tile + m_tile])
                acc16 = T.alloc_buffer((blocks, m_tile, lanes), "int16")
                for cb, c, mi, i, k in T.grid(blocks, per_block, m_tile, lanes, TABLE_ENTRIES):
                    with T.sblock("lookup"):
                        vcb, vc, vmi, vi, vk = T.axis.remap("SRSSR", [cb, c, mi, i, k])
                        with T.init():
                            acc16[vcb, vmi, vi] = T.int16(0)
                        acc16[vcb, vmi, vi] = acc16[vcb, vmi, vi] + T.Select(
                            T.Cast("int32", codes[nb, vcb * per_block + vc, vi]) == vk,
                            T.Cast("int16", table[mo * m_tile + vmi, vcb * per_block + vc, vk]), T.int16(0))
                if columns:  # 8 rows of one output at a time: widened, scaled, stored along the output's row
                    for j, ib in T.grid(m_tile, lanes // 8):
                        with T.sblock("scale"):
                            vj, vib = T.axis.remap("SS", [j, ib])
                            T.where(nb * lanes + ib * 8 < num_rows)
                            T.reads(acc16[0:blocks, vj, vib * 8:vib * 8 + 8], scale[mo * m_tile + vj],
                                    bias[mo * m_tile + vj])
                            T.writes(y[mo * m_tile + vj, nb * lanes + vib * 8:nb * lanes + vib * 8 + 8])
                            row = nb * lanes + vib * 8
                            values = T.Cast("float32x8", _eight_rows(acc16, blocks, vj, vib * 8)) * T.Broadcast(
                                scale[mo * m_tile + vj], 8) + T.Broadcast(bias[mo * m_tile + vj], 8)
                            if row + 8 <= num_rows:
                                y[mo * m_tile + vj, T.ramp(row, 1, 8)] = values
                            else:  # the last rows: lane by lane, none past N
                                for r in T.unroll(8):  # constant lane indices for the shuffle
                                    if row + r < num_rows:
                                        y[mo * m_tile + vj, row + r] = T.Shuffle([values], [r])
                else:
                    # 8 rows of every output at a time: widened, transposed with shuffles, scaled, stored as rows
                    for ib, r in T.grid(lanes // 8, 8):
                        with T.sblock("scale"):
                            vib, vr = T.axis.remap("SS", [ib, r])
                            T.where(nb * lanes + ib * 8 + r < num_rows)
                            T.reads(acc16[0:blocks, 0:m_tile, vib * 8:vib * 8 + 8],
                                    scale[mo * m_tile:mo * m_tile + m_tile], bias[mo * m_tile:mo * m_tile + m_tile])
                            T.writes(y[nb * lanes + vib * 8 + vr, mo * m_tile:mo * m_tile + m_tile])
                            y[nb * lanes + vib * 8 + vr, T.ramp(mo * m_tile, 1, m_tile)] = T.Shuffle(
                                [T.Cast("float32x8", _eight_rows(acc16, blocks, j, vib * 8)) for j in range(m_tile)],
                                [j * 8 + vr for j in range(m_tile)]
                            ) * scale[T.ramp(mo * m_tile, 1, m_tile)] + bias[T.ramp(mo * m_tile, 1, m_tile)]

    return pq_lookup


def output_tile(outputs: int, preferred: int) -> int:
    """The largest divisor of `outputs` not above `preferred` (M need not be a power of two)."""
    return max(t for t in range(1, min(preferred, outputs) + 1) if outputs % t == 0)


def pq_lookup_func(layout: LookupLayout, intrin: LookupIntrin, m_tile: int = 8, columns: bool = False,
                   split_outputs: bool = False) -> tvm.tirx.PrimFunc:
    """The scheduled, tensorized lookup-accumulate PrimFunc `(codes, table, scale, bias) -> y` for `layout`: y is
    (N, M), or (M, N) with `columns` (a conv's output channels by pixels: NCHW for one image, no transpose).
    `split_outputs`: threads split the outputs, not the rows (`relay_passes.thread_split`).

    `layout.lanes` must be `intrin.lanes`. `m_tile` outputs share one load of the codes; their accumulators must fit
    the registers (8 for AVX2's 16 ymm registers at 32 lanes). An M it does not divide uses its largest divisor.
    """
    if layout.lanes != intrin.lanes:
        raise ValueError(f"layout has {layout.lanes} lanes but {intrin.name} looks up {intrin.lanes} rows at once")
    sch = s_tir.Schedule(_tiled_lookup(layout, output_tile(layout.outputs, m_tile), columns, split_outputs))
    lookup, epilogue = sch.get_sblock("lookup"), sch.get_sblock("scale")
    _, c, m_inner, i, _ = sch.get_loops(lookup)
    sch.decompose_reduction(lookup, c)
    sch.tensorize(i, intrin.name)
    sch.unroll(m_inner)
    for loop in sch.get_loops(epilogue)[-2:]:  # constant shuffle indices
        sch.unroll(loop)
    return sch.mod["main"].with_attrs({"tirx.is_scheduled": True, "tvm_lut.kernel": "pq_lookup",
                                       PARALLEL_WORK_ATTR: layout.lookups,
                                       SPLIT_ATTR: "outputs" if split_outputs else "rows"})
