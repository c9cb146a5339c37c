import socket
import time

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from relay_passes.pipeline import prepare, report_of, tvm_lut_pipeline, without_reports
from schedules import host_target, tuning
from schedules.rpc import CONNECT_SECONDS, Tracker, free_port
from schedules.rules import default_rules
from schedules.target import resolve_target
from schedules.tuning import open_database, target_key, tune

TARGET = host_target()


def _matmul_relu(rows: int = 16, inner: int = 32, cols: int = 48) -> tvm.IRModule:
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((rows, inner), "float32"))
    weight = relax.const(np.random.default_rng(0).standard_normal((inner, cols)).astype("float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(builder.emit(relax.op.nn.relu(relax.op.matmul(x, weight))))
        builder.emit_func_output(out)
    return builder.get()


def test_target_key_separates_cpus_and_thread_counts():
    assert target_key(host_target(1)) != target_key(host_target(2))
    assert target_key(TARGET).startswith(f"llvm-{TARGET.attrs['mcpu']}-")


def test_compiling_never_creates_a_database(tmp_path):
    with pytest.raises(FileNotFoundError, match="tvm-lut tune"):
        open_database(tmp_path, TARGET)
    assert not any(tmp_path.iterdir())


def test_smoke_rule_record_resume_and_compile(tmp_path):
    mod = _matmul_relu()
    (first,) = tune(prepare(mod, TARGET), TARGET, tmp_path, trials_per_task=1, progress=False)
    assert first.trials == 1 and first.rule_ms is not None and first.best_ms == pytest.approx(first.rule_ms)
    (again,) = tune(prepare(mod, TARGET), TARGET, tmp_path, trials_per_task=1, progress=False)
    assert again.rule_ms is None and again.trials == 1  # resumed: nothing measured twice

    with TARGET:
        lowered = tvm_lut_pipeline(database=tmp_path, target=TARGET)(mod)
    report = report_of(lowered)  # the pipeline keeps no state: the report rides on the module
    vm = relax.VirtualMachine(tvm.compile(without_reports(lowered), target=TARGET, relax_pipeline=None), tvm.cpu())
    assert report["already_scheduled"] == [first.name] and report["scheduled"] == {}
    x = np.random.default_rng(1).standard_normal((16, 32)).astype("float32")
    weight = np.random.default_rng(0).standard_normal((32, 48)).astype("float32")
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), np.maximum(x @ weight, 0), rtol=1e-4,
                               atol=1e-4)


def test_tunes_only_the_named_functions_and_names_what_a_model_has(tmp_path):
    """`functions` selects tasks by the names profiles show (a `_prepacked` suffix allowed); an unknown name fails
    before anything is written, naming the functions the model has."""
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((16, 32), "float32"))
    first, second = (relax.const(np.ones(shape, "float32")) for shape in ((32, 48), (48, 8)))
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(builder.emit(relax.op.matmul(builder.emit(relax.op.matmul(x, first)), second)))
        builder.emit_func_output(out)
    mod = prepare(_matmul_relu(), TARGET)
    (name,) = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    with pytest.raises(ValueError, match=rf"no function nothing to tune in this model; it has {name}$"):
        tune(mod, TARGET, tmp_path, trials_per_task=1, progress=False, functions=["nothing"])
    assert not any(tmp_path.iterdir())
    two = prepare(builder.get(), TARGET)
    names = sorted(gv.name_hint for gv, f in two.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert len(names) == 2
    (result,) = tune(two, TARGET, tmp_path, trials_per_task=1, progress=False, functions=[names[0] + "_prepacked"])
    assert result.name == names[0]


def test_rejects_an_empty_budget(tmp_path):
    with pytest.raises(ValueError, match="trials_per_task"):
        tune(prepare(_matmul_relu(), TARGET), TARGET, tmp_path, trials_per_task=0)


@pytest.mark.slow
def test_metaschedule_search_adds_trials(tmp_path):
    (result,) = tune(prepare(_matmul_relu(), TARGET), TARGET, tmp_path, trials_per_task=3, num_trials_per_iter=2,
                     progress=False)
    assert result.trials >= 2 and result.best_ms <= result.rule_ms


def _race_setup(tmp_path):
    """One thread's matmul+ReLU kernel, an empty tuning database and a search database with its workload, and the
    rule's schedule: what `tuning._confirm` races."""
    target = host_target(1)
    (func_mod,) = [tvm.IRModule({"main": f.with_attr("global_symbol", "main")})
                   for f in prepare(_matmul_relu(64, 128, 256), target).functions.values()
                   if isinstance(f, tvm.tirx.PrimFunc)]
    database, search = open_database(tmp_path, target, create=True), ms.database.MemoryDatabase()
    workload, search_workload = database.commit_workload(func_mod), search.commit_workload(func_mod)
    rule = tuning._rule_schedule(func_mod["main"], target, default_rules())
    return target, func_mod, database, workload, search, search_workload, rule


def test_a_searched_record_must_beat_the_rule_in_process(tmp_path):
    """MetaSchedule's runner times a candidate once, in a worker: a record claiming 1 ns for the unscheduled loop
    nest (50x slower than the rule here) is timed again beside the rule schedule, and the rule stays what compiling
    applies. One thread: on a shared machine a parallel launch alone can cost more than a small kernel."""
    target, func_mod, database, workload, search, search_workload, rule = _race_setup(tmp_path)
    naive = tvm.s_tir.Schedule(func_mod)
    naive.get_loops(naive.get_child_blocks(naive.get_sblock("root"))[0])  # databases never return an empty trace
    search.commit_tuning_record(tuning._record(naive, search_workload, [1e-9], target, func_mod))
    tuning._confirm(database, workload, search.get_top_k(search_workload, 1), rule, target, func_mod)
    records = database.get_top_k(workload, 10)
    assert len(records) == 2 and all(len(r.run_secs) == 3 * tuning._CONFIRM_ROUNDS for r in records)
    assert str(records[0].trace) == str(rule.trace)
    tuning._confirm(database, workload, search.get_top_k(search_workload, 1), rule, target, func_mod)
    assert len(database.get_top_k(workload, 10)) == 2  # confirmed once


def test_the_best_candidate_is_raced_when_the_rule_leads_the_search(tmp_path):
    """The rule's record (CPU clock) can rank above every MetaSchedule trial (a worker's wall clock) in the search
    database: the best candidate below it is the one raced."""
    target, func_mod, database, workload, search, search_workload, rule = _race_setup(tmp_path)
    for db, key in ((database, workload), (search, search_workload)):
        db.commit_tuning_record(tuning._record(rule, key, [1e-9], target, func_mod))
    naive = tvm.s_tir.Schedule(func_mod)
    naive.get_loops(naive.get_child_blocks(naive.get_sblock("root"))[0])
    search.commit_tuning_record(tuning._record(naive, search_workload, [1.0], target, func_mod))
    tuning._confirm(database, workload, search.get_top_k(search_workload, 10), rule, target, func_mod)
    records = database.get_top_k(workload, 10)
    assert len(records) == 3 and str(naive.trace) in {str(r.trace) for r in records}


def test_a_changed_rule_is_raced_against_the_tuned_record(tmp_path):
    """A database tuned under older rules keeps its records; tuning again with rules whose schedule differs times
    the new schedule beside the database's best (same rounds) and commits it, so a compile never applies a record
    that lost to the rules it would otherwise get. Here the old "rule" left the loop nest as it is."""
    from schedules.rules.common import CPURule

    class AsItIs(CPURule):
        def schedule(self, sch, blocks, target):
            sch.get_loops(blocks[0].block_rv)  # a non-empty trace
            return sch

    target = host_target(1)
    mod = prepare(_matmul_relu(64, 128, 256), target)
    tune(mod, target, tmp_path, trials_per_task=1, progress=False, rules=[AsItIs()])
    (again,) = tune(mod, target, tmp_path, trials_per_task=1, progress=False)
    assert again.rule_ms is not None and again.best_ms == pytest.approx(again.rule_ms)
    database = open_database(tmp_path, target)
    (func_mod,) = [tvm.IRModule({"main": f.with_attr("global_symbol", "main")}) for f in mod.functions.values()
                   if isinstance(f, tvm.tirx.PrimFunc)]
    records = database.get_top_k(database.commit_workload(func_mod), 10)
    rule = tuning._rule_schedule(func_mod["main"], target, default_rules())
    assert len(records) == 3 and str(records[0].trace) == str(rule.trace)
    assert len(records[0].run_secs) == 3 * tuning._CONFIRM_ROUNDS
    (third,) = tune(mod, target, tmp_path, trials_per_task=1, progress=False)
    assert third.rule_ms is None and len(database.get_top_k(database.commit_workload(func_mod), 10)) == 3


def test_one_thread_is_timed_on_the_process_cpu_clock(monkeypatch):
    """At one thread the rule and confirmation timings read the process's CPU clock (a loaded host's other
    processes do not count); a device, or several threads, keep `time_evaluator`'s wall clock."""
    calls = []
    monkeypatch.setattr(tuning.time, "process_time", lambda: calls.append(1) or 0.001 * len(calls))
    target = host_target(1)
    (func_mod,) = [tvm.IRModule({"main": f.with_attr("global_symbol", "main")})
                   for f in prepare(_matmul_relu(), target).functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    rule = tuning._rule_schedule(func_mod["main"], target, default_rules())
    secs = tuning._time_schedules({"rule": rule}, target, func_mod, rounds=2)["rule"]
    assert calls and len(secs) == 2 * tuning._REPEAT and all(s > 0 for s in secs)


def test_timing_leaves_out_the_weight_repacking_compiled_models_fold():
    """A conv's channel-block schedule repacks its weight in a preprocessing block that the pipeline folds at
    compile time: the tuned timing covers the rest, with the packed weight as an input; other functions as they are."""
    from tvm import te, topi

    from schedules.rules import Conv2d

    x, w = te.placeholder((1, 8, 6, 6), name="x"), te.placeholder((16, 8, 3, 3), name="w")
    conv = Conv2d().apply(te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 1, 1)]), TARGET, False)
    timed = tuning._without_weight_prepack(conv.mod["main"])
    shapes = [tuple(int(d) for d in info.shape) for info in ms.arg_info.ArgInfo.from_prim_func(timed)]
    lanes = shapes[1][-1]
    assert shapes == [(1, 8, 6, 6), (16 // lanes, 8, 3, 3, lanes), (1, 16, 6, 6)]
    assert "layout_rewrite_preproc" not in timed.script()
    plain = te.create_prim_func([x, topi.nn.relu(x)])
    assert tuning._without_weight_prepack(plain).same_as(plain)


def _database_files(root):
    return {path: path.read_bytes() for path in sorted(root.rglob("*.json"))}


def test_a_database_of_another_target_is_not_applied(tmp_path):
    tune(prepare(_matmul_relu(), TARGET), TARGET, tmp_path, trials_per_task=1, progress=False)
    arm = resolve_target("aarch64")
    assert target_key(arm).startswith("llvm-aarch64-generic-4c-")
    with pytest.raises(FileNotFoundError, match=rf"holds databases of other targets only: {target_key(TARGET)}"):
        tvm_lut_pipeline(database=tmp_path, target=arm)


def test_an_unreachable_tracker_fails_fast_and_keeps_the_database(tmp_path):
    tune(prepare(_matmul_relu(), TARGET), TARGET, tmp_path, trials_per_task=1, progress=False)
    before = _database_files(tmp_path)
    arm = resolve_target("aarch64")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"cannot reach the RPC tracker at 127\.0\.0\.1:\d+ within 10 s"):
        tune(prepare(_matmul_relu(), arm), arm, tmp_path, trials_per_task=1, progress=False,
             tracker=Tracker("127.0.0.1", free_port(), "nobody"))
    assert time.monotonic() - started < 2 * CONNECT_SECONDS
    assert _database_files(tmp_path) == before


def test_a_trial_stuck_on_a_device_fails_after_the_trial_timeout(monkeypatch):
    """A device that accepts the connection and never answers (the stall seen in CI): the trial ends as a
    "Timeout" failure after the trial bound, not after the 30-minute session bound."""
    monkeypatch.setattr(tuning, "_TIMEOUT_SECONDS", 5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nobody ever reads or replies
        runner = tuning._rpc_runner(Tracker("127.0.0.1", silent.getsockname()[1], "silent"), devices=1, threads=1)
        started = time.monotonic()
        (future,) = runner.run([ms.runner.RunnerInput("trial_none.so", "cpu", [])])
        result = future.result()
    assert "Timeout, killed after 5 seconds" in result.error_msg and result.run_secs is None
    assert time.monotonic() - started < 60


def test_a_target_that_cannot_run_here_needs_a_device(tmp_path):
    arm = resolve_target("aarch64")
    with pytest.raises(ValueError, match="does not run on this machine.*--rpc-tracker"):
        tune(prepare(_matmul_relu(), arm), arm, tmp_path, trials_per_task=1, progress=False)
    assert not any(tmp_path.iterdir())

