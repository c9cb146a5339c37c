import numpy as np
import pytest

from schedules import layer_norm_func
from schedules.kernels.reference import layer_norm_reference
from tests.schedules.kernel_harness import EDGE_VALUES, RECIPROCAL, RSQRT, assert_matches, run_kernel

RNG = np.random.default_rng(0)


def _check(x, axes, eps=1e-5, gamma=True, beta=True):
    norm_shape = [x.shape[a] for a in sorted(a % x.ndim for a in axes)]
    g = RNG.uniform(0.5, 1.5, norm_shape).astype(np.float32) if gamma else None
    b = RNG.standard_normal(norm_shape).astype(np.float32) if beta else None
    func = layer_norm_func(RSQRT, x.shape, axes, eps, has_gamma=gamma, has_beta=beta)
    got = run_kernel(func, x, *[p for p in (g, b) if p is not None])
    assert_matches(got, layer_norm_reference(RSQRT, x, axes, eps, g, b))
    return got


@pytest.mark.parametrize("shape, axes", [
    ((4, 16, 384), [-1]),   # BERT rows, vectorized
    ((3, 7, 5), [1, 2]),    # two axes, odd sizes
    ((5, 6, 3), [1]),       # a non-last axis
    ((0, 8), [-1]), ((4, 0), [-1]),
])
def test_random_inputs_match_reference(shape, axes):
    _check((RNG.standard_normal(shape) * 3 + 1).astype(np.float32), axes)


@pytest.mark.parametrize("gamma, beta", [(False, False), (True, False), (False, True)])
def test_without_affine_parameters(gamma, beta):
    got = _check(RNG.standard_normal((8, 64)).astype(np.float32), [-1], gamma=gamma, beta=beta)
    if not gamma and not beta:
        np.testing.assert_allclose(got.mean(axis=-1), 0, atol=1e-5)
        np.testing.assert_allclose(got.std(axis=-1), 1, rtol=5e-3)  # the stand-in rsqrt table is 3.5e-3 off


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])  # affine: the hand-scheduled rows
def test_special_rows(affine):
    x = (RNG.standard_normal((5, 37)) * 2).astype(np.float32)  # 37: two vectors and a tail
    x[0] = 7.0          # constant row: variance 0, rsqrt(eps)
    x[1, 3] = np.nan    # NaN spreads over its row through the mean
    x[2, 4] = np.inf    # so does inf (inf - inf)
    x[3] *= 1e18        # huge values: the variance overflows to inf, rsqrt(inf) = 0
    x[4] *= 1e-20       # tiny values: the variance is subnormal or zero
    got = _check(x, [-1], eps=0.0, gamma=affine, beta=affine)
    assert np.all(np.isnan(got[1])) and np.all(np.isnan(got[2]))


@pytest.mark.parametrize("spec, axes, eps, match", [
    (RECIPROCAL, [-1], 1e-5, "scaling 'pow4'"),
    (RSQRT, [2], 1e-5, "axes"),
    (RSQRT, [1, 1], 1e-5, "axes"),
    (RSQRT, [], 1e-5, "axes"),
    (RSQRT, [-1], -1.0, "eps"),
    (RSQRT, [-1], float("nan"), "eps"),
    (RSQRT, [-1], "1e-5", "eps"),
])
def test_misuse_is_rejected(spec, axes, eps, match):
    with pytest.raises(ValueError, match=match):
        layer_norm_func(spec, (4, 8), axes, eps)


def test_numpy_scalars_are_accepted():
    func = layer_norm_func(RSQRT, (2, 8), np.array([1]), np.float32(1e-5))
    assert func.attrs["tvm_lut.kernel"] == "layer_norm"


@pytest.mark.parametrize("shape", [(1, 64, 384), (5, 37), (3, 1), (0, 8)])
def test_residual_add_is_the_layer_norm_of_the_sum_bit_for_bit(shape):
    """The fused residual: the same float32 sum the separate add stores, so the same output bit for bit; edge values
    (NaN, inf, huge, tiny) go through the add as they would."""
    x = (RNG.standard_normal(shape) * 2).astype(np.float32)
    residual = RNG.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    edges = np.resize(EDGE_VALUES, flat.shape[1])
    if flat.shape[0] > 1:
        flat[0] = edges
    g = RNG.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    b = RNG.standard_normal(shape[-1]).astype(np.float32)
    fused = run_kernel(layer_norm_func(RSQRT, shape, [-1], 1e-5, residual=True), x, residual, g, b)
    plain = run_kernel(layer_norm_func(RSQRT, shape, [-1], 1e-5), x + residual, g, b)
    np.testing.assert_array_equal(fused, plain)
    assert_matches(fused, layer_norm_reference(RSQRT, x + residual, [-1], 1e-5, g, b))


@pytest.mark.parametrize("shape, axes, affine", [((4, 8), [0], True), ((4, 8), [-1], False), ((4, 0), [-1], True)])
def test_residual_needs_the_row_kernel(shape, axes, affine):
    with pytest.raises(ValueError, match="residual"):
        layer_norm_func(RSQRT, shape, axes, has_gamma=affine, has_beta=affine, residual=True)
