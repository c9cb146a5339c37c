"""Compilation targets: the host, named presets for other CPUs, and the parameters measured per target.

TVM 0.27 accepts targets only in dict form. `resolve_target(spec)` turns what a user writes into one: `host` (the
default: `host_target()` asks LLVM for this CPU's name, so the code uses every vector extension it has, and counts
the cores this process may run on, its affinity mask, not the machine's), a preset name (`PRESETS`: `x86-64-v3`
for AVX2, `x86-64-v4` for AVX-512, `aarch64` for NEON), or any TVM target as a dict or its JSON. Nothing about a
preset depends on the build machine: its thread count is `DEVICE_CORES` unless given. Only kind `llvm` (CPUs) is
served.

Heuristics measured on one CPU (the matmul's register tile, when a loop is worth a thread launch, when a weight is
worth repacking) are `CPUParams`, one set per architecture (`cpu_params(target)`), overridable with
`override_params(...)` for a sweep or a tuning run.

A library for a CPU of another architecture is linked with its cross compiler (`export_library`).

A target's `num-cores` does not reach TVM's runtime: its thread pool takes its size, once, from `TVM_NUM_THREADS`
or else half the logical CPUs on x86 (it assumes hyper-threading), so a 2-vCPU machine runs every parallel loop on
1 thread. `use_runtime_threads(target)` sizes the pool to the target before the first parallel kernel runs, and
leaves its threads free to run on every core, as ONNX Runtime's and PyTorch's are: TVM pins worker i to core i (at
one thread, the calling thread to core 0), so one busy thread held on core 1 by another process stalls every
fork/join (the NN-LUT + PQ MiniLM at 1x64 and two threads: 2,166 ms a call pinned, 52 ms free, 8.9 ms without that
thread; alone, pinned or free made no difference). `TVM_BIND_THREADS=1`, set before, keeps TVM's pinning.
"""

import contextlib
import contextvars
import dataclasses
import json
import os
import platform
import threading

import tvm
from tvm.target import Target
from tvm.target.codegen import llvm_get_system_cpu, llvm_get_vector_width, target_has_features

# The threads use_runtime_threads gave the calling thread's TVM pool (pools are per calling thread).
_pool_size = threading.local()


def host_target(num_cores: int | None = None) -> Target:
    """The LLVM target for this CPU, with `num_cores` threads (default: the cores this process may use)."""
    if num_cores is None:
        num_cores = len(os.sched_getaffinity(0))
    if num_cores < 1:
        raise ValueError(f"num_cores must be at least 1, got {num_cores}")
    return Target({"kind": "llvm", "mcpu": llvm_get_system_cpu(), "num-cores": int(num_cores)})


# Presets: CPUs by the instruction sets a library may use, never by the machine that builds it.
PRESETS = {
    "x86-64-v3": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v3"},  # AVX2, FMA (Haswell on)
    "x86-64-v4": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v4"},  # AVX-512 F/BW/DQ/VL
    "aarch64": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},  # NEON (ARMv8-A)
}
HOST = "host"
# Threads a preset target runs when none are given (a Raspberry Pi 4, a small Graviton instance).
DEVICE_CORES = 4
# Cross compilers by the architecture a target's triple names (the host's own `cc` for this machine's).
CROSS_COMPILERS = {"aarch64": "aarch64-linux-gnu-gcc"}


def resolve_target(spec=None, num_cores: int | None = None) -> Target:
    """A CPU target from `spec`: None or "host", a preset name, a TVM target dict or its JSON, or a `Target`.

    `num_cores` overrides the target's thread count; a non-host target without one runs `DEVICE_CORES`.
    Raises ValueError naming the presets for an unknown name, and for a kind other than llvm.
    """
    if spec is None or spec == HOST:
        return host_target(num_cores)
    if isinstance(spec, str):
        text = spec.strip()
        if text in PRESETS:
            spec = PRESETS[text]
        elif text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"target {spec!r} is not valid JSON: {err}") from err
        else:
            raise ValueError(f"unknown target {spec!r}: give {HOST!r}, a preset ({', '.join(PRESETS)}) or a TVM "
                             'target as JSON, e.g. \'{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}\'')
    if isinstance(spec, Target):
        spec = dict(spec.export())
    if not isinstance(spec, dict):
        raise TypeError(f"target must be a name, a dict, JSON or a tvm.target.Target, got {type(spec).__name__}")
    if spec.get("kind") != "llvm":
        raise ValueError(f"tvm-lut compiles for CPUs (target kind 'llvm'), got kind {spec.get('kind')!r}")
    spec = dict(spec)
    if num_cores is not None:
        spec["num-cores"] = num_cores
    spec.setdefault("num-cores", DEVICE_CORES)
    if int(spec["num-cores"]) < 1:
        raise ValueError(f"num_cores must be at least 1, got {spec['num-cores']}")
    return Target(spec)


def architecture(target: Target) -> str:
    """The CPU architecture `target` generates code for ("x86_64", "aarch64", ...; the host's without a triple)."""
    triple = str(target.attrs.get("mtriple", "") or "")
    return triple.split("-")[0] if triple else platform.machine()


_HOST_CHECKED_FEATURES = ("avx2", "avx512f", "avx512bw")


def runs_on_host(target: Target) -> bool:
    """Whether code for `target` can run on this machine (same architecture, no x86 extension it lacks)."""
    if architecture(target) != platform.machine():
        return False
    host = host_target(1)
    return all(target_has_features([f], host) for f in _HOST_CHECKED_FEATURES if target_has_features([f], target))


def export_library(lib, path: str | os.PathLike, target: Target) -> None:
    """Write `lib` (built for `target`) as a shared library, linked by the target's cross compiler if it has one."""
    arch = architecture(target)
    if arch == platform.machine():
        lib.export_library(str(path))
        return
    if arch not in CROSS_COMPILERS:
        raise ValueError(f"no cross compiler known for {arch} (known: {', '.join(CROSS_COMPILERS)})")
    from tvm.support.cc import cross_compiler

    lib.export_library(str(path), fcompile=cross_compiler(CROSS_COMPILERS[arch]))


@dataclasses.dataclass(frozen=True)
class CPUParams:
    """Schedule heuristics measured on one CPU; one set per architecture (`cpu_params`).

    min_parallel_work: below this many multiply-adds or elements a loop runs on one thread (a launch costs more).
    matmul_row_tiles: register-tile row counts the matmul rule tries, preferred first (the first dividing M wins).
    matmul_k_unroll: reduction steps unrolled per tile.
    prepack_min_elements: 2-D weights at least this large are repacked into column panels.
    """

    # 2 threads, AMD EPYC znver4 (2 vCPUs, shared): at 4096 the Fashion-MNIST CNN's pools went parallel and a call
    # took 1.06-1.24x longer than at 16k (MobileNetV3-Small, ResNet-50: same within noise). 64k gains the CNN more
    # (1.07-1.56x) but cost MobileNetV3-Small 3-6% in two of three runs: its depthwise convs count taps as
    # multiply-adds, run far below matmul speed, and still gain from a second thread at 16k-64k of them.
    # `python -m benchmarks.parallel_launch` prints where an elementwise loop starts to pay on another CPU (run it
    # with the machine alone: a busy core delays the join and moves the break-even up).
    min_parallel_work: int = 16 * 1024
    matmul_row_tiles: tuple[int, ...] = (8, 6, 4, 7, 5, 3, 2, 1)
    matmul_k_unroll: int = 4
    prepack_min_elements: int = 64 * 1024

    def __post_init__(self):
        if self.min_parallel_work < 0 or self.matmul_k_unroll < 1 or self.prepack_min_elements < 0:
            raise ValueError(f"CPUParams out of range: {self}")
        if not self.matmul_row_tiles or 1 not in self.matmul_row_tiles or min(self.matmul_row_tiles) < 1:
            raise ValueError(f"matmul_row_tiles must be positive and include 1 (every M divides by it), "
                             f"got {self.matmul_row_tiles}")


# Measured on x86 (AMD EPYC znver4, Intel Xeon: 16 / 32 vector registers). AArch64 has 32 NEON registers of 4
# floats: an 8-row tile of 2 vectors holds 16 accumulators, as on AVX2; kept until a board measures otherwise.
_PARAMS = {"x86_64": CPUParams(), "aarch64": CPUParams()}
_OVERRIDES: contextvars.ContextVar[dict] = contextvars.ContextVar("tvm_lut_cpu_params", default={})


def cpu_params(target: Target) -> CPUParams:
    """The heuristics for `target`'s architecture, with the overrides in scope (`override_params`)."""
    params = _PARAMS.get(architecture(target), CPUParams())
    overrides = _OVERRIDES.get()
    return dataclasses.replace(params, **overrides) if overrides else params


@contextlib.contextmanager
def override_params(**overrides):
    """Within: `cpu_params` answers with these fields replaced (e.g. `matmul_k_unroll=8`), for every target."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(CPUParams)}
    if unknown:
        raise TypeError(f"unknown CPUParams field(s): {', '.join(sorted(unknown))}")
    CPUParams(**overrides)  # validated here, not at the first rule that reads them
    token = _OVERRIDES.set({**_OVERRIDES.get(), **overrides})
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


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
    """Size the calling thread's TVM pool to the most `num_cores` any target asked of it; returns the threads it runs.

    The first call sets the pool to the target's cores; later ones never shrink it: a process may hold models
    compiled for different core counts (`tvm_lut.batch_parallel` runs one compiled for a single core on worker
    threads whose own pools it sizes to one, beside the whole model), and a smaller pool would run the other model
    on fewer threads than it was built for. TVM's pool belongs to the thread that calls the kernels, and is created
    once (on the first parallel call) and never grows afterwards: call this first, with the most cores the process
    will use. Raises RuntimeError if the pool already exists with fewer threads. Unless `TVM_BIND_THREADS` is set,
    the threads are not pinned to cores (read when the pool sets its affinity; see the module docstring).
    """
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    threads = max(num_cores(target), getattr(_pool_size, "threads", 0))
    if int(os.environ.get("TVM_NUM_THREADS", "0") or 0) < threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)  # read when the pool is created
    tvm.get_global_func("runtime.config_threadpool")(1, threads)  # 1: one worker per core, the fastest first
    running = tvm.get_global_func("runtime.NumThreads")()
    if running < threads:
        raise RuntimeError(f"TVM's thread pool already runs {running} thread(s), {threads} asked: call "
                           f"use_runtime_threads before any parallel kernel runs, or set TVM_NUM_THREADS={threads}")
    _pool_size.threads = threads
    return running
