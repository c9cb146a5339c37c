import os
import subprocess
import sys

import pytest

from tvm.target import Target

from schedules import host_target
from schedules.target import vector_lanes

# TVM's thread pool is created once per process: each case runs in a fresh interpreter.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    environment.update(env, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environment)


def test_runtime_threads_follow_the_target():
    code = ("import tvm\nfrom schedules.target import host_target, use_runtime_threads\n"
            "print(use_runtime_threads(host_target(2)), use_runtime_threads(host_target(1)),"
            " tvm.get_global_func('runtime.NumThreads')())")
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "1", "1"]


def test_a_pool_already_too_small_is_an_error():
    code = ("import tvm\nfrom schedules.target import host_target, use_runtime_threads\n"
            "tvm.get_global_func('runtime.NumThreads')()\nuse_runtime_threads(host_target(2))")
    result = _run(code, TVM_NUM_THREADS="1")
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
