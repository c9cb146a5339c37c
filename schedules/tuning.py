"""MetaSchedule tuning into a persistent database, one per target; compiling only reads it.

Layout: `<root>/<target key>/database_{workload,tuning_record}.json` (MetaSchedule's JSON database), where the
target key names the architecture, the CPU, the thread count and a hash of the whole target, so records measured
for one target are never applied to another (a directory ships as the target's database). Records are keyed by workload (the structural hash of a PrimFunc), so any later compile
that produces the same function finds them.

`tune()` works task by task (one task per distinct PrimFunc): it first measures the CPU rules' own schedule and
commits it, so the database's best is never worse than the untuned build and the search starts from it; then it
runs MetaSchedule (evolutionary search, XGBoost cost model) for the trials the task still lacks; then it confirms the
search's best candidate against the rule schedule, both timed in this process with repetitions interleaved (at one
thread on the process's CPU clock), and commits those timings. A rule schedule that changed since the task was tuned
is raced against the database's best the same way when tuning runs again. The search's own trials go to a second database beside the first (`search/`): MetaSchedule's runner times
each candidate once, in a worker process, and those timings are not comparable with the rule's (a MiniLM matmul
recorded at 1.34 ms ran at 2.14 ms against the rule's 1.36 ms, and made the tuned model slower than the untuned
one). Compiling reads only the confirmed records. Every search trial is committed at once, so an interrupted run
resumes where it stopped: trials already in the search database count toward the budget. Both the rule schedule
and MetaSchedule's candidates run on the target's `num-cores` threads (TVM's runtime would otherwise take its own
count).

Remote devices (`tracker=schedules.rpc.Tracker`): every measurement runs on a device of the tracker's pool, the
search's through MetaSchedule's `RPCRunner` (libraries linked here with the target's cross compiler, so a device
needs no compiler; one runner worker per registered device, so the devices share the trials; the device runtime
set to the target's threads; sessions of `Tracker.session_seconds`), the rule schedule's and the confirmation's
through one session each. The tracker is asked before anything is written: an unreachable one is an error that
leaves the database as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import time
import types
import warnings
from pathlib import Path

import numpy as np
import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.ir.utils import derived_object
from tvm.support.popen_pool import PopenPoolExecutor
from tvm.target import Target

from .rules import default_rules
from .rules.common import WEIGHT_PREPACK
from .target import architecture, export_library, num_cores, resolve_target, runs_on_host, use_runtime_threads


_WORKLOADS = "database_workload.json"
_RECORDS = "database_tuning_record.json"
_PREPACKED = "_prepacked"  # the suffix of a function whose weight repacking the pipeline split off
_SEARCH = "search"  # subdirectory: MetaSchedule's own trials (resume and budget), never read by compiling
# Builder/runner workers import TVM first: on a busy 2-core machine that alone can take half a minute. A remote
# trial (one kernel: connect, upload, load, time) under qemu takes seconds.
_TIMEOUT_SECONDS = 300
# In-process timing (rule schedule, confirmation): repetitions of at least this many milliseconds each.
_REPEAT = 3
_MIN_REPEAT_MS = 20
# Confirmation: the search's best and the rule schedule timed alternately, this many times each.
_CONFIRM_ROUNDS = 5
# Libraries of the search's candidates, as a device receives them (a server logs `load_module <name>` per trial).
TRIAL_PREFIX = "trial_"


def target_key(target: Target) -> str:
    """A directory name for `target`: readable CPU and cores, plus a hash of the full target."""
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    cpu = target.attrs.get("mcpu") or "generic"
    arch = f"{architecture(target)}-" if target.attrs.get("mtriple") else ""
    return f"{target.kind.name}-{arch}{cpu}-{num_cores(target)}c-{digest}"


def open_database(root: str | Path, target: Target, create: bool = False,
                  search: bool = False) -> ms.database.JSONDatabase:
    """The database of `target` under `root` (with `search`, the one of MetaSchedule's own trials); with
    `create=False` a missing one is an error (compiling reads only)."""
    directory = Path(root) / target_key(target) / (_SEARCH if search else "")
    if not create and not (directory / _RECORDS).is_file():
        others = sorted(p.parent.name for p in Path(root).glob(f"*/{_RECORDS}"))
        held = f"it holds databases of other targets only: {', '.join(others)}" if others else "it holds none"
        raise FileNotFoundError(f"no tuning database for target {target} under {root} (expected {directory}; "
                                f"{held}); run `tvm-lut tune` with this target first, or compile without a database")
    directory.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(str(directory / _WORKLOADS), str(directory / _RECORDS), allow_missing=create)


@dataclasses.dataclass
class TaskResult:
    name: str
    trials: int  # trials of this task (the rule schedule and the search's) after this run
    rule_ms: float | None  # the CPU rules' schedule, None if no rule fits
    best_ms: float | None


def tune(mod: tvm.IRModule, target: Target, root: str | Path, trials_per_task: int = 64,
         num_trials_per_iter: int = 16, rules=None, progress=True, tracker=None,
         functions=None) -> list[TaskResult]:
    """Tune every unscheduled PrimFunc of `mod` (legalized and fused) for `target`; write records under `root`.

    `functions`: names of the PrimFuncs to tune (as `tvm-lut profile` lists them, a `_prepacked` suffix allowed),
    None for all: a model of fifty functions spends most of its time in a few, and a search of every one does
    not fit a tuning budget of minutes on a small machine. A name the model lacks is an error naming those it has.

    `tracker`: a `schedules.rpc.Tracker` whose devices measure (see the module docstring); None measures here,
    which needs a target this machine runs. `progress`: True/False for a tqdm bar over the tasks, or the caller's
    own `tqdm`-like wrapper (the CLI's prints plain lines in a log).
    """
    if trials_per_task < 1:
        raise ValueError(f"trials_per_task must be >= 1, got {trials_per_task}")
    if tracker is None and not runs_on_host(target):
        raise ValueError(f"target {target} does not run on this machine: measure on the device "
                         "(--rpc-tracker HOST:PORT --rpc-key KEY)")
    extracted = [t for t in ms.relax_integration.extract_tasks(mod, target)
                 if not t.dispatched[0]["main"].attrs.get("tirx.is_scheduled", False)]
    if functions is not None:
        extracted = _selected(extracted, functions)
    devices = tracker.check() if tracker is not None else 0  # before anything is written
    if not callable(progress):
        from tqdm import tqdm

        progress = functools.partial(tqdm, disable=not progress)

    database = open_database(root, target, create=True)
    search_database = open_database(root, target, create=True, search=True)
    rules = tuple(default_rules() if rules is None else rules)
    results = []
    work_dir = str(Path(root) / target_key(target))  # MetaSchedule keeps its per-task logs in work_dir/logs
    measure = _Measure(tracker, devices)
    with _timed_on_threads_of(target) if tracker is None else contextlib.nullcontext():
        for task in progress(extracted, desc="tuning", unit="task"):
            results.append(_tune_task(task, database, search_database, target, rules, trials_per_task,
                                      num_trials_per_iter, work_dir, measure))
    return results


def _selected(tasks: list, functions) -> list:
    """The tasks named in `functions` (a compiled function's `_prepacked` suffix, as profiles show it, dropped)."""
    wanted = {name.removesuffix(_PREPACKED) for name in functions}
    missing = wanted - {task.task_name for task in tasks}
    if missing:
        raise ValueError(f"no function {', '.join(sorted(missing))} to tune in this model; it has "
                         f"{', '.join(sorted(task.task_name for task in tasks))}")
    return [task for task in tasks if task.task_name in wanted]


@dataclasses.dataclass(frozen=True)
class _Measure:
    """Where a tuning run measures: here (no tracker) or on the tracker's `devices` devices."""

    tracker: object = None
    devices: int = 0


def _tune_task(task, database, search_database, target: Target, rules, trials_per_task: int,
               num_trials_per_iter: int, work_dir: str, measure: _Measure = _Measure()) -> TaskResult:
    """The rule schedule first (if the task has no record yet), then the search for the trials still missing,
    then the search's best confirmed against the rule schedule."""
    func_mod = task.dispatched[0]
    workload, search_workload = database.commit_workload(func_mod), search_database.commit_workload(func_mod)
    rule = _rule_schedule(func_mod["main"], target, rules)
    rule_ms = None
    tuned = database.get_top_k(workload, 1)
    if rule is not None and (not tuned or not _holds(database, workload, rule.trace, func_mod)):
        if tuned:  # the rules changed since this function was tuned: their schedule races the best record
            run_secs = _race(database, workload, tuned[0].trace, rule, target, func_mod, measure.tracker)["rule"]
        else:
            run_secs = _time_schedules({"rule": rule}, target, func_mod, rounds=1, tracker=measure.tracker)["rule"]
            database.commit_tuning_record(_record(rule, workload, run_secs, target, func_mod))
        # the search starts from it
        search_database.commit_tuning_record(_record(rule, search_workload, run_secs, target, func_mod))
        rule_ms = _median_ms(run_secs)
    remaining = trials_per_task - len(search_database.get_top_k(search_workload, trials_per_task))
    if remaining > 0:
        _search(task, search_database, target, remaining, min(num_trials_per_iter, remaining), work_dir, measure)
    if rule is not None:
        _confirm(database, workload, search_database.get_top_k(search_workload, 1 << 30), rule, target, func_mod,
                 tracker=measure.tracker)
    best = database.get_top_k(workload, 1)
    return TaskResult(task.task_name, len(search_database.get_top_k(search_workload, 1 << 30)), rule_ms,
                      _median_ms(best[0].run_secs) if best else None)


def _confirm(database, workload, searched: list, rule: s_tir.Schedule, target: Target, func_mod,
             tracker=None) -> None:
    """The best of the `searched` records (best first) that `database` does not hold yet raced against the rule
    schedule (`_race`). The rule's own record leads the search's ranking at one thread (timed on the CPU clock,
    MetaSchedule's trials on the wall clock of a worker): the first record is not always a candidate."""
    candidate = next((record for record in searched if not _holds(database, workload, record.trace, func_mod)), None)
    if candidate is not None:
        _race(database, workload, candidate.trace, rule, target, func_mod, tracker)


def _holds(database, workload, trace, func_mod) -> bool:
    """`database` has a record of `trace` for `workload` (the trace as recorded, or as it replays)."""
    known = {str(record.trace) for record in database.get_top_k(workload, 1 << 30)}
    return str(trace) in known or str(_replayed(trace, func_mod).trace) in known


def _replayed(trace, func_mod) -> s_tir.Schedule:
    schedule = s_tir.Schedule(func_mod)
    trace.apply_to_schedule(schedule, remove_postproc=False)
    return schedule


def _race(database, workload, trace, rule: s_tir.Schedule, target: Target, func_mod,
          tracker=None) -> dict[str, list[float]]:
    """`trace`'s schedule and the rule schedule timed alternately (`_CONFIRM_ROUNDS` rounds), both committed:
    compiling then applies whichever ran faster under the same conditions. Returns the timings."""
    candidate = _replayed(trace, func_mod)
    timings = _time_schedules({"rule": rule, "candidate": candidate}, target, func_mod, rounds=_CONFIRM_ROUNDS,
                              tracker=tracker)
    for name, schedule in (("rule", rule), ("candidate", candidate)):
        database.commit_tuning_record(_record(schedule, workload, timings[name], target, func_mod))
    return timings


@contextlib.contextmanager
def _timed_on_threads_of(target: Target):
    """Within: this process's TVM thread pool and the runner workers it starts (they inherit `TVM_NUM_THREADS`)
    run the target's thread count. A pool that already runs fewer cannot grow: the rule timings then use what it
    has, and a warning says so."""
    previous = os.environ.get("TVM_NUM_THREADS")
    try:
        use_runtime_threads(target)
    except RuntimeError as err:
        warnings.warn(f"rule schedules are timed on fewer threads than the candidates: {err}", stacklevel=3)
    os.environ["TVM_NUM_THREADS"] = str(num_cores(target))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = previous


def _search(task, database, target: Target, trials: int, per_iter: int, work_dir: str,
            measure: _Measure = _Measure()) -> None:
    """MetaSchedule's evolutionary search with the XGBoost cost model, committing into `database`.

    The search, builder and cost model use the target's cores when it runs here (MetaSchedule would take every
    core of the machine), this process's when a device measures.
    """
    threads = num_cores(target) if measure.tracker is None else len(os.sched_getaffinity(0))
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts([task], work_dir, num_threads=threads)
    if measure.tracker is None:
        builder = ms.builder.LocalBuilder(max_workers=threads, timeout_sec=_TIMEOUT_SECONDS)
        runner = ms.runner.LocalRunner(timeout_sec=_TIMEOUT_SECONDS)
    else:
        builder = ms.builder.LocalBuilder(max_workers=threads, timeout_sec=_TIMEOUT_SECONDS,
                                          f_export=functools.partial(_export_for, target=str(target)))
        runner = _rpc_runner(measure.tracker, measure.devices, num_cores(target))
    ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=trials,
                  max_trials_per_task=trials, num_trials_per_iter=per_iter, database=database,
                  builder=builder, runner=runner, cost_model=ms.cost_model.XGBModel(num_tuning_cores=threads))


def _rpc_runner(tracker, devices: int, threads: int) -> ms.runner.RPCRunner:
    """MetaSchedule's runner on the tracker's pool: one worker per device (so they measure side by side), long
    sessions, the device runtime on `threads` threads, each trial bounded by `_TIMEOUT_SECONDS`."""
    config = ms.runner.RPCConfig(tracker_host=tracker.host, tracker_port=tracker.port, tracker_key=tracker.key,
                                 session_timeout_sec=int(tracker.session_seconds))
    evaluator = ms.runner.EvaluatorConfig(number=1, repeat=_REPEAT, min_repeat_ms=_MIN_REPEAT_MS)
    return _BoundedRPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=max(devices, 1),
                             f_create_session=functools.partial(_create_session, threads=threads))


@derived_object
class _BoundedRPCRunner(ms.runner.RPCRunner._cls):
    """MetaSchedule's RPC runner whose trials end after `_TIMEOUT_SECONDS`: its own pool waits on a trial for as
    long as the session may last (30 minutes), so one trial stuck on a device stalled a whole search."""

    def __init__(self, *, max_workers: int, **kwargs):
        super().__init__(max_workers=max_workers, **kwargs)
        self.pool.shutdown(wait=False)
        # A trial past the timeout has its worker killed and fails with "Timeout"; the search goes on.
        self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=_TIMEOUT_SECONDS)

    def run(self, runner_inputs):
        futures = super().run(runner_inputs)
        for future in futures:
            future.timeout_sec = _TIMEOUT_SECONDS  # what its "Timeout, killed after N seconds" reports
        return futures


def _create_session(rpc_config, threads: int):
    """The RPC runner's session, its device runtime set to the target's threads (the runner never sets them)."""
    from .rpc import set_remote_threads

    session = rpc_config.connect_server()
    set_remote_threads(session, threads)
    return session


def _export_for(mod, target: str) -> str:
    """The builder's export: a shared library linked for `target` here (the device needs no compiler)."""
    import tempfile
    import uuid

    # A name of its own: the runner uploads under the file's name, and a device log then tells trials apart.
    path = os.path.join(tempfile.mkdtemp(), f"{TRIAL_PREFIX}{uuid.uuid4().hex}.so")
    export_library(mod, path, resolve_target(target))
    return path


def _rule_schedule(func: tvm.tirx.PrimFunc, target: Target, rules) -> s_tir.Schedule | None:
    """The first fitting rule's schedule of `func`."""
    return next((s for s in (rule.apply(func, target, False) for rule in rules) if s is not None), None)


def _record(schedule: s_tir.Schedule, workload, run_secs: list[float], target: Target, func_mod):
    return ms.database.TuningRecord(schedule.trace, workload, run_secs, target,
                                    ms.arg_info.ArgInfo.from_prim_func(func_mod["main"]))


def _time_schedules(schedules: dict, target: Target, func_mod, rounds: int,
                    tracker=None) -> dict[str, list[float]]:
    """Seconds per run of each schedule: built here, timed with `time_evaluator` (`_REPEAT` repetitions per
    round), the schedules taking turns each round so a shared machine's load hits them alike. What is timed is
    what compiled models run (`_without_weight_prepack`).

    In this process, or on one device of `tracker` through one session: MetaSchedule's builder and runner start
    worker processes that import TVM, which costs more than the measurement itself. Here at one thread, on this
    process's CPU clock (`_cpu_clock_timer`).
    """
    from .rpc import upload_library

    session = tracker.session() if tracker is not None else None
    device = session.cpu() if session is not None else tvm.cpu()
    rng = np.random.default_rng(0)
    timers = {}
    for name, schedule in schedules.items():
        func = _without_weight_prepack(schedule.mod["main"])
        args = [tvm.runtime.tensor(rng.uniform(-1, 1, [int(d) for d in info.shape]).astype(info.dtype), device)
                for info in ms.arg_info.ArgInfo.from_prim_func(func)]
        kernel = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
        module = kernel.jit() if session is None else upload_library(session, kernel, target)
        on_cpu_clock = session is None and num_cores(target) == 1
        timers[name] = (_cpu_clock_timer(module["main"]) if on_cpu_clock else evaluator(module, "main", device), args)
    run_secs = {name: [] for name in schedules}
    for _ in range(rounds):
        for name, (timer, args) in timers.items():
            run_secs[name] += list(timer(*args).results)
    return run_secs


def _cpu_clock_timer(function):
    """`evaluator`'s form (call it with the arguments, read `.results`) on this process's CPU clock, for one
    thread: on a shared machine the time other processes take is not counted. Under a load of 6-8 on 2 cores, at
    nice 15, `time_evaluator` timed a depthwise conv the profile puts at 142 us at 2.5-5.6 ms."""

    def timer(*args):
        start = time.process_time()
        function(*args)  # warm-up, and the calls a repetition needs
        calls = max(1, math.ceil(_MIN_REPEAT_MS / 1e3 / max(time.process_time() - start, 1e-7)))
        results = []
        for _ in range(_REPEAT):
            start = time.process_time()
            for _ in range(calls):
                function(*args)
            results.append((time.process_time() - start) / calls)
        return types.SimpleNamespace(results=results)

    return timer


def evaluator(module, name: str, device):
    """The timer tuning measures with: `time_evaluator` of `module[name]` (a runtime module or a
    `relax.VirtualMachine`, local or over RPC with `device` the remote one), `_REPEAT` repetitions of at least
    `_MIN_REPEAT_MS` each; call it with the arguments, read `.results` (seconds per call)."""
    return module.time_evaluator(name, device, number=1, repeat=_REPEAT, min_repeat_ms=_MIN_REPEAT_MS)


def _without_weight_prepack(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """`func` as compiled models run it: a weight repacking that a rule marked as layout-rewrite preprocessing is
    split off by the pipeline and folded on the constant weight, so it must not be timed (counted on every call,
    it made the CNN's second conv 80 us against the 66 us it runs at)."""
    if WEIGHT_PREPACK not in func.script():
        return func
    from tvm import relax

    *inputs, output = ms.arg_info.ArgInfo.from_prim_func(func)
    builder = relax.BlockBuilder()
    kernel = builder.add_func(func, "kernel")
    params = [relax.Var(f"x{k}", relax.TensorType([int(d) for d in info.shape], info.dtype))
              for k, info in enumerate(inputs)]
    with builder.function("main", params):
        out_ty = relax.TensorType([int(d) for d in output.shape], output.dtype)
        result = builder.emit(relax.call_tir(kernel, params, out_ty))
        builder.emit_func_output(result)
    split = relax.transform.SplitLayoutRewritePreproc()(builder.get())
    return next(f for gv, f in split.functions_items() if gv.name_hint == "kernel_prepacked")


def _median_ms(run_secs) -> float:
    values = sorted(float(s) for s in run_secs)
    return 1e3 * values[len(values) // 2]
