"""The scheduled LUT kernels compile to branch-free vector code with register permutes (x86 hosts)."""

import re

import pytest
import tvm
from tvm.target import Target
from tvm.target.codegen import target_has_features

from schedules import ApplyCPUSchedules, pwl_func
from tests.schedules.kernel_harness import GELU, TARGET

pytestmark = pytest.mark.skipif(TARGET.kind.name != "llvm" or not target_has_features(["avx2"], TARGET),
                                reason="needs an x86 host with AVX2")


def _asm(shape, target, table=GELU) -> str:
    mod = tvm.IRModule({"main": pwl_func(table, shape).with_attr("global_symbol", "main")})
    with target:
        mod = ApplyCPUSchedules()(mod)
        return tvm.tirx.build(mod, target=target).inspect_source("asm")


def _basic_blocks(asm: str) -> list[list[str]]:
    """Instructions per basic block: a block label (`.LBB...`, a function) or a jump ends a block; `.Ltmp` debug
    labels do not."""
    blocks, current = [], []
    for line in asm.splitlines():
        if re.match(r"^(\.LBB|[A-Za-z_])[\w.$]*:", line):
            blocks.append(current)
            current = []
        elif line.startswith("\t") and not line.startswith("\t."):
            current.append(line.strip())
            if current[-1].startswith("j"):
                blocks.append(current)
                current = []
    return [b for b in blocks + [current] if b]


AVX2 = Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})  # compiled, not run: any x86 host will do


@pytest.mark.parametrize("shape, target, register", [
    ((128, 3072), TARGET, "zmm"),  # 16 lanes
    ((8, 8), TARGET, "zmm"),       # 8 lanes widened to one register
    ((128, 3072), AVX2, "ymm"),    # two permutes per 16-entry table
], ids=["avx512", "avx512-8-lanes", "avx2"])
def test_segment_search_is_permutes_without_branches(shape, target, register):
    if register == "zmm" and not target_has_features(["avx512f"], TARGET):
        pytest.skip("needs AVX-512F")
    blocks = [b for b in _basic_blocks(_asm(shape, target)) if any(i.startswith("vperm") for i in b)]
    assert blocks, "no register permute in the kernel"
    body = max(blocks, key=len)  # the vectorized loop body
    permutes = [i for i in body if i.startswith("vperm") and f"%{register}" in i]
    # 16 segments: 2 probed rounds of the binary search + slope + intercept (x2 halves with 8 lanes)
    assert len(permutes) >= 4
    assert any(i.startswith("vfmadd") for i in body)
    assert any(i.startswith("vcmp") for i in body)
    jumps = [i for i in body if i.startswith("j")]
    assert len(jumps) <= 1 and (not jumps or body[-1] == jumps[0]), f"branches inside the loop body: {jumps}"


def test_kernel_scheduled_for_a_target_keeps_its_registers_when_built_outside_the_scope():
    """`tvm.compile` lowers TIR outside any target scope: the register width is fixed when the kernel is scheduled."""
    kernel = pwl_func(GELU, (64, 64)).with_attr("global_symbol", "main")
    with AVX2:
        mod = ApplyCPUSchedules()(tvm.IRModule({"main": kernel}))
    asm = tvm.tirx.build(mod, target=AVX2).inspect_source("asm")  # on an AVX-512 host this used to emit zmm code
    assert "%ymm" in asm and "%zmm" not in asm
