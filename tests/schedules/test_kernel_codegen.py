"""The scheduled LUT kernels compile to branch-free vector code with register permutes (x86 hosts)."""

import re

import pytest
import tvm
from tvm.target.codegen import target_has_features

from schedules import ApplyCPUSchedules, pwl_func
from tests.schedules.kernel_harness import GELU, TARGET

pytestmark = pytest.mark.skipif(TARGET.kind.name != "llvm" or not target_has_features(["avx2"], TARGET),
                                reason="needs an x86 host with AVX2")


def _asm(shape) -> str:
    mod = tvm.IRModule({"main": pwl_func(GELU, shape).with_attr("global_symbol", "main")})
    with TARGET:
        mod = ApplyCPUSchedules()(mod)
        return tvm.tirx.build(mod, target=TARGET).inspect_source("asm")


def _basic_blocks(asm: str) -> list[list[str]]:
    """Instruction mnemonics + operands per basic block (a label or a jump ends a block)."""
    blocks, current = [], []
    for line in asm.splitlines():
        if re.match(r"^\.?[\w.$]+:", line):
            blocks.append(current)
            current = []
        elif line.startswith("\t") and not line.startswith("\t."):
            current.append(line.strip())
            if current[-1].startswith("j"):
                blocks.append(current)
                current = []
    return [b for b in blocks + [current] if b]


@pytest.mark.parametrize("shape, register", [((128, 3072), "zmm"), ((8, 8), "ymm")], ids=["16-lanes", "8-lanes"])
def test_segment_search_is_permutes_without_branches(shape, register):
    if register == "zmm" and not target_has_features(["avx512f"], TARGET):
        pytest.skip("needs AVX-512F")
    blocks = [b for b in _basic_blocks(_asm(shape)) if any(i.startswith("vperm") for i in b)]
    assert blocks, "no register permute in the kernel"
    body = max(blocks, key=len)  # the vectorized loop body
    permutes = [i for i in body if i.startswith("vperm") and f"%{register}" in i]
    # 16 segments: 3 probed rounds of the binary search + slope + intercept (x2 halves with 8 lanes)
    assert len(permutes) >= 5
    assert any(i.startswith("vfmadd") for i in body)
    assert any(i.startswith("vcmp") for i in body)
    jumps = [i for i in body if i.startswith("j")]
    assert len(jumps) <= 1 and (not jumps or body[-1] == jumps[0]), f"branches inside the loop body: {jumps}"
