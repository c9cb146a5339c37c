import numpy as np
import pytest
from tvm import te, topi

from schedules.rules import Padding, default_rules
from tests.schedules.rule_harness import TARGET, run, scheduled

RNG = np.random.default_rng(17)


@pytest.mark.parametrize("shape, before, after", [
    ((1, 144, 56, 56), (0, 0, 0, 0), (0, 0, 1, 1)),  # TF "same" before a stride-2 conv: bottom and right only
    ((2, 3, 7, 9), (0, 0, 2, 1), (0, 0, 3, 0)),  # odd, asymmetric, batches
    ((5, 6), (1, 2), (2, 1)),  # 2-D
    ((1, 4, 1, 1), (0, 0, 1, 1), (0, 0, 1, 1)),  # a 1x1 map
])
def test_padding_matches_numpy(shape, before, after):
    x = te.placeholder(shape, name="x")
    func = scheduled(Padding(), te.create_prim_func([x, topi.nn.pad(x, before, after)]))
    data = RNG.standard_normal(shape, dtype="float32")
    data.flat[0], data.flat[-1] = np.nan, np.inf
    np.testing.assert_array_equal(run(func, data), np.pad(data, list(zip(before, after))))


def test_padding_after_an_activation_fuses_it():
    x = te.placeholder((1, 8, 5, 5), name="x")
    func = scheduled(Padding(), te.create_prim_func([x, topi.nn.pad(topi.clip(x, 0.0, 6.0), (0, 0, 1, 1),
                                                                      (0, 0, 1, 1))]))
    data = RNG.standard_normal((1, 8, 5, 5), dtype="float32") * 10
    np.testing.assert_array_equal(run(func, data), np.pad(np.clip(data, 0, 6), ((0, 0), (0, 0), (1, 1), (1, 1))))


def test_default_rules_take_padding_before_elementwise():
    x = te.placeholder((1, 8, 9, 9), name="x")
    func = te.create_prim_func([x, topi.nn.pad(x, (0, 0, 0, 0), (0, 0, 1, 1))])
    assert next(type(r).__name__ for r in default_rules() if r.apply(func, TARGET, False)) == "Padding"


def test_declines_what_is_not_a_padding():
    x, y = te.placeholder((4, 8), name="x"), te.placeholder((8,), name="y")
    add = te.create_prim_func([x, y, topi.add(x, y)])
    row_sum = te.create_prim_func([x, topi.sum(x, axis=1)])
    vector = te.create_prim_func([y, topi.nn.pad(y, (1,), (1,))])  # rank 1: nothing to partition in two
    for func in (add, row_sum, vector):
        assert Padding().apply(func, TARGET, False) is None
