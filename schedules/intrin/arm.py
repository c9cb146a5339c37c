"""ARM NEON lookup-accumulate intrinsic: `tbl` on a 16-entry int8 table, 16 rows per instruction.

`llvm.aarch64.neon.tbl1.v16i8` returns 0 for an index >= 16; codes are in [0, 16), so that never happens.
The looked-up int8 values are sign-extended to int16 (`sxtl`/`sxtl2`) and added to the accumulators.
"""

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from . import TABLE_ENTRIES, LookupIntrin, lookup_accumulate_desc

NEON_LOOKUP = LookupIntrin("tvm_lut.pq_lookup_neon", 16, ("neon",), "aarch64")


@T.prim_func(s_tir=True)
def neon_tbl_impl(
    table: T.Buffer((TABLE_ENTRIES,), "int8", offset_factor=1),
    codes: T.Buffer((16,), "uint8", offset_factor=1),
    acc: T.Buffer((16,), "int16", offset_factor=1),
):
    with T.sblock("root"):
        T.reads(acc[0:16], codes[0:16], table[0:TABLE_ENTRIES])
        T.writes(acc[0:16])
        acc[T.ramp(0, 1, 16)] = acc[T.ramp(0, 1, 16)] + T.Cast("int16x16", T.call_llvm_pure_intrin(
            "int8x16", "llvm.aarch64.neon.tbl1.v16i8",
            table[T.ramp(0, 1, TABLE_ENTRIES)], T.reinterpret("int8x16", codes[T.ramp(0, 1, 16)])))


TensorIntrin.register(NEON_LOOKUP.name, lookup_accumulate_desc(NEON_LOOKUP.lanes), neon_tbl_impl, override=True)
