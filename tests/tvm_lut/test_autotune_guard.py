"""The whole-model guard on a timed stub: groups of PQ layers that do not make the whole model faster by at least
`MIN_GAIN` go back to exact, one at a time, the most useless first; a plan no faster than the exact model keeps
nothing. No speed is measured: the stub's times are arithmetic."""

import pytest

from tvm_lut.autotuning.guard import EXACT, MIN_GAIN, PLAN, restore_unpaid

BASE_US = 100.0  # the exact model


def stub(gains: dict[str, float], calls: list):
    """time_models for layers whose PQ form changes the whole model by -gains[layer] us (a negative gain: slower)."""
    def time_models(variants):
        calls.append(dict(variants))
        return {label: BASE_US - sum(gains[name] for name in layers) for label, layers in variants.items()}
    return time_models


def test_restores_the_groups_that_do_not_pay():
    calls = []
    gains = {"a1": 10.0, "a2": 10.0, "b": -1.0, "c": 0.2}  # c saves 0.2 %: below MIN_GAIN, not worth keeping
    outcome = restore_unpaid({"a": ["a1", "a2"], "b": ["b"], "c": ["c"]}, stub(gains, calls))
    assert outcome.kept == ("a1", "a2")
    assert outcome.restored == ("b", "c")  # the most harmful first
    assert outcome.exact_us == BASE_US and outcome.plan_us == BASE_US - 20.0
    # every measurement times the exact model and the plan together with the variants
    assert all(EXACT in variants and PLAN in variants for variants in calls)
    assert calls[0]["b"] == frozenset({"a1", "a2", "c"})


def test_a_plan_that_pays_is_kept_whole():
    outcome = restore_unpaid({"a": ["a1"], "b": ["b"]}, stub({"a1": 5.0, "b": 3.0}, []))
    assert outcome.kept == ("a1", "b") and outcome.restored == ()


def test_one_group_is_compared_with_the_exact_model():
    calls = []
    outcome = restore_unpaid({"fc1": ["fc1"]}, stub({"fc1": 100.0 * MIN_GAIN / 2}, calls))
    assert outcome.kept == () and outcome.restored == ("fc1",)
    assert set(calls[0]) == {EXACT, PLAN}  # no third variant: without its one group the plan is the exact model


def test_groups_that_pay_alone_but_not_together_are_all_restored():
    """Each group pays against the plan without it, yet the plan is no faster than the exact model (a shared cost
    the groups only pay when some PQ layer runs): nothing is kept."""
    def time_models(variants):
        return {label: BASE_US + (6.0 if layers else 0.0) - 2.0 * len(layers) for label, layers in variants.items()}

    outcome = restore_unpaid({"a": ["a"], "b": ["b"]}, time_models)
    assert outcome.kept == ()
    assert set(outcome.restored) == {"a", "b"}


@pytest.mark.parametrize("groups", [{}, {"a": []}])
def test_nothing_to_guard(groups):
    outcome = restore_unpaid(groups, stub({}, []))
    assert outcome.kept == () and outcome.restored == ()
