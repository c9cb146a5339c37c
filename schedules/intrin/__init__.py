"""Tensor intrinsics of the PQ lookup-accumulate step, declared TVM's way (`_desc` + `_impl`, registered by name).

One step adds, for `lanes` rows at once, the int8 entry of a 16-entry table picked by each row's 4-bit code to the
row's int16 accumulator: `acc[i] += table[codes[i]]`. That is one `vpshufb` on x86 (the table in every 128-bit
lane of the register, 32 rows per AVX2 instruction, 64 per AVX-512) and one `tbl` on ARM NEON (16 rows).

The `_desc` states the lookup as a one-hot select over the 16 entries instead of a gather `table[codes[i]]`: TVM's
tensorize matcher compares a data-dependent index structurally and cannot map it onto the workload's buffers, so a
gather `_desc` never matches. The select form has only affine indices, means the same for codes in [0, 16), and is
what the kernel's compute definition says, so `Schedule.tensorize` matches it. The ISA files register the `_impl`s
(`x86.py`, `arm.py`); `lookup_intrin(target)` picks the widest one the target supports.
"""

from dataclasses import dataclass

from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import target_has_features

TABLE_ENTRIES = 16  # one 128-bit register of int8: the most a pshufb / tbl lookup can index


def lookup_accumulate_desc(lanes: int):
    """Scalar semantics of one lookup-accumulate step over `lanes` rows (see the module docstring)."""

    @T.prim_func(s_tir=True)
    def desc(
        table: T.Buffer((TABLE_ENTRIES,), "int8", offset_factor=1),
        codes: T.Buffer((lanes,), "uint8", offset_factor=1),
        acc: T.Buffer((lanes,), "int16", offset_factor=1),
    ):
        with T.sblock("root"):
            T.reads(acc[0:lanes], codes[0:lanes], table[0:TABLE_ENTRIES])
            T.writes(acc[0:lanes])
            for i, k in T.grid(lanes, TABLE_ENTRIES):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    acc[vi] = acc[vi] + T.Select(
                        T.Cast("int32", codes[vi]) == vk, T.Cast("int16", table[vk]), T.int16(0))

    return desc


@dataclass(frozen=True)
class LookupIntrin:
    """A registered lookup-accumulate intrinsic: its name, rows per instruction, and the features it needs."""

    name: str
    lanes: int
    features: tuple[str, ...]
    triple_prefix: str  # "x86_64" or "aarch64": where the features are looked up

    def supported_by(self, target: Target) -> bool:
        if target.kind.name != "llvm":
            return False
        triple = str(target.attrs.get("mtriple", "") or "")
        if self.triple_prefix == "aarch64":
            return triple.startswith("aarch64")
        if triple and not triple.startswith("x86_64"):
            return False
        return bool(target_has_features(list(self.features), target))


def registered_lookup_intrins() -> tuple[LookupIntrin, ...]:
    """Every lookup-accumulate intrinsic, widest first (the order `lookup_intrin` prefers them in)."""
    from . import arm, x86  # pylint: disable=import-outside-toplevel  (registers them on first import)

    return (x86.AVX512_LOOKUP, x86.AVX2_LOOKUP, arm.NEON_LOOKUP)


def lookup_intrin(target: Target, prefer_avx512: bool = False) -> LookupIntrin | None:
    """The lookup intrinsic to tensorize with on `target`, or None if it has none (no AVX2 / NEON).

    AVX2 is the default on x86 even where AVX-512BW exists: the 64-row blocks double the padding for small
    batches and (as FAISS fast-scan found) wider shuffles often gain little; pass `prefer_avx512=True` to use it.
    """
    for intrin in registered_lookup_intrins():
        if intrin.lanes == 64 and not prefer_avx512:
            continue
        if intrin.supported_by(target):
            return intrin
    return None
