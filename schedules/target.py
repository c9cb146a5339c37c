"""The compilation target for the CPU this process runs on.

TVM 0.27 accepts targets only in dict form. `host_target()` asks LLVM for the host CPU name (so the code uses every
vector extension the CPU has) and counts the cores this process may run on (its affinity mask, not the machine's
core count, so a pinned or containerised process does not oversubscribe).

A target's `num-cores` does not reach TVM's runtime: its thread pool takes its size, once, from `TVM_NUM_THREADS`
or else half the logical CPUs on x86 (it assumes hyper-threading), so a 2-vCPU machine runs every parallel loop on
1 thread. `use_runtime_threads(target)` sizes the pool to the target before the first parallel kernel runs.
"""

import os

import tvm
from tvm.target import Target
from tvm.target.codegen import llvm_get_system_cpu, llvm_get_vector_width, target_has_features


def host_target(num_cores: int | None = None) -> Target:
    """The LLVM target for this CPU, with `num_cores` threads (default: the cores this process may use)."""
    if num_cores is None:
        num_cores = len(os.sched_getaffinity(0))
    if num_cores < 1:
        raise ValueError(f"num_cores must be at least 1, got {num_cores}")
    return Target({"kind": "llvm", "mcpu": llvm_get_system_cpu(), "num-cores": int(num_cores)})


# x86 register widths by the feature that brings them, widest first. TVM 0.27's `llvm_get_vector_width` answers
# 512 for every x86 CPU on an AVX-512 host (znver3, haswell, plain x86-64 alike), so x86 is read from features.
_X86_REGISTER_BITS = ((512, "avx512f"), (256, "avx"), (128, "sse2"))


def vector_bits(target: Target) -> int:
    """The SIMD register width of `target` in bits (128 for a target that is not LLVM or says nothing)."""
    if target.kind.name != "llvm":
        return 128
    for bits, feature in _X86_REGISTER_BITS:
        if target_has_features([feature], target):
            return bits
    bits = llvm_get_vector_width(target)
    return bits if bits > 0 else 128


def vector_lanes(target: Target, dtype: str) -> int:
    """How many `dtype` elements fit one SIMD register of `target` (at least 1; 4 for 32-bit on a plain x86-64)."""
    return max(vector_bits(target) // tvm.DataType(dtype).bits, 1)


def num_cores(target: Target) -> int:
    """The thread count a target asks for (its `num-cores`, else the cores this process may use)."""
    cores = target.attrs.get("num-cores")
    return int(cores) if cores else len(os.sched_getaffinity(0))


def use_runtime_threads(target: Target) -> int:
    """Size TVM's CPU thread pool to the target's `num_cores`; returns the threads it runs.

    The pool is created once per process (on the first parallel call) and never grows afterwards: call this first.
    Raises RuntimeError if the pool already exists with fewer threads.
    """
    threads = num_cores(target)
    if int(os.environ.get("TVM_NUM_THREADS", "0") or 0) < threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)  # read when the pool is created
    tvm.get_global_func("runtime.config_threadpool")(1, threads)  # 1: one worker per core, the fastest first
    running = tvm.get_global_func("runtime.NumThreads")()
    if running < threads:
        raise RuntimeError(f"TVM's thread pool already runs {running} thread(s), {threads} asked: call "
                           f"use_runtime_threads before any parallel kernel runs, or set TVM_NUM_THREADS={threads}")
    return running
