import numpy as np
import pytest

from schedules import softmax_func
from schedules.kernels.reference import softmax_reference
from tests.schedules.kernel_harness import EDGE_VALUES, EXP, GELU, RECIPROCAL, RSQRT, assert_matches, run_kernel

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


def _scaled(x, scale):
    if scale is None:
        return x
    return x / np.float32(scale[1]) if scale[0] == "divide" else x * np.float32(scale[1])


@pytest.mark.parametrize("shape, mask_shape, scale", [
    ((1, 12, 64, 64), (1, 1, 1, 64), ("divide", 5.656854)),  # MiniLM's attention at 1 x 64
    ((2, 3, 5, 37), (2, 1, 1, 37), ("multiply", 0.125)),      # a mask per sequence, odd row length
    ((2, 3, 5, 37), (3, 5, 37), None),                         # fewer dims, broadcast over the batch
    ((4, 7), (7,), None),
    ((0, 3, 16), (1, 16), ("divide", 4.0)),                    # zero rows
])
def test_scale_and_mask_are_the_softmax_of_the_sum_bit_for_bit(shape, mask_shape, scale):
    """The fused mask: the float32 `x / c + mask` the separate ops store, so the softmax of it bit for bit;
    edge values (NaN, inf, huge, tiny) in the scores and a -inf in the mask go through as they would."""
    x = (RNG.standard_normal(shape) * 4).astype(np.float32)
    mask = np.where(RNG.random(mask_shape) < 0.3, np.float32(-10000), np.float32(0)).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    if flat.shape[0] > 2:
        flat[0] = np.resize(EDGE_VALUES, shape[-1])
        mask.reshape(-1)[1] = -np.inf
    summed = (_scaled(x, scale) + mask).astype(np.float32)
    fused = run_kernel(softmax_func(EXP, RECIPROCAL, shape, scale=scale, mask_shape=mask_shape), x, mask)
    np.testing.assert_array_equal(fused, run_kernel(softmax_func(EXP, RECIPROCAL, shape), summed))
    assert_matches(fused, softmax_reference(EXP, RECIPROCAL, summed, -1))


@pytest.mark.parametrize("shape, axis, mask_shape, scale, match", [
    ((4, 8), -1, None, ("divide", 2.0), "without"),
    ((4, 8), 0, (8,), None, "last axis"),
    ((4, 0), -1, (0,), None, "last axis"),
    ((4, 8), -1, (4, 1), None, "broadcast"),
    ((4, 8), -1, (3, 8), None, "broadcast"),
    ((4, 8), -1, (2, 4, 8), None, "broadcast"),
    ((4, 8), -1, (8,), ("sqrt", 2.0), "scale"),
])
def test_mask_misuse_is_rejected(shape, axis, mask_shape, scale, match):
    with pytest.raises(ValueError, match=match):
        softmax_func(EXP, RECIPROCAL, shape, axis, scale=scale, mask_shape=mask_shape)
