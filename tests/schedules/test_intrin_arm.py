"""ARM NEON lookup intrinsic: tensorized into the kernels, `tbl` in the aarch64 asm, and the kernels run on a real
aarch64 TVM runtime (emulated, over RPC) equal to the NumPy reference."""

import numpy as np
import pytest
import tvm
from tvm.s_tir import TensorIntrin

from schedules import rpc
from schedules.intrin import lookup_intrin
from schedules.intrin.arm import NEON_LOOKUP
from schedules.kernels.pq_encode import pq_encode_reference
from schedules.kernels.pq_lookup import LookupLayout, pq_lookup_func, pq_lookup_reference

from .pq_harness import build, run_encode, run_lookup


def test_registered_and_chosen_for_aarch64():
    assert TensorIntrin.get(NEON_LOOKUP.name) is not None
    assert lookup_intrin(rpc.ARM_TARGET) == NEON_LOOKUP


def test_kernel_is_tensorized_and_the_asm_has_tbl():
    func = pq_lookup_func(LookupLayout(40, 4, 16, 8, NEON_LOOKUP.lanes), NEON_LOOKUP)
    assert "llvm.aarch64.neon.tbl1" in func.script()
    asm = build(func, rpc.ARM_TARGET).mod.inspect_source("asm")
    assert any(line.split()[:1] == ["tbl"] for line in asm.splitlines())


@pytest.fixture(scope="module")
def device():
    reason = rpc.missing()
    if reason:
        pytest.skip(reason)
    with rpc.emulated_device() as session:
        yield session


def _on_device(session):
    def execute(func, arrays):
        return rpc.run_remote(session, tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), "main", arrays)

    return execute


@pytest.mark.arm
def test_lookup_on_the_aarch64_device(device):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (37, 11))  # odd rows: 3 blocks of 16, the last one padded
    table = rng.integers(-127, 128, (11, 16, 12)).astype(np.int8)
    got = run_lookup(codes, table, 1.0, None, intrin=NEON_LOOKUP, execute=_on_device(device))
    np.testing.assert_array_equal(got, pq_lookup_reference(codes, table, 1.0, None))


@pytest.mark.arm
def test_encode_on_the_aarch64_device(device):
    rng = np.random.default_rng(1)
    cents = rng.standard_normal((5, 16, 9)).astype(np.float32)
    x = rng.standard_normal((21, 45)).astype(np.float32)
    x[0, 0] = np.nan
    codes = run_encode(x, cents, lanes=NEON_LOOKUP.lanes, execute=_on_device(device))
    reference = pq_encode_reference(x, cents)
    assert codes[0, 0] == 0 and (codes != reference).mean() < 0.02
