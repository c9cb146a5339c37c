"""Batch-parallel execution: a batch split into parts that run at once, each on its own thread, one TVM thread each.

At several threads a compiled model splits every kernel's work across its threads, so every kernel's output is
read by the next kernel across the threads' caches, with a fork and a join per kernel. That crossing is what the
host's placement of the cores decides: on the 2-vCPU AMD EPYC (znver4) guest here, MiniLM-L6 8x64 with NN-LUT + PQ
at two threads took 8.5-12 ms while the two vCPUs shared an L3 and 19-25 ms while they sat on two dies, against
9-12 ms for its two 4x64 halves run side by side, each on one thread (`benchmarks.end_to_end`'s `batch parallel`
row). Each part's data stays in one core's caches, and the parts never wait for each other.

`BatchParallel(executable, parts)` runs `executable` (compiled for one core, `tvm_lut.compile(mod, bundle,
target=host_target(1))`, at the part's batch: the whole batch / parts) on `parts` worker threads, each with its own
VM and a TVM pool of one thread (TVM's pool is per calling thread). A call splits every input along axis 0 into
equal parts and concatenates every output along axis 0. It is correct only for a model whose batch rows never
meet (true of an encoder or a CNN at inference; not of an op that reduces over the batch axis). A batch that does
not split evenly, or inputs whose first axes differ, raise ValueError; an error in a part re-raises in the caller.

Each worker is pinned to its own CPU (round robin over the CPUs the process may use; `pin=False`: any of them).
Unpinned, workers that slept between calls were often woken onto one vCPU, one waiting while the other vCPU idled:
MiniLM-L6 8x64 (NN-LUT + PQ) in two parts took 7.9-11.0 ms per call when each repetition started after the threads
had gone idle, against 6.6-6.8 ms pinned and 7.2-7.6 ms for the whole model at two threads (`tvm_lut.timing.timings`
with `settle=True`, one process, four runs; AMD EPYC znver4, the two vCPUs on one L3). With another process spinning on one
of the two CPUs, pinned and free parts took the same (13.9 and 13.8 ms; the whole model 52 ms). The pin is set after
TVM's pool is configured: without `TVM_BIND_THREADS=0`, `runtime.config_threadpool` binds its calling thread to the
first core, every worker to the same one.
"""

from __future__ import annotations

import os
import queue
import threading

import numpy as np


def tvm_input(array: np.ndarray):
    """A TVM tensor viewing `array` through DLPack when TVM accepts it (C-contiguous, 64-byte aligned), else a copy.

    `tvm.runtime.tensor` copies through the FFI, 16 us per call here (a tenth of the Fashion-MNIST CNN's latency),
    where a DLPack view costs 0.4 us. (The address comes from `__array_interface__`: `array.ctypes` alone costs
    1.3 us.) Read outputs the same way, `np.from_dlpack` (0.2 us) rather than `.numpy()` (a copy).
    """
    import tvm

    if array.flags.c_contiguous and array.__array_interface__["data"][0] % 64 == 0:
        return tvm.runtime.from_dlpack(array)
    return tvm.runtime.tensor(array)


def _to_numpy(output):
    """A VM output (a tensor, or a tuple of them) as NumPy views of the same memory."""
    if hasattr(output, "__dlpack__"):
        return np.from_dlpack(output)
    return tuple(_to_numpy(item) for item in output)


def _concatenate(parts: list):
    """The parts' outputs joined along axis 0 (tuples element by element)."""
    if isinstance(parts[0], tuple):
        return tuple(_concatenate([part[i] for part in parts]) for i in range(len(parts[0])))
    return np.concatenate(parts)


def _worker_cpus(parts: int, pin: bool) -> list[set[int] | None]:
    """The CPUs each worker may run on: one of its own (round robin over those this process may use) when `pin`,
    else all of those; None where the OS sets no thread affinities (not Linux)."""
    if not hasattr(os, "sched_setaffinity"):
        return [None] * parts
    allowed = sorted(os.sched_getaffinity(0))
    return [{allowed[index % len(allowed)]} if pin else set(allowed) for index in range(parts)]


class _Worker:
    """One thread with its own VM on `executable` and a one-thread TVM pool, serving one part per call."""

    def __init__(self, executable, function: str, index: int, cpus: set[int] | None):
        self.cpus = cpus
        self.native_id: int | None = None  # the thread's id, once it runs
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, args=(executable, function, cpus), daemon=True,
                                        name=f"tvm-lut-batch-part-{index}")
        self._thread.start()
        self.result()  # the VM is built (or its error raised) before the first call

    def _serve(self, executable, function: str, cpus: set[int] | None) -> None:
        try:
            import tvm
            from tvm import relax

            tvm.get_global_func("runtime.config_threadpool")(1, 1)  # this thread's pool: itself alone
            if cpus is not None:  # after config_threadpool, which may bind this thread (module docstring)
                os.sched_setaffinity(0, cpus)  # 0: the calling thread
            self.native_id = threading.get_native_id()
            run = relax.VirtualMachine(executable, tvm.cpu())[function]
        except Exception as error:  # noqa: BLE001 - handed to the caller, who re-raises it
            self._results.put((False, error))
            return
        self._results.put((True, None))
        while (arrays := self._tasks.get()) is not None:
            try:
                self._results.put((True, _to_numpy(run(*[tvm_input(a) for a in arrays]))))
            except Exception as error:  # noqa: BLE001 - handed to the caller, who re-raises it
                self._results.put((False, error))

    def submit(self, arrays: list[np.ndarray]) -> None:
        self._tasks.put(arrays)

    def result(self):
        ok, value = self._results.get()
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        if self._thread.is_alive():
            self._tasks.put(None)
            self._thread.join()


class BatchParallel:
    """Call `executable`'s `function` on `parts` equal slices of a batch at once (module docstring).

    Inputs are NumPy arrays (or what `np.asarray` takes) whose first axis is the batch, parts x the executable's
    batch; outputs are new NumPy arrays (a tuple when the model returns several). Use it as a context manager, or
    call `close()`, to stop the threads. `pin`: each worker runs on one CPU of its own (`cpus`); false: on any the
    process may use.
    """

    def __init__(self, executable, parts: int, function: str = "main", pin: bool = True):
        if not isinstance(parts, int) or parts < 1:
            raise ValueError(f"parts must be a positive int, got {parts!r}")
        self.parts = parts
        self._workers: list[_Worker] = []
        try:
            cpus = _worker_cpus(parts, pin)
            for index in range(parts):
                self._workers.append(_Worker(executable, function, index, cpus[index]))
        except BaseException:
            self.close()
            raise

    def __call__(self, *inputs):
        if not self._workers:
            raise RuntimeError("this BatchParallel is closed")
        arrays = [np.asarray(array) for array in inputs]
        if not arrays or any(array.ndim == 0 for array in arrays):
            raise ValueError("every input needs a batch axis (axis 0)")
        batch = arrays[0].shape[0]
        if any(array.shape[0] != batch for array in arrays):
            raise ValueError(f"inputs disagree on the batch (axis 0): {[array.shape for array in arrays]}")
        if batch % self.parts:
            raise ValueError(f"a batch of {batch} does not split into {self.parts} equal parts")
        step = batch // self.parts
        for index, worker in enumerate(self._workers):
            worker.submit([array[index * step:(index + 1) * step] for array in arrays])
        results, error = [], None
        for worker in self._workers:  # collect every part before raising, so no result is left queued
            try:
                results.append(worker.result())
            except Exception as part_error:  # noqa: BLE001 - re-raised below
                error = error or part_error
        if error is not None:
            raise error
        return _concatenate(results)

    @property
    def cpus(self) -> list[set[int] | None]:
        """The CPUs each worker may run on (None: the OS sets no thread affinities)."""
        return [worker.cpus for worker in self._workers]

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def __enter__(self) -> BatchParallel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
