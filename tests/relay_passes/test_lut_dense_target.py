"""LUTDense builds its kernels for the target given or in scope, never the host's: NEON `tbl` for aarch64, AVX2
`vpshufb` for x86-64-v3 on any build machine; with neither it refuses to guess."""

import numpy as np
import pytest
import torch
import tvm

from relay_passes import LUTDense
from schedules.target import resolve_target
from tvm_lut.bundle import Bundle
from tvm_lut.frontend import from_torch
from tvm_lut.pq.table import PQTable


@pytest.fixture(scope="module")
def linear_and_bundle():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 6).eval()
    centroids = np.random.default_rng(0).standard_normal((4, 16, 2)).astype(np.float32)
    entry = PQTable.from_weight(centroids, layer.weight.detach().numpy(), layer.bias.detach().numpy())
    return from_torch(layer, (torch.randn(40, 8),)), Bundle({"fc": entry})


def _intrinsics(mod: tvm.IRModule) -> str:
    return "\n".join(f.script() for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))


@pytest.mark.parametrize("preset, instruction", [("aarch64", "llvm.aarch64.neon.tbl1"),
                                                 ("x86-64-v3", "llvm.x86.avx2.pshuf.b")])
def test_the_lookup_follows_the_target(linear_and_bundle, preset, instruction):
    mod, bundle = linear_and_bundle
    given = LUTDense(bundle, target=resolve_target(preset))(mod)
    with resolve_target(preset):
        in_scope = LUTDense(bundle)(mod)
    for rewritten in (given, in_scope):
        script = _intrinsics(rewritten)
        assert instruction in script and "avx512" not in script


def test_no_target_is_an_error(linear_and_bundle):
    mod, bundle = linear_and_bundle
    with pytest.raises(Exception, match="LUTDense needs the target its kernels are for"):
        LUTDense(bundle)(mod)
