"""Build and run the PQ kernels on packed operands (test helper for the pq and intrinsic tests)."""

import numpy as np
import tvm

from schedules import host_target
from schedules.intrin import lookup_intrin
from schedules.rules.common import for_target
from schedules.kernels.pq_encode import pack_centroids, pq_encode_func
from schedules.kernels.pq_lookup import LookupLayout, pack_table, pq_lookup_func
from schedules.kernels.pq_lookup_dot import (DotLookupLayout, dot_lookup_supported, pack_codes_dot, pack_table_dot,
                                             pq_lookup_dot_func)

TARGET = host_target()
INTRIN = lookup_intrin(TARGET)
DOT_LOOKUP = INTRIN is not None and dot_lookup_supported(TARGET, 16)  # AVX-512 VBMI + VNNI here


def build(func: tvm.tirx.PrimFunc, target=TARGET):
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)


def unpack_codes(packed: np.ndarray, rows: int, codebooks: int) -> np.ndarray:
    """(NB, CP, L) -> (N, C)."""
    return packed.transpose(0, 2, 1).reshape(-1, packed.shape[1])[:rows, :codebooks].astype(np.int64)


def pack_codes(codes: np.ndarray, layout: LookupLayout) -> np.ndarray:
    """(N, C) -> (NB, CP, L), padding rows and codebooks with code 0."""
    packed = np.zeros((layout.row_blocks * layout.lanes, layout.padded_codebooks), np.uint8)
    packed[:codes.shape[0], :codes.shape[1]] = codes
    blocks = packed.reshape(layout.row_blocks, layout.lanes, layout.padded_codebooks)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1))


def execute_here(func: tvm.tirx.PrimFunc, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Compile `func` for this CPU and run it on `arrays` (the last one is the output); return them all."""
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    build(func)["main"](*tensors)
    return [t.numpy() for t in tensors]


def run_lookup(codes, table, scale, bias, intrin=INTRIN, execute=execute_here, columns=False, split_outputs=False):
    """The compiled lookup kernel on unpacked operands: codes (N, C), table (C, K, M), scale (M,) or one for all
    -> (N, M) float32 (written (M, N) by the kernel with `columns`, returned transposed); `split_outputs` as the
    kernel's."""
    layout = LookupLayout(codes.shape[0], table.shape[0], table.shape[1], table.shape[2], intrin.lanes)
    bias = np.zeros(table.shape[2], np.float32) if bias is None else bias
    scale = np.broadcast_to(np.asarray(scale, np.float32), (table.shape[2],))
    out_shape = (layout.outputs, codes.shape[0]) if columns else (codes.shape[0], layout.outputs)
    arrays = [pack_codes(codes, layout), pack_table(table, layout), scale, bias, np.zeros(out_shape, np.float32)]
    out = execute(pq_lookup_func(layout, intrin, columns=columns, split_outputs=split_outputs), arrays)[-1]
    return out.T if columns else out


def run_encode(x, centroids, lanes=None, source=None, execute=execute_here, dot=False, threads=1):
    """The compiled encode kernel: x (N, C*V) (or a conv input with `source`), centroids (C, K, V) -> codes (N, C);
    with `dot`, written in the dot-product lookup's layout (and unpacked from it); built for `threads` threads."""
    num_codebooks, num_centroids, sub_len = centroids.shape
    rows = x.shape[0] if source is None else source.rows
    if dot:
        layout = DotLookupLayout(rows, num_codebooks, num_centroids, 16, lanes or INTRIN.lanes)
    else:
        layout = LookupLayout(rows, num_codebooks, num_centroids, 1, lanes or INTRIN.lanes)
    arrays = [x, pack_centroids(centroids, layout), np.full(layout.codes_shape, 255, np.uint8)]
    codes = execute(pq_encode_func(layout, sub_len, source, threads), arrays)[-1]
    return unpack_codes_dot(codes, layout) if dot else unpack_codes(codes, rows, num_codebooks)


def unpack_codes_dot(packed: np.ndarray, layout: DotLookupLayout) -> np.ndarray:
    """(NG, CG, 64) -> (N, C), checking that every padded codebook holds code 0 (its offset alone)."""
    grouped = packed.reshape(layout.row_groups, layout.codebook_groups, 16, 4).transpose(0, 2, 1, 3)
    codes = grouped.reshape(layout.row_groups * 16, layout.padded_codebooks).astype(np.int64)
    codes -= np.arange(layout.padded_codebooks) % 4 * 16
    assert (codes[:, layout.codebooks:] == 0).all()
    return codes[:layout.rows, :layout.codebooks]


def run_lookup_dot(codes, table, scale, bias, lanes=32, activation=None, threads=1, split_outputs=False):
    """The compiled dot-product lookup on unpacked operands (as `run_lookup`) -> (N, M) float32, with its
    `activation` table and the row parts of `threads` threads (or its outputs split, `split_outputs`), built as the
    pipeline builds it (`rules.common.for_target`)."""
    layout = DotLookupLayout(codes.shape[0], table.shape[0], table.shape[1], table.shape[2], lanes)
    bias = np.zeros(table.shape[2], np.float32) if bias is None else bias
    scale = np.broadcast_to(np.asarray(scale, np.float32), (table.shape[2],))
    arrays = [pack_codes_dot(codes, layout), pack_table_dot(table, layout), scale, bias,
              np.zeros((codes.shape[0], layout.outputs), np.float32)]
    return execute_here(for_target(pq_lookup_dot_func(layout, activation, threads, split_outputs), TARGET),
                        arrays)[-1]
