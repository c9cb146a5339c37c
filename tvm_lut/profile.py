"""`tvm-lut profile MODEL`: where a compiled model's time goes, function by function.

    tvm-lut profile fashion-cnn --batch 1 --threads 1
    tvm-lut profile model.onnx --db tuning/ --top 20 --json profile.json

Each PrimFunc the model runs is timed on the arguments of the model's own run (the VM's instrumentation hands them
over before each kernel call; each call is repeated for a median), and listed with its share of the kernels' time,
the rule or tuning record that scheduled it (`exe.lut_report`), and its GFLOPS (from TVM's FLOP estimate of the
function as legalized, when one is given: it means something for matmuls and convs, little for memory-bound
elementwise functions). `profile_executable` is the Python entry other code calls; it needs an executable built
with `tvm_lut.compile(..., exec_mode="bytecode")` (compiled VM code does not report its calls).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

# Suffix TVM's SplitLayoutRewritePreproc gives a function whose weight repacking was split off.
_PREPACKED = "_prepacked"


@dataclasses.dataclass
class FunctionTime:
    name: str
    rule: str  # the rule that scheduled it, "tuned" (a tuning record), "LUT kernel" (hand-written), or "unscheduled"
    calls: int
    ms: float  # per model run, all calls, each repeated warm
    share: float  # of the kernels' total
    gflops: float | None = None
    in_model_ms: float | None = None  # per model run, all calls, as the model makes them (once each, in its order)


@dataclasses.dataclass
class Profile:
    """Per-function times of one model run, slowest first; `model_ms` is the VM's whole run (kernels + the rest)."""

    functions: list[FunctionTime]
    model_ms: float
    model_cpu_wait: float | None = None  # the process's threads waiting for a CPU while the model was timed
    model_cores: float | None = None  # CPUs the process's threads kept busy meanwhile (`tvm_lut.timing.Timing`)
    model_stolen: float | None = None  # CPUs the hypervisor took from the machine meanwhile (steal time)
    # TVM's pool starting and joining every thread right after (`tvm_lut.timing.fork_join_seconds`; several threads
    # only): ~2x its usual value when the host runs the threads on two dies
    model_fork_join_us: float | None = None

    @property
    def kernels_ms(self) -> float:
        return sum(f.ms for f in self.functions)

    @property
    def kernels_in_model_ms(self) -> float | None:
        times = [f.in_model_ms for f in self.functions]
        return None if None in times else sum(times)

    def to_dict(self) -> dict:
        return {"model_ms": self.model_ms, "model_cpu_wait": self.model_cpu_wait, "model_cores": self.model_cores,
                "model_stolen": self.model_stolen, "model_fork_join_us": self.model_fork_join_us,
                "kernels_ms": self.kernels_ms,
                "kernels_in_model_ms": self.kernels_in_model_ms,
                "functions": [dataclasses.asdict(f) for f in self.functions]}

    def by_rule(self) -> dict[str, float]:
        """Milliseconds per rule, largest first."""
        totals: dict[str, float] = {}
        for f in self.functions:
            totals[f.rule] = totals.get(f.rule, 0.0) + f.ms
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def table(self, top: int | None = None) -> str:
        shown = self.functions if top is None else self.functions[:top]
        width = max([len(f.name) for f in shown] + [8])
        lines = [f"{'function':<{width}}  {'rule':<12} {'calls':>5} {'ms':>9} {'share':>6} {'GFLOPS':>7} {'in model':>9}"]
        for f in shown:
            gflops = "" if f.gflops is None else f"{f.gflops:7.1f}"
            in_model = "" if f.in_model_ms is None else f"{f.in_model_ms:9.3f}"
            lines.append(f"{f.name:<{width}}  {f.rule:<12} {f.calls:>5} {f.ms:9.3f} {100 * f.share:5.1f}% {gflops:>7} "
                         f"{in_model:>9}")
        rest = self.functions[len(shown):]
        if rest:
            lines.append(f"({len(rest)} more functions: {sum(f.ms for f in rest):.3f} ms)")
        rules = ", ".join(f"{rule} {ms:.3f}" for rule, ms in self.by_rule().items())
        in_model = self.kernels_in_model_ms
        in_model = "" if in_model is None else f" ({in_model:.3f} ms as the model calls them)"
        figures = {"cpu_wait": self.model_cpu_wait, "cores": self.model_cores, "stolen": self.model_stolen,
                   "fork_join_us": self.model_fork_join_us}
        known = ", ".join(f"{name} {value:.2f}" for name, value in figures.items() if value is not None)
        wait = f" ({known})" if known else ""
        lines.append(f"kernels {self.kernels_ms:.3f} ms{in_model} of the model's {self.model_ms:.3f} ms{wait}; "
                     f"by rule (ms): {rules}")
        return "\n".join(lines)


def _rule_of(report, name: str) -> str:
    if report is None:
        return "?"
    if name in report.scheduled:
        return report.scheduled[name]
    if name in report.tuned:
        return "tuned"
    if name in report.kernels:
        return "LUT kernel"
    return "unscheduled" if name in report.unscheduled else "?"


def profile_executable(executable, inputs, flops: dict[str, float] | None = None, repeat: int = 5,
                       min_seconds: float = 0.005, clock=time.perf_counter) -> Profile:
    """Time every kernel call of one run of `executable`'s `main` on `inputs` (TVM tensors or numpy arrays).

    executable: from `tvm_lut.compile(..., exec_mode="bytecode")`; its `lut_report` names each function's rule.
    flops: function name -> floating-point operations per call (`function_flops`), for GFLOPS.
    Each call is repeated (median of `repeat` repetitions of >= `min_seconds`) on the run's own arguments; kernels
    write only their output arguments, so repeating one changes nothing the run reads. Warm and alone, a kernel can
    run faster than in the model, where its inputs may come from another core's cache or from memory (at several
    threads consecutive kernels split their work differently): `in_model_ms` is each function's time as the model
    calls it (median over `repeat` instrumented runs; each call includes a few microseconds of the callback).
    clock: wall time, or `time.process_time` (one thread only: it sums every thread's CPU time) so that other
    processes on a shared machine do not inflate some kernels' repetitions more than others'.
    The whole model and its calls in the model are timed on one VM, one right after the other, so that both see the
    same buffers (a VM's own addresses) and the same moment of a shared machine; `model_cpu_wait` says how many of
    the process's threads stood waiting for a CPU meanwhile and `model_cores` how many CPUs they kept busy
    (`tvm_lut.timing.Timing`): at N threads a model slower than its calls with cores near N and no wait is slow for
    a reason of its own; with fewer cores its threads did not run side by side (other processes held CPUs, or the
    scheduler put them on one core, or the hypervisor ran something else on a CPU: `model_stolen`), and at several
    threads `model_fork_join_us` where the host ran them (about twice its usual value on cores of two dies).
    """
    import tvm
    from tvm import relax

    from schedules.target import num_cores, resolve_target
    from tvm_lut.timing import fork_join_seconds, median_seconds, timings

    device = tvm.cpu()
    arguments = [x if isinstance(x, tvm.runtime.Tensor) else tvm.runtime.tensor(x, device) for x in inputs]
    report = getattr(executable, "lut_report", None)
    seconds: dict[str, list[float]] = {}

    def instrument(func, symbol, before_run, _ret, *args):
        if before_run and not symbol.startswith("vm.builtin."):
            seconds.setdefault(symbol, []).append(median_seconds(lambda: func(*args), repeat, min_seconds, clock))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm = relax.VirtualMachine(executable, device)
    plain = vm["main"]
    plain(*arguments)  # warm-up: the model's own first run
    model = timings({"model": lambda: plain(*arguments)}, repeat, min_seconds, clock)["model"]
    threads = tvm.get_global_func("runtime.NumThreads")()
    if report is not None:  # a build for fewer cores than the pool runs (it never shrinks) is timed at its own count
        threads = min(threads, num_cores(resolve_target(report.target)))
    fork_join = 1e6 * fork_join_seconds() if threads > 1 else None
    in_model = _in_model_seconds(vm, arguments, repeat, clock)
    vm.set_instrument(instrument)
    vm["main"](*arguments)
    if not seconds:
        raise ValueError("no kernel call was seen: profile an executable built with "
                         "tvm_lut.compile(..., exec_mode='bytecode')")

    total = sum(sum(times) for times in seconds.values())
    functions = []
    for symbol, times in seconds.items():
        name = symbol.removesuffix(_PREPACKED)
        work = (flops or {}).get(name)
        functions.append(FunctionTime(name=symbol, rule=_rule_of(report, name), calls=len(times), ms=1e3 * sum(times),
                                      share=sum(times) / total,
                                      gflops=work / statistics.median(times) / 1e9 if work else None,
                                      in_model_ms=1e3 * in_model[symbol] if symbol in in_model else None))
    functions.sort(key=lambda f: -f.ms)
    return Profile(functions=functions, model_ms=1e3 * model.median, model_cpu_wait=model.median_waiting,
                   model_cores=model.median_cores, model_stolen=model.median_stolen, model_fork_join_us=fork_join)


def _in_model_seconds(vm, arguments, repeat: int, clock) -> dict[str, float]:
    """Function -> seconds per model run over all its calls, each call timed once as the model makes it (median
    over `repeat` runs of `vm`, which is left instrumented)."""
    runs: list[dict[str, float]] = []
    started: list[float] = []

    def instrument(func, symbol, before_run, _ret, *args):
        if symbol.startswith("vm.builtin."):
            return 0
        if before_run:
            started.append(clock())
        else:
            runs[-1][symbol] = runs[-1].get(symbol, 0.0) + clock() - started.pop()
        return 0

    vm.set_instrument(instrument)
    for _ in range(repeat):
        runs.append({})
        vm["main"](*arguments)
    return {symbol: statistics.median(run.get(symbol, 0.0) for run in runs) for symbol in runs[0]}


def function_flops(mod) -> dict[str, float]:
    """PrimFunc name -> TVM's estimate of its floating-point operations (functions it cannot estimate are left out)."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    flops = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                flops[gvar.name_hint] = float(estimate_tir_flops(tvm.IRModule({"main": func})))
            except (RuntimeError, ValueError, TypeError):  # a kernel the estimator cannot read
                continue
    return flops


def example_inputs(mod) -> list:
    """Inputs for `main`'s parameters: standard normal floats, ones for integers (valid token ids and masks)."""
    import numpy as np

    arrays = []
    rng = np.random.default_rng(0)
    for param in mod["main"].params:
        shape = [int(d) for d in param.ty.shape]
        dtype = str(param.ty.dtype)
        arrays.append(rng.standard_normal(shape).astype(dtype) if "float" in dtype else np.ones(shape, dtype))
    return arrays


def profile_model(mod, inputs=None, target=None, repeat: int = 5, clock=time.perf_counter,
                  **compile_options) -> tuple[Profile, object]:
    """Compile an imported Relax module with `tvm_lut.compile(**compile_options)` and profile one run of it;
    returns (profile, executable). `inputs` default to `example_inputs(mod)`."""
    from relay_passes.pipeline import prepare
    from schedules import host_target
    from tvm_lut.compiler import compile as compile_model

    target = host_target() if target is None else target
    executable = compile_model(mod, target=target, exec_mode="bytecode", **compile_options)
    lut = {key: compile_options[key] for key in ("bundle", "nonlinear", "winograd") if key in compile_options}
    flops = function_flops(prepare(mod, target, **lut))
    profile = profile_executable(executable, example_inputs(mod) if inputs is None else inputs, flops, repeat,
                                 clock=clock)
    return profile, executable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tvm_lut import model_spec

    model_spec.add_build_arguments(parser, "a tuning database written by `tvm-lut tune` (read only)")
    parser.add_argument("--top", type=int, default=25, help="functions to list, slowest first (25; 0: all)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per kernel call (median; 5)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the profile and the compile report as JSON")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or the process's CPU time (--threads 1 only): on a shared machine "
                             "the time other processes take is then not counted")


def run(args) -> int:
    import json

    from schedules.target import num_cores, runs_on_host
    from tvm_lut import model_spec

    source, bundle, target = model_spec.build_from_args(args)
    if args.clock == "cpu" and num_cores(target) != 1:
        raise model_spec.UsageError(f"--clock cpu times one thread only (it sums every thread's CPU time); "
                                    f"the target runs {num_cores(target)}: add --threads 1")
    if not runs_on_host(target):
        raise model_spec.UsageError(f"tvm-lut profile runs the model here; target {args.target!r} does not run on this "
                                    "CPU (measure it on the device: tvm-lut bench device --rpc-tracker ...)")
    started = time.perf_counter()
    profile, executable = profile_model(source.import_module(), target=target, repeat=args.repeat,
                                        bundle=bundle, nonlinear=args.nonlinear, database=args.db,
                                        winograd=args.winograd,
                                        clock=time.process_time if args.clock == "cpu" else time.perf_counter)
    print(executable.lut_report)
    print(profile.table(args.top or None))
    print(f"(profiled in {time.perf_counter() - started:.1f} s)")
    if args.json:
        payload = {"profile": profile.to_dict(), "report": executable.lut_report.to_dict()}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0
