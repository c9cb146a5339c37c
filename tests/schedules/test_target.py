import os
import subprocess
import sys

import pytest

from tvm.target import Target
from tvm.target.codegen import target_has_features

from schedules import host_target
from schedules.target import (CROSS_COMPILERS, DEVICE_CORES, CPUParams, architecture, cpu_params, export_library,
                              num_cores, override_params, resolve_target, runs_on_host, vector_lanes)

from tests.fresh_process import fresh_python  # TVM's thread pool is created once per process

def test_runtime_threads_follow_the_largest_target():
    """The first target sets the pool; a later one for fewer cores (a one-core model beside a two-core one) does not
    shrink it under the other model."""
    code = ("import tvm\nfrom schedules.target import host_target, use_runtime_threads\n"
            "print(use_runtime_threads(host_target(2)), use_runtime_threads(host_target(1)),"
            " tvm.get_global_func('runtime.NumThreads')())")
    result = fresh_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2", "2"]


def test_a_pool_already_too_small_is_an_error():
    code = ("import tvm\nfrom schedules.target import host_target, use_runtime_threads\n"
            "tvm.get_global_func('runtime.NumThreads')()\nuse_runtime_threads(host_target(2))")
    result = fresh_python(code, TVM_NUM_THREADS="1")
    assert result.returncode != 0 and "already runs 1 thread(s), 2 asked" in result.stderr


def test_host_target_needs_a_core():
    with pytest.raises(ValueError, match="num_cores must be at least 1"):
        host_target(0)


@pytest.mark.parametrize("target, lanes", [
    ({"kind": "llvm", "mcpu": "znver4"}, 16),
    ({"kind": "llvm", "mcpu": "znver3"}, 8),
    ({"kind": "llvm", "mcpu": "haswell"}, 8),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}, 4),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, 4),
])
def test_vector_lanes_follow_the_target_not_the_host(target, lanes):
    """float32 lanes of one register of the target CPU, whatever CPU builds (TVM's own query answers 512 bits for
    every x86 CPU on an AVX-512 host)."""
    assert vector_lanes(Target(target), "float32") == lanes
    assert vector_lanes(Target(target), "int8") == lanes * 4


@pytest.mark.parametrize("name, arch, lanes", [("x86-64-v3", "x86_64", 8), ("x86-64-v4", "x86_64", 16),
                                               ("aarch64", "aarch64", 4)])
def test_presets_name_the_cpu_not_the_host(name, arch, lanes):
    target = resolve_target(name)
    assert architecture(target) == arch and vector_lanes(target, "float32") == lanes
    assert num_cores(target) == DEVICE_CORES  # never this machine's count
    assert num_cores(resolve_target(name, 3)) == 3


def test_host_json_dict_and_target_specs():
    assert str(resolve_target("host", 1)) == str(host_target(1)) == str(resolve_target(None, 1))
    from_json = resolve_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}')
    assert from_json.attrs["mcpu"] == "cortex-a72" and architecture(from_json) == "aarch64"
    assert str(resolve_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})) == str(resolve_target(
        Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})))


def test_an_unknown_target_name_lists_the_presets():
    with pytest.raises(ValueError, match=r"unknown target 'raspberry'.*x86-64-v3, x86-64-v4, aarch64"):
        resolve_target("raspberry")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_target('{"kind": llvm}')


@pytest.mark.parametrize("spec", ['{"kind": "cuda"}', {"kind": "c"}, {"mcpu": "haswell"}])
def test_only_cpu_targets(spec):
    with pytest.raises(ValueError, match="target kind 'llvm'"):
        resolve_target(spec)


def test_what_runs_here():
    assert runs_on_host(resolve_target("host")) and not runs_on_host(resolve_target("aarch64"))
    assert runs_on_host(resolve_target("x86-64-v4")) == target_has_features(["avx512bw"], host_target(1))


def test_params_per_architecture_and_overrides():
    arm = resolve_target("aarch64")
    assert cpu_params(arm) == CPUParams()
    with override_params(matmul_k_unroll=8, min_parallel_work=0):
        assert cpu_params(arm).matmul_k_unroll == 8 and cpu_params(arm).min_parallel_work == 0
    assert cpu_params(arm).matmul_k_unroll == CPUParams().matmul_k_unroll
    with pytest.raises(TypeError, match="unknown CPUParams field"):
        with override_params(tile=3):
            pass
    with pytest.raises(ValueError, match="include 1"):
        CPUParams(matmul_row_tiles=(8, 4))


def test_an_aarch64_library_is_cross_linked(tmp_path):
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def add_one(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
        for i in range(64):
            b[i] = a[i] + T.float32(1)

    target = resolve_target("aarch64")
    if subprocess.run(["which", CROSS_COMPILERS["aarch64"]], capture_output=True).returncode:
        pytest.skip(f"{CROSS_COMPILERS['aarch64']} is not installed")
    export_library(tvm.compile(tvm.IRModule({"main": add_one}), target=target), tmp_path / "lib.so", target)
    header = (tmp_path / "lib.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # e_machine EM_AARCH64


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread affinities come from /proc")
def test_tvm_threads_are_left_free_to_run_on_every_core(monkeypatch):
    """TVM's pool is per calling thread: a new thread's pool, created through use_runtime_threads, pins nothing."""
    import os
    import threading

    from schedules.target import host_target, use_runtime_threads

    def affinities():
        return {int(task): os.sched_getaffinity(int(task)) for task in os.listdir("/proc/self/task")}

    monkeypatch.delenv("TVM_BIND_THREADS", raising=False)
    before, seen = affinities(), {}

    def configure():
        use_runtime_threads(host_target(2))
        seen.update(affinities())

    thread = threading.Thread(target=configure)
    thread.start()
    thread.join()
    every_core = os.sched_getaffinity(0)
    new = {task: cores for task, cores in seen.items() if task not in before}
    assert new and all(cores == every_core for cores in new.values())
