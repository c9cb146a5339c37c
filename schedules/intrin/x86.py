"""x86 lookup-accumulate intrinsics: `vpshufb` on a 16-entry int8 table copied into every 128-bit lane.

AVX2 looks up 32 rows per instruction (`llvm.x86.avx2.pshuf.b`), AVX-512BW 64 (`llvm.x86.avx512.pshuf.b.512`).
The looked-up int8 values are sign-extended to int16 and added to the accumulators (`vpmovsxbw` + `vpaddw`).
Codes are in [0, 16), so the shuffle's "high bit set -> zero" rule never fires.
"""

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from . import TABLE_ENTRIES, LookupIntrin, lookup_accumulate_desc


def _pshufb_impl(lanes: int, llvm_intrinsic: str):
    copies = lanes // TABLE_ENTRIES
    vector = f"int8x{lanes}"

    @T.prim_func(s_tir=True)
    def impl(
        table: T.Buffer((TABLE_ENTRIES,), "int8", offset_factor=1),
        codes: T.Buffer((lanes,), "uint8", offset_factor=1),
        acc: T.Buffer((lanes,), "int16", offset_factor=1),
    ):
        with T.sblock("root"):
            T.reads(acc[0:lanes], codes[0:lanes], table[0:TABLE_ENTRIES])
            T.writes(acc[0:lanes])
            # No named temporaries: TVMScript would give each one a buffer in memory.
            acc[T.ramp(0, 1, lanes)] = acc[T.ramp(0, 1, lanes)] + T.Cast(f"int16x{lanes}", T.call_llvm_pure_intrin(
                vector, llvm_intrinsic,
                T.Shuffle([table[T.ramp(0, 1, TABLE_ENTRIES)]] * copies, list(range(TABLE_ENTRIES)) * copies),
                T.reinterpret(vector, codes[T.ramp(0, 1, lanes)])))

    return impl


AVX2_LOOKUP = LookupIntrin("tvm_lut.pq_lookup_avx2", 32, ("avx2",), "x86_64")
AVX512_LOOKUP = LookupIntrin("tvm_lut.pq_lookup_avx512", 64, ("avx512bw",), "x86_64")

for _intrin, _llvm in ((AVX2_LOOKUP, "llvm.x86.avx2.pshuf.b"), (AVX512_LOOKUP, "llvm.x86.avx512.pshuf.b.512")):
    TensorIntrin.register(_intrin.name, lookup_accumulate_desc(_intrin.lanes), _pshufb_impl(_intrin.lanes, _llvm),
                          override=True)
