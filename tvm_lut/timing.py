"""Median-of-N timing of a call: the one timer of the benchmarks and of `tvm-lut profile`.

Numbers are medians of `repeat` repetitions, each long enough (>= `min_seconds`) that timer resolution and call
overhead do not matter. The clock is wall time (`time.perf_counter`) unless given: `time.process_time` (the
process's CPU time) measures single-threaded code without the time other processes of a shared machine take from
it (it sums every thread, so it is no latency for multi-threaded code).

Several engines in one process at several threads: each runtime's idle workers spin for a while after its last call
(measured on a 2-core AMD EPYC: ONNX Runtime ~60 ms, PyTorch's OpenMP ~400 ms, TVM's pool ~350 ms, each holding a
core), and an engine timed meanwhile loses a core to them (a 2.7 ms TVM model took 79-179 ms right after an ONNX
Runtime call). `settle=True` waits before each repetition until no other thread of the process runs
(`wait_for_idle_threads`), so every engine gets the cores to itself. Each repetition also records how many of the
process's threads stood ready to run while other processes held the CPUs (`Timing.waiting`, from the kernel's
per-thread run-queue time): the load of a shared machine, named beside its figures.

Where the threads run matters as much as whether they run: a guest's vCPUs are threads of its host, which may run
them on cores that share a cache or on two dies. `fork_join_seconds` times TVM's thread pool starting and joining an
empty task on every thread, which reads the difference (on the 2-vCPU AMD EPYC guest here, 1.0 us on cores sharing
an L3 and 2.0-2.1 us across two dies, where a cache-line round trip between the vCPUs takes 300 ns instead of 50;
the host moves them every few seconds to minutes). Across two dies, data one thread writes and the other reads,
or one writes where the other wrote before, crosses between the dies' caches: MiniLM 8x64 with NN-LUT + PQ took
19 ms instead of 9 at two threads, ONNX Runtime 12 % longer. Settled repetitions (`settle=True`) record it after
each repetition (`Timing.fork_join`), so a figure says on which placement it was taken.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import threading
import time
from typing import Callable

_TASKS = "/proc/self/task"


@dataclasses.dataclass
class Timing:
    """One function's repetitions: seconds per call; the mean number of this process's threads that waited for a
    CPU during each; how many of its threads ran during each (the caller, and every other thread that ran for more
    than 1 % of it): with settled repetitions, the function's own; how many CPUs the process's threads kept busy
    during each (their CPU time over the wall time; a runtime's idle workers spin, so N threads on N cores give
    about N, and N threads squeezed onto one core about 1 whether or not they queued for it). None where the kernel
    does not say (not Linux). A guest's CPU time leaves out what its hypervisor took, so steal lowers `cores` too:
    `stolen` tells the two apart."""

    seconds: list[float]
    waiting: list[float | None]
    threads_ran: list[int | None] = dataclasses.field(default_factory=list)
    cores: list[float | None] = dataclasses.field(default_factory=list)
    # CPUs of the whole machine its hypervisor ran something else on during each (steal time; 0 on bare metal)
    stolen: list[float | None] = dataclasses.field(default_factory=list)
    # seconds of TVM's pool forking and joining right after each (`fork_join_seconds`; settled repetitions only)
    fork_join: list[float | None] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_waiting(self) -> float | None:
        return _median_of_known(self.waiting)

    @property
    def median_cores(self) -> float | None:
        return _median_of_known(self.cores)

    @property
    def median_stolen(self) -> float | None:
        return _median_of_known(self.stolen)

    @property
    def median_fork_join(self) -> float | None:
        return _median_of_known(self.fork_join)

    @property
    def most_threads_ran(self) -> int | None:
        known = [n for n in self.threads_ran if n is not None]
        return max(known) if known else None


def _median_of_known(values: list[float | None]) -> float | None:
    """The median of the values the kernel gave (None where it did not); None if it gave none."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def median_seconds(fn: Callable[[], object], repeat: int = 7, min_seconds: float = 0.02,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of one call of `fn` over `repeat` repetitions (after a warm-up call)."""
    return median_seconds_interleaved({"fn": fn}, repeat, min_seconds, clock)["fn"]


def median_seconds_interleaved(fns: dict[str, Callable[[], object]], repeat: int = 7, min_seconds: float = 0.02,
                               clock: Callable[[], float] = time.perf_counter,
                               settle: bool = False) -> dict[str, float]:
    """Median time per call of each function, repetitions taken in turn (A B C A B C ...); see `timings`."""
    return {name: timing.median for name, timing in timings(fns, repeat, min_seconds, clock, settle).items()}


def timings(fns: dict[str, Callable[[], object]], repeat: int = 7, min_seconds: float = 0.02,
            clock: Callable[[], float] = time.perf_counter, settle: bool = False) -> dict[str, Timing]:
    """Every repetition of each function, taken in turn (A B C A B C ...).

    Interleaving spreads the load of a shared, noisy machine evenly over the variants, so their ratios hold up
    better than when each is timed in one block. `settle`: before each repetition (and each warm-up), wait until
    the other threads of this process have stopped running (`wait_for_idle_threads`), so a function never shares
    the cores with the spinning workers of the one before it.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    numbers = {}
    for name, fn in fns.items():
        if settle:
            wait_for_idle_threads()
        numbers[name] = _calls_per_repetition(fn, min_seconds)
    results = {name: Timing([], []) for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            if settle:
                wait_for_idle_threads()
                fn()  # wakes this function's own workers
            before, wall, own, steal = _schedstats(), time.perf_counter(), time.thread_time(), _steal_seconds()
            start = clock()
            for _ in range(numbers[name]):
                fn()
            elapsed = clock() - start
            wall, after, own = max(time.perf_counter() - wall, 1e-9), _schedstats(), time.thread_time() - own
            results[name].seconds.append(elapsed / numbers[name])
            stolen = _steal_seconds()
            results[name].stolen.append(None if steal is None or stolen is None else (stolen - steal) / wall)
            results[name].fork_join.append(fork_join_seconds() if settle else None)
            if before is None or after is None:
                results[name].waiting.append(None)
                results[name].threads_ran.append(None)
                results[name].cores.append(None)
                continue
            results[name].waiting.append(sum(queued - before.get(task, (0, 0))[1]
                                             for task, (_, queued) in after.items()) / 1e9 / wall)
            me = threading.get_native_id()  # ran the repetition (its kernel count lags on a short one)
            results[name].threads_ran.append(1 + sum(ran - before.get(task, (0, 0))[0] > 0.01 * wall * 1e9
                                                     for task, (ran, _) in after.items() if task != me))
            # the caller's own CPU time from its clock: the kernel's per-thread count of a running thread moves only
            # at scheduler ticks (every 4 ms at HZ=250), the others' at each switch as well
            results[name].cores.append((own + sum(ran - before.get(task, (0, 0))[0] for task, (ran, _) in after.items()
                                                  if task != me) / 1e9) / wall)
    return results


def fork_join_seconds(calls: int = 200) -> float:
    """Median seconds of one empty parallel launch of TVM's thread pool from this thread, over `calls` launches:
    a task started on every thread of the pool and joined, nothing else (see the module docstring). It wakes the
    pool, whose workers then spin for a while: take it after a timing, not before."""
    launch = _fork_join_launch()
    launch()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        launch()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


@functools.cache
def _fork_join_launch() -> Callable[[], object]:
    """A compiled kernel whose parallel loop gives each thread of TVM's pool one store to its own cache line."""
    import numpy as np
    import tvm
    from tvm.script import tirx as T

    tasks = max(int(tvm.get_global_func("runtime.NumThreads")()), 1)

    @T.prim_func
    def fork_join(flags: T.Buffer((tasks * 16,), "float32")):
        T.func_attr({"tirx.noalias": True})
        for task in T.parallel(tasks):
            flags[task * 16] = flags[task * 16] + T.float32(1)

    function = tvm.compile(tvm.IRModule({"main": fork_join}), target="llvm")["main"]
    flags = tvm.runtime.tensor(np.zeros(tasks * 16, np.float32))
    return lambda: function(flags)


def wait_for_idle_threads(window: float = 0.005, timeout: float = 3.0) -> float:
    """Wait until no other thread of the process is running or ready to run, twice in a row `window` apart; returns
    the seconds waited (`timeout` at most).

    Runtimes park their workers (asleep on a lock) only after spinning a while (see the module docstring); a spinning
    worker stays runnable even while other processes hold the CPUs, so this is the moment they all sleep. Where the
    kernel gives no thread states (not Linux), waits `timeout / 6` instead.
    """
    started = time.perf_counter()
    idle_checks = 0
    while idle_checks < 2 and time.perf_counter() - started < timeout:
        busy = _others_runnable()
        if busy is None:
            time.sleep(timeout / 6)
            break
        idle_checks = 0 if busy else idle_checks + 1
        if idle_checks < 2:
            time.sleep(window)
    return time.perf_counter() - started


def _others_runnable() -> bool | None:
    """Whether another thread of this process is running or waiting for a CPU (state R); None without /proc."""
    try:
        tasks = os.listdir(_TASKS)
    except OSError:
        return None
    me = threading.get_native_id()
    for task in tasks:
        if int(task) == me:
            continue
        try:
            with open(f"{_TASKS}/{task}/stat") as file:
                state = file.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # the thread ended meanwhile
            continue
        if state == "R":
            return True
    return False


def _steal_seconds() -> float | None:
    """Seconds of CPU time the hypervisor took from all of this machine's CPUs since boot; None without /proc."""
    try:
        with open("/proc/stat") as file:
            fields = file.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _schedstats() -> dict[int, tuple[int, int]] | None:
    """Thread id -> (nanoseconds run, nanoseconds waited on a run queue) for every thread of this process."""
    try:
        tasks = os.listdir(_TASKS)
    except OSError:
        return None
    stats = {}
    for task in tasks:
        try:
            with open(f"{_TASKS}/{task}/schedstat") as file:
                ran, queued, _ = file.read().split()
        except (OSError, ValueError):  # the thread ended meanwhile, or no schedstat in this kernel
            continue
        stats[int(task)] = (int(ran), int(queued))
    return stats or None


def _calls_per_repetition(fn: Callable[[], object], min_seconds: float) -> int:
    """How many calls make a repetition of at least `min_seconds` (after a warm-up call)."""
    fn()
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return number
        number = max(number * 2, int(number * min_seconds / max(elapsed, 1e-9)))
