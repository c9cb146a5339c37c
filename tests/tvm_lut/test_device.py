"""Whole models built on this x86 host for aarch64 and run on the emulated device through the tracker: outputs
equal to the host's build (`tvm_lut.device`); the aarch64 code uses NEON's `fmla` and PQ's `tbl`."""

import numpy as np
import pytest

from schedules.rpc import Tracker
from schedules.target import resolve_target
from tvm_lut.device import EXACT_TOLERANCE, PQ_TOLERANCE, build, check_on_device, kmeans_pq_bundle, model_and_inputs
from tvm_lut.frontend import from_torch

ARM = resolve_target("aarch64", 1)


@pytest.fixture(scope="module")
def cnn():
    model, example = model_and_inputs("fashion-cnn", 2)
    return from_torch(model, example), [t.numpy() for t in example], kmeans_pq_bundle(model, example)


def _asm(executable) -> str:
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports if m.kind == "llvm")


def test_the_aarch64_build_has_neon_fmla_and_tbl(cnn):
    mod, _, bundle = cnn
    asm = _asm(build(mod, ARM, "nnlut+pq", bundle))
    words = [line.split()[:2] for line in asm.splitlines()]
    assert any(w[:1] == ["fmla"] and w[1].endswith(".4s,") for w in words if len(w) == 2)  # vector fmla, 4 floats
    assert any(w[:1] == ["tbl"] for w in words)


@pytest.mark.arm
@pytest.mark.parametrize("engine", ["exact", "nnlut", "nnlut+pq"])
def test_the_cnn_on_the_device_equals_the_host_build(device_pool, cnn, engine):
    mod, inputs, bundle = cnn
    check = check_on_device(mod, inputs, ARM, device_pool, engine, bundle, repeat=1)
    assert check.ok, f"{engine}: relative difference {check.relative_difference:.2e} > {check.tolerance}"
    assert check.tolerance == (PQ_TOLERANCE if engine == "nnlut+pq" else EXACT_TOLERANCE)
    assert check.device_ms > 0 and np.isfinite(check.device[0]).all()


@pytest.mark.arm
def test_minilm_on_the_device_equals_the_host_build(device_pool):
    """CI-sized (1 x 16 tokens: under emulation 8 x 64 takes minutes a call; `benchmarks.device` runs it)."""
    model, example = model_and_inputs("minilm-l6", 1, 16)
    check = check_on_device(from_torch(model, example), [t.numpy() for t in example], ARM, device_pool, "exact",
                            repeat=1)
    assert check.ok, f"relative difference {check.relative_difference:.2e}"


def test_an_unknown_engine_is_named():
    with pytest.raises(ValueError, match="unknown engine 'int8'"):
        build(None, ARM, "int8")
    with pytest.raises(ValueError, match="needs a bundle"):
        build(None, ARM, "nnlut+pq")


def test_a_tracker_needs_host_port_and_key():
    with pytest.raises(ValueError, match="HOST:PORT"):
        Tracker.parse("localhost", "pi")
    with pytest.raises(ValueError, match="--rpc-key"):
        Tracker.parse("localhost:9190", "")
