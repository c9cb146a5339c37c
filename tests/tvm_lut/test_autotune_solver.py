"""The plan solver on synthetic latency / drop tables: within the budget, exact kept where PQ is slower, and
optimal (checked by brute force over every plan of small cases)."""

import itertools
import random

import pytest

from tvm_lut.autotuning.solver import Option, solve


def _brute_force(options, budget):
    plans = itertools.product(*[range(len(layer)) for layer in options])
    return min(sum(o[i].latency for o, i in zip(options, plan)) for plan in plans
               if sum(o[i].drop for o, i in zip(options, plan)) <= budget + 1e-12)


def _totals(options, chosen):
    return (sum(layer[i].latency for layer, i in zip(options, chosen)),
            sum(layer[i].drop for layer, i in zip(options, chosen)))


def _random_case(rng, step):
    """Layers with an exact option (drop 0) and PQ options whose drops are multiples of `step`."""
    return [[Option(rng.uniform(5, 10), 0.0)]
            + [Option(rng.uniform(0, 10), step * rng.randint(0, 8)) for _ in range(rng.randint(0, 4))]
            for _ in range(rng.randint(1, 5))]


@pytest.mark.parametrize("seed", range(60))
def test_optimal_against_brute_force_when_drops_lie_on_the_grid(seed):
    rng = random.Random(seed)
    step = 0.25
    options, budget = _random_case(rng, step), step * rng.randint(0, 12)
    chosen = solve(options, budget, resolution=max(1, round(budget / step)))
    latency, drop = _totals(options, chosen)
    assert drop <= budget + 1e-12
    assert latency == pytest.approx(_brute_force(options, budget))


@pytest.mark.parametrize("seed", range(30))
def test_any_drops_stay_within_budget_and_near_the_optimum(seed):
    """Off-grid drops are rounded up: never over budget, and no slower than the optimum at a budget smaller by
    one step per layer."""
    rng = random.Random(100 + seed)
    options = [[Option(rng.uniform(5, 10), 0.0)] + [Option(rng.uniform(0, 10), rng.uniform(0, 2)) for _ in range(3)]
               for _ in range(rng.randint(1, 5))]
    budget, resolution = rng.uniform(0.1, 4), 50
    latency, drop = _totals(options, solve(options, budget, resolution))
    assert drop <= budget
    assert latency <= _brute_force(options, budget - len(options) * budget / resolution) + 1e-9


def test_exact_is_kept_where_pq_is_slower_even_with_budget_to_spare():
    options = [[Option(30.0, 0.0), Option(44.0, 0.1)],  # PQ slower (the CNN's conv2): exact
               [Option(13.0, 0.0), Option(10.0, 0.2)]]  # PQ faster and affordable
    assert solve(options, budget=100.0) == [0, 1]


def test_the_budget_decides_between_layers():
    options = [[Option(10.0, 0.0), Option(2.0, 0.6)], [Option(10.0, 0.0), Option(5.0, 0.5)]]
    assert solve(options, budget=0.6, resolution=60) == [1, 0]  # 8 us saved beats 5 us
    assert solve(options, budget=1.1, resolution=110) == [1, 1]
    assert solve(options, budget=0.0) == [0, 0]


def test_no_fitting_plan_and_bad_input_fail_clearly():
    with pytest.raises(ValueError, match="no plan fits the budget"):
        solve([[Option(1.0, 2.0)]], budget=1.0)
    with pytest.raises(ValueError, match="at least one option"):
        solve([[]], budget=1.0)
    with pytest.raises(ValueError, match="budget must be finite"):
        solve([[Option(1.0, 0.0)]], budget=-1.0)
    with pytest.raises(ValueError, match="finite drop >= 0"):
        Option(1.0, -0.5)
