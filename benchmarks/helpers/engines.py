"""The engines every whole-model benchmark runs a torch model on, each a callable on numpy arrays.

PyTorch fp32, ONNX Runtime fp32 and int8 (dynamic quantization of the exported ONNX file) and TVM executables,
all on the same thread count; `end_to_end` and `zoo` share them, and `median_latencies` times them alike.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..timing import Timing, timings


def export_onnx(model, example, workdir: Path) -> tuple[Path, Path]:
    """`model.onnx` (TorchScript exporter, opset 17) and its dynamically quantized `model.int8.onnx` in `workdir`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tvm_lut.frontend import DEFAULT_ONNX_OPSET, _torch_to_onnx

    onnx_path, int8_path = workdir / "model.onnx", workdir / "model.int8.onnx"
    onnx.save(_torch_to_onnx(model, example, DEFAULT_ONNX_OPSET), onnx_path)
    quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
    return onnx_path, int8_path


def torch_runner(model) -> Callable:
    import torch

    def run(*arrays):
        with torch.inference_mode():
            return model(*[torch.from_numpy(a) for a in arrays]).numpy()

    return run


def ort_runner(path: Path, threads: int) -> Callable:
    """An ONNX Runtime session on `threads` intra-op threads, as a callable returning the first output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda *arrays: session.run(None, dict(zip(names, arrays)))[0]


def tvm_runner(executable, path: Path) -> tuple[Callable, int]:
    """(callable, size in bytes of the exported library at `path`) for a `relax.build` executable."""
    import tvm
    from tvm import relax

    from tvm_lut.batch_parallel import tvm_input

    executable.export_library(str(path))
    function = relax.VirtualMachine(executable, tvm.cpu())["main"]
    return (lambda *arrays: np.from_dlpack(function(*[tvm_input(a) for a in arrays]))), path.stat().st_size


def batch_parallel_runner(executable, parts: int, path: Path) -> tuple[Callable, int]:
    """(callable, size in bytes of the exported library at `path`) running a one-core `executable` compiled at a
    part of the batch on `parts` threads at once (`tvm_lut.batch_parallel.BatchParallel`; its threads live as long
    as the process)."""
    from tvm_lut.batch_parallel import BatchParallel

    executable.export_library(str(path))
    return BatchParallel(executable, parts), path.stat().st_size


def aligned(array: np.ndarray) -> np.ndarray:
    """A copy of `array` at a 64-byte aligned address (what TVM asks of a tensor it views)."""
    buffer = np.empty(array.nbytes + 64, np.uint8)
    offset = -buffer.ctypes.data % 64
    result = buffer[offset : offset + array.nbytes].view(array.dtype).reshape(array.shape)
    result[...] = array
    return result


def median_latencies(runs: dict[str, Callable[[], object]], threads: int, repeat: int,
                     min_seconds: float = 0.1, cpu_clock: bool = False) -> dict[str, float]:
    """Seconds per call of each engine (the medians of `engine_timings`)."""
    return {name: timing.median for name, timing in engine_timings(runs, threads, repeat, min_seconds,
                                                                   cpu_clock).items()}


def engine_timings(runs: dict[str, Callable[[], object]], threads: int, repeat: int,
                   min_seconds: float = 0.1, cpu_clock: bool = False) -> dict[str, Timing]:
    """Every repetition of each engine, taken in turn over the engines (A B C A B C ...), so a busy machine's load
    hits all of them alike. On several threads each repetition waits until the engine before has parked its workers
    (they spin for 60-400 ms after a call and would take a core from the next engine: `tvm_lut.timing`), so every
    engine runs with the process's cores to itself. `cpu_clock` (one thread only) times the process's CPU time
    instead of wall time: on a shared machine, the time others take is not counted."""
    if cpu_clock and threads != 1:
        raise ValueError(f"the CPU clock times one thread only, not {threads} (it sums the CPU time of every thread)")
    clock = time.process_time if cpu_clock else time.perf_counter
    return timings(runs, repeat, min_seconds, clock, settle=threads > 1)
