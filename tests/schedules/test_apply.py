import numpy as np
import pytest
import tvm
from tvm import te, topi

from schedules import ApplyCPUSchedules, RuleFailureWarning, ScheduleReport, UnscheduledWarning, host_target, softmax_func
from schedules.apply import KERNEL_ATTR
from schedules.kernels.pq_encode import pq_encode_func
from schedules.kernels.pq_lookup_dot import DotLookupLayout
from schedules.kernels.pwl import PARALLEL_WORK_ATTR
from schedules.kernels.reference import softmax_reference
from schedules.rules import Elementwise, Reduction, default_rules
from schedules.target import override_params
from tests.schedules.kernel_harness import EXP, RECIPROCAL
from tests.schedules.rule_harness import TARGET, loop_kinds, run


def _module(**funcs) -> tvm.IRModule:
    return tvm.IRModule({name: func.with_attr("global_symbol", name) for name, func in funcs.items()})


def _softmax(shape):
    x = te.placeholder(shape, name="x")
    return te.create_prim_func([x, topi.nn.softmax(x)])


def _full_sum():
    x = te.placeholder((4, 16), name="x")
    return te.create_prim_func([x, topi.sum(x)])


def test_schedules_every_function_and_reports_the_rule():
    apply = ApplyCPUSchedules(target=host_target())
    mod = apply(_module(softmax=_softmax((6, 40)), tiny_softmax=_softmax((1, 1))))
    report = ScheduleReport.of(mod)
    assert report.scheduled == {"softmax": "Reduction", "tiny_softmax": "Elementwise"}
    assert report.unscheduled == [] and report.rule_failures == {}
    assert all(mod[name].attrs["tirx.is_scheduled"] for name in ("softmax", "tiny_softmax"))
    data = np.random.default_rng(0).standard_normal((6, 40), dtype="float32")
    expected = np.exp(data) / np.exp(data).sum(-1, keepdims=True)
    np.testing.assert_allclose(run(mod["softmax"], data), expected, rtol=1e-5)


def test_names_what_it_leaves_unscheduled():
    apply = ApplyCPUSchedules(rules=[Elementwise()], target=host_target())
    with pytest.warns(UnscheduledWarning, match="left naive: full_sum"):
        mod = apply(_module(full_sum=_full_sum()))
    assert ScheduleReport.of(mod).unscheduled == ["full_sum"]
    assert "tirx.is_scheduled" not in (mod["full_sum"].attrs or {})


def test_keeps_functions_already_scheduled():
    func = _full_sum().with_attr("tirx.is_scheduled", True)
    apply = ApplyCPUSchedules(target=host_target())
    mod = apply(_module(done=func))
    assert ScheduleReport.of(mod).already_scheduled == ["done"]
    tvm.ir.assert_structural_equal(mod["done"], func.with_attr("global_symbol", "done"))


def test_reports_hand_written_kernels_apart_from_tuning_records():
    kernel = _full_sum().with_attr("tirx.is_scheduled", True).with_attr(KERNEL_ATTR, "pq_encode")
    report = ScheduleReport.of(ApplyCPUSchedules(target=host_target())(_module(kernel=kernel)))
    assert report.kernels == {"kernel": "pq_encode"} and report.already_scheduled == []


def _scheduled_softmax(shape):
    return softmax_func(EXP, RECIPROCAL, shape, -1)


@pytest.mark.parametrize("cores, shape, min_work, parallel", [
    (2, (4, 64, 64), 1024, True),  # 16k elements, above the threshold
    (2, (4, 64, 64), 32 * 1024, False),  # below it: a launch costs more than it saves
    (1, (4, 64, 64), 0, False),  # one core: nothing to launch
])
def test_hand_written_kernels_run_serial_where_a_launch_does_not_pay(cores, shape, min_work, parallel):
    with override_params(min_parallel_work=min_work):
        mod = ApplyCPUSchedules(target=host_target(cores))(_module(softmax=_scheduled_softmax(shape)))
    assert ("parallel" in loop_kinds(mod["softmax"])) == parallel
    assert "parallel" in loop_kinds(_scheduled_softmax(shape))  # as the kernel wrote it
    data = (np.random.default_rng(1).standard_normal(shape) * 4).astype("float32")
    np.testing.assert_allclose(run(mod["softmax"], data), softmax_reference(EXP, RECIPROCAL, data, -1),
                               rtol=1e-5, atol=1e-6)


def test_a_kernel_that_states_its_work_is_weighed_by_it():
    """A PQ encode of 45 rows reads a buffer of 5k floats but does 81k multiply-adds: it stays parallel."""
    layout = DotLookupLayout(rows=45, codebooks=7, centroids=16, outputs=48, lanes=64)
    encode = pq_encode_func(layout, 16, threads=2)
    assert encode.attrs[PARALLEL_WORK_ATTR] == 45 * 7 * 16 * 16
    mod = ApplyCPUSchedules(target=host_target(2))(_module(encode=encode))
    assert "parallel" in loop_kinds(mod["encode"])
    with override_params(min_parallel_work=45 * 7 * 16 * 16 + 1):
        mod = ApplyCPUSchedules(target=host_target(2))(_module(encode=encode))
    assert "parallel" not in loop_kinds(mod["encode"])


def test_already_scheduled_functions_get_vector_exp():
    # A tuning record replays on the legalized function: its exp is still a libm call per lane.
    func = _softmax((3, 5)).with_attr("tirx.is_scheduled", True)
    apply = ApplyCPUSchedules(target=host_target())
    mod = apply(_module(tuned=func))
    assert ScheduleReport.of(mod).already_scheduled == ["tuned"]
    assert "T.exp(" in func.script() and "T.exp(" not in mod["tuned"].script()
    data = np.random.default_rng(1).standard_normal((3, 5), dtype="float32")
    expected = np.exp(data) / np.exp(data).sum(-1, keepdims=True)
    np.testing.assert_allclose(run(mod["tuned"], data), expected, rtol=1e-5)


def test_uses_the_target_in_scope():
    apply = ApplyCPUSchedules()
    with host_target():
        mod = apply(_module(softmax=_softmax((6, 40))))
    assert ScheduleReport.of(mod).scheduled == {"softmax": "Reduction"}


def test_without_a_target_says_so():
    with pytest.raises(ValueError, match="target"):
        ApplyCPUSchedules()(_module(softmax=_softmax((6, 40))))


def test_a_single_row_softmax_is_scheduled_and_still_correct():
    apply = ApplyCPUSchedules(target=host_target())
    mod = apply(_module(single_row=_softmax((1, 3))))
    report = ScheduleReport.of(mod)
    assert report.scheduled == {"single_row": "Reduction"} and report.unscheduled == []
    data = np.array([[1.0, np.inf, -2.0]], dtype="float32")
    with np.errstate(invalid="ignore"):
        expected = np.exp(data - data.max()) / np.exp(data - data.max()).sum()
    np.testing.assert_allclose(run(mod["single_row"], data), expected)


def _empty_functions():
    """Zero-size functions of every op class: a matmul with no rows, a conv with no images, a softmax and an
    add with no rows."""
    a, b = te.placeholder((0, 64), name="a"), te.placeholder((64, 32), name="b")
    r = te.reduce_axis((0, 64), "r")
    yield te.create_prim_func([a, b, te.compute((0, 32), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r))])
    x, w = te.placeholder((0, 8, 6, 6), name="x"), te.placeholder((4, 8, 3, 3), name="w")
    yield te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 1, 1)])
    yield te.create_prim_func([a, topi.nn.softmax(a)])
    yield te.create_prim_func([a, topi.add(a, a)])


@pytest.mark.parametrize("func", list(_empty_functions()), ids=["matmul", "conv2d", "softmax", "add"])
def test_no_rule_raises_on_an_empty_function(func):
    for rule in default_rules():
        sch = rule.apply(func, TARGET, False)
        if sch is not None:  # a rule that serves it builds it
            tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target=TARGET)


class _Raises(Reduction):
    """A rule with a bug: it raises (here a TVM internal error, as a failed check would) on every function."""

    def __init__(self, error):
        self.error = error

    def schedule(self, sch, blocks, target):
        raise self.error


@pytest.mark.parametrize("error", [tvm.error.InternalError("Check failed: (node.defined()) is false"),
                                   ZeroDivisionError("division by zero"), KeyError("block")])
def test_a_rule_that_raises_is_skipped_named_and_the_next_rule_serves(error):
    apply = ApplyCPUSchedules(rules=[_Raises(error), Reduction()], target=host_target())
    with pytest.warns(RuleFailureWarning, match=f"_Raises raised on softmax .*{type(error).__name__}"):
        mod = apply(_module(softmax=_softmax((6, 40))))
    report = ScheduleReport.of(mod)
    assert report.scheduled == {"softmax": "Reduction"} and report.unscheduled == []
    ((failure,),) = report.rule_failures.values()
    assert failure["rule"] == "_Raises" and failure["error"].startswith(type(error).__name__)
    data = np.random.default_rng(2).standard_normal((6, 40), dtype="float32")
    expected = np.exp(data) / np.exp(data).sum(-1, keepdims=True)
    np.testing.assert_allclose(run(mod["softmax"], data), expected, rtol=1e-5)


def test_a_function_only_failing_rules_reach_stays_naive_and_is_reported():
    apply = ApplyCPUSchedules(rules=[_Raises(RuntimeError("boom"))], target=host_target())
    with pytest.warns(RuleFailureWarning, match="boom"), pytest.warns(UnscheduledWarning, match="softmax"):
        mod = apply(_module(softmax=_softmax((6, 40))))
    report = ScheduleReport.of(mod)
    assert report.unscheduled == ["softmax"]
    assert report.rule_failures == {"softmax": [{"rule": "_Raises", "error": "RuntimeError: boom"}]}


def test_the_pass_keeps_no_report_of_its_own():
    """Two runs of one pass object each get their own report (with the module), none on the pass."""
    apply = ApplyCPUSchedules(target=host_target())
    first = ScheduleReport.of(apply(_module(softmax=_softmax((6, 40)))))
    second = ScheduleReport.of(apply(_module(other=_softmax((3, 8)))))
    assert first.scheduled == {"softmax": "Reduction"} and second.scheduled == {"other": "Reduction"}
    assert not hasattr(apply, "report")


def test_through_tvm_lut_compile_a_raising_rule_leaves_the_build_standing_and_is_named():
    import torch

    import tvm_lut
    from tvm_lut.frontend import from_torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Softmax(-1)).eval()
    x = torch.randn(4, 8)
    with pytest.warns(RuleFailureWarning, match="_Raises raised"):
        executable = tvm_lut.compile(from_torch(model, (x,)), rules=[_Raises(RuntimeError("bug")), *default_rules()])
    report = executable.lut_report
    assert report.unscheduled == [] and report.scheduled and set(report.rule_failures) == set(report.scheduled)
    assert all(failures == [{"rule": "_Raises", "error": "RuntimeError: bug"}]
               for failures in report.rule_failures.values())
    assert "rule failures on" in str(report) and "_Raises raised RuntimeError: bug" in str(report)
    out = tvm.runtime.tensor(x.numpy())
    out = tvm.relax.VirtualMachine(executable, tvm.cpu())["main"](out).numpy()
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_says_why_a_function_stays_unscheduled():
    """A full reduction (no rows), a hand-written scan (loops outside blocks): each named with its reason, in the
    report and the warning."""
    x = te.placeholder((4, 16), name="x")
    scan = te.create_prim_func([x, topi.cumsum(x, axis=1)])
    apply = ApplyCPUSchedules(target=host_target())
    with pytest.warns(UnscheduledWarning, match=r"full_sum \(a reduction to a single value"):
        mod = apply(_module(full_sum=_full_sum(), scan=scan))
    report = ScheduleReport.of(mod)
    assert sorted(report.unscheduled) == ["full_sum", "scan"]
    assert report.why_unscheduled["full_sum"].startswith("a reduction to a single value")
    assert report.why_unscheduled["scan"].startswith("loops outside blocks")
    data = np.random.default_rng(3).standard_normal((4, 16), dtype="float32")
    np.testing.assert_allclose(run(mod["scan"], data), np.cumsum(data, axis=1), rtol=1e-5, atol=1e-5)
