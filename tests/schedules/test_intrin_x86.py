"""x86 lookup intrinsics: registered TVM's way, chosen per target, tensorized into the kernel, vpshufb in the asm."""

import numpy as np
import pytest
import tvm
from tvm.s_tir import TensorIntrin
from tvm.target.codegen import llvm_get_system_cpu, target_has_features

from schedules.intrin import lookup_intrin
from schedules.intrin.x86 import AVX2_LOOKUP, AVX512_LOOKUP
from schedules.kernels.pq_lookup import LookupLayout, pq_lookup_func, pq_lookup_reference

from .pq_harness import build, run_lookup

AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
HOST = tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})


def test_registered_by_name():
    for intrin in (AVX2_LOOKUP, AVX512_LOOKUP):
        assert TensorIntrin.get(intrin.name) is not None


def test_chosen_per_target():
    assert lookup_intrin(AVX2) == AVX2_LOOKUP
    assert lookup_intrin(AVX512) == AVX2_LOOKUP  # AVX2 unless asked: 64-row blocks pad small batches more
    assert lookup_intrin(AVX512, prefer_avx512=True) == AVX512_LOOKUP
    assert lookup_intrin(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})) is None  # SSE2 only
    assert lookup_intrin(tvm.target.Target({"kind": "c"})) is None


@pytest.mark.parametrize("target, intrin, register", [(AVX2, AVX2_LOOKUP, "%ymm"), (AVX512, AVX512_LOOKUP, "%zmm")])
def test_kernel_is_tensorized_and_the_asm_has_vpshufb(target, intrin, register):
    func = pq_lookup_func(LookupLayout(64, 4, 16, 8, intrin.lanes), intrin)
    assert "pshuf.b" in func.script()
    asm = build(func, target).mod.inspect_source("asm")
    shuffles = [line for line in asm.splitlines() if "vpshufb" in line]
    assert shuffles and all(register in line for line in shuffles)


@pytest.mark.skipif(not target_has_features("avx512bw", HOST), reason="this CPU cannot run AVX-512BW")
def test_avx512_kernel_runs_where_the_cpu_has_it():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (70, 9))
    table = rng.integers(-127, 128, (9, 16, 12)).astype(np.int8)
    got = run_lookup(codes, table, 1.0, None, intrin=AVX512_LOOKUP)
    np.testing.assert_array_equal(got, pq_lookup_reference(codes, table, 1.0, None))
