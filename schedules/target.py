"""The compilation target for the CPU this process runs on.

TVM 0.27 accepts targets only in dict form. `host_target()` asks LLVM for the host CPU name (so the code uses every
vector extension the CPU has) and counts the cores this process may run on (its affinity mask, not the machine's
core count, so a pinned or containerised process does not oversubscribe).
"""

import os

import tvm
from tvm.target import Target
from tvm.target.codegen import llvm_get_system_cpu, llvm_get_vector_width


def host_target(num_cores: int | None = None) -> Target:
    """The LLVM target for this CPU, with `num_cores` threads (default: the cores this process may use)."""
    if num_cores is None:
        num_cores = len(os.sched_getaffinity(0))
    if num_cores < 1:
        raise ValueError(f"num_cores must be at least 1, got {num_cores}")
    return Target({"kind": "llvm", "mcpu": llvm_get_system_cpu(), "num-cores": int(num_cores)})


def vector_lanes(target: Target, dtype: str) -> int:
    """How many `dtype` elements fit one SIMD register of `target` (at least 1; 4 for 32-bit on a plain x86-64)."""
    bits = llvm_get_vector_width(target) if target.kind.name == "llvm" else -1
    if bits <= 0:
        bits = 128
    return max(bits // tvm.DataType(dtype).bits, 1)


def num_cores(target: Target) -> int:
    """The thread count a target asks for (its `num-cores`, else the cores this process may use)."""
    cores = target.attrs.get("num-cores")
    return int(cores) if cores else len(os.sched_getaffinity(0))
