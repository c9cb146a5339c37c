"""Build and run the PQ kernels on packed operands (test helper for the pq and intrinsic tests)."""

import numpy as np
import tvm

from schedules import host_target
from schedules.intrin import lookup_intrin
from schedules.kernels.pq_encode import pack_centroids, pq_encode_func
from schedules.kernels.pq_lookup import LookupLayout, pack_table, pq_lookup_func

TARGET = host_target()
INTRIN = lookup_intrin(TARGET)


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


def run_lookup(codes, table, scale, bias, intrin=INTRIN, execute=execute_here, columns=False):
    """The compiled lookup kernel on unpacked operands: codes (N, C), table (C, K, M), scale (M,) or one for all
    -> (N, M) float32 (written (M, N) by the kernel with `columns`, returned transposed)."""
    layout = LookupLayout(codes.shape[0], table.shape[0], table.shape[1], table.shape[2], intrin.lanes)
    bias = np.zeros(table.shape[2], np.float32) if bias is None else bias
    scale = np.broadcast_to(np.asarray(scale, np.float32), (table.shape[2],))
    out_shape = (layout.outputs, codes.shape[0]) if columns else (codes.shape[0], layout.outputs)
    arrays = [pack_codes(codes, layout), pack_table(table, layout), scale, bias, np.zeros(out_shape, np.float32)]
    out = execute(pq_lookup_func(layout, intrin, columns=columns), arrays)[-1]
    return out.T if columns else out


def run_encode(x, centroids, lanes=None, source=None, execute=execute_here):
    """The compiled encode kernel: x (N, C*V) (or a conv input with `source`), centroids (C, K, V) -> codes (N, C)."""
    num_codebooks, num_centroids, sub_len = centroids.shape
    rows = x.shape[0] if source is None else source.rows
    layout = LookupLayout(rows, num_codebooks, num_centroids, 1, lanes or INTRIN.lanes)
    arrays = [x, pack_centroids(centroids, layout), np.full(layout.codes_shape, 255, np.uint8)]
    return unpack_codes(execute(pq_encode_func(layout, sub_len, source), arrays)[-1], rows, num_codebooks)
