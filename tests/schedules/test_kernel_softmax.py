import numpy as np
import pytest

from schedules import softmax_func
from schedules.kernels.reference import softmax_reference
from tests.schedules.kernel_harness import EXP, GELU, RECIPROCAL, RSQRT, assert_matches, run_kernel

RNG = np.random.default_rng(0)


def _check(x, axis):
    assert_matches(run_kernel(softmax_func(EXP, RECIPROCAL, x.shape, axis), x),
                   softmax_reference(EXP, RECIPROCAL, x, axis))


@pytest.mark.parametrize("shape, axis", [
    ((2, 3, 16, 64), -1),  # attention scores: rows of 64, vectorized
    ((2, 5, 7), 1),        # a non-last axis, odd sizes
    ((3, 1, 9), -1),       # odd row length: scalar
    ((0, 4), -1), ((4, 0), -1), ((4, 0), 0),  # empty
])
def test_random_inputs_match_reference(shape, axis):
    _check((RNG.standard_normal(shape) * 4).astype(np.float32), axis)


def test_rows_stay_distributions_and_special_rows_follow_the_arithmetic():
    x = (RNG.standard_normal((6, 32)) * 4).astype(np.float32)
    x[1, ::2] = -np.inf             # a masked row: masked entries get 0
    x[2, :] = -np.inf               # a fully masked row: -inf - -inf = NaN, as the exact op
    x[3, 5] = np.nan                # NaN propagates through its row
    x[4, :] = 3e38                  # huge but equal scores: uniform
    x[5, 7] = np.inf                # +inf - inf = NaN
    got = run_kernel(softmax_func(EXP, RECIPROCAL, x.shape, -1), x)
    assert_matches(got, softmax_reference(EXP, RECIPROCAL, x, -1))
    np.testing.assert_allclose(got[[0, 1, 4]].sum(axis=-1), 1.0, atol=0.02)  # the tables' error, not more
    assert np.all(got[1, ::2] == 0)
    assert np.all(np.isnan(got[[2, 3, 5]]))
    np.testing.assert_allclose(got[4], got[4, 0])


@pytest.mark.parametrize("exp_spec, recip_spec, axis, match", [
    (GELU, RSQRT, -1, "scaling 'none'.*'pow2'"),
    (EXP, RECIPROCAL, 2, "softmax axis"),
    (object(), RECIPROCAL, -1, "exp_spec.*not a PWLSpec"),
])
def test_misuse_is_rejected(exp_spec, recip_spec, axis, match):
    with pytest.raises((TypeError, ValueError), match=match):
        softmax_func(exp_spec, recip_spec, (4, 8), axis)
