import numpy as np
import pytest
import tvm
from tvm import te, topi

from schedules import ApplyCPUSchedules, UnscheduledWarning, host_target
from schedules.rules import Elementwise, default_rules
from tests.schedules.rule_harness import TARGET, run


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
    assert apply.report.scheduled == {"softmax": "Reduction", "tiny_softmax": "Elementwise"}
    assert apply.report.unscheduled == []
    assert all(mod[name].attrs["tirx.is_scheduled"] for name in ("softmax", "tiny_softmax"))
    data = np.random.default_rng(0).standard_normal((6, 40), dtype="float32")
    expected = np.exp(data) / np.exp(data).sum(-1, keepdims=True)
    np.testing.assert_allclose(run(mod["softmax"], data), expected, rtol=1e-5)


def test_names_what_it_leaves_unscheduled():
    apply = ApplyCPUSchedules(rules=[Elementwise()], target=host_target())
    with pytest.warns(UnscheduledWarning, match="left naive: full_sum"):
        mod = apply(_module(full_sum=_full_sum()))
    assert apply.report.unscheduled == ["full_sum"]
    assert "tirx.is_scheduled" not in (mod["full_sum"].attrs or {})


def test_keeps_functions_already_scheduled():
    func = _full_sum().with_attr("tirx.is_scheduled", True)
    apply = ApplyCPUSchedules(target=host_target())
    mod = apply(_module(done=func))
    assert apply.report.already_scheduled == ["done"]
    tvm.ir.assert_structural_equal(mod["done"], func.with_attr("global_symbol", "done"))


def test_already_scheduled_functions_get_vector_exp():
    # A tuning record replays on the legalized function: its exp is still a libm call per lane.
    func = _softmax((3, 5)).with_attr("tirx.is_scheduled", True)
    apply = ApplyCPUSchedules(target=host_target())
    mod = apply(_module(tuned=func))
    assert apply.report.already_scheduled == ["tuned"]
    assert "T.exp(" in func.script() and "T.exp(" not in mod["tuned"].script()
    data = np.random.default_rng(1).standard_normal((3, 5), dtype="float32")
    expected = np.exp(data) / np.exp(data).sum(-1, keepdims=True)
    np.testing.assert_allclose(run(mod["tuned"], data), expected, rtol=1e-5)


def test_uses_the_target_in_scope():
    apply = ApplyCPUSchedules()
    with host_target():
        apply(_module(softmax=_softmax((6, 40))))
    assert apply.report.scheduled == {"softmax": "Reduction"}


def test_without_a_target_says_so():
    with pytest.raises(ValueError, match="target"):
        ApplyCPUSchedules()(_module(softmax=_softmax((6, 40))))


def test_a_single_row_softmax_is_scheduled_and_still_correct():
    apply = ApplyCPUSchedules(target=host_target())
    mod = apply(_module(single_row=_softmax((1, 3))))
    assert apply.report.scheduled == {"single_row": "Reduction"} and apply.report.unscheduled == []
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
