import re

import numpy as np
import pytest
from tvm import te, topi

from schedules.rules import Reduction
from schedules.target import override_params, vector_lanes
from tests.schedules.rule_harness import TARGET, loop_kinds, run, scheduled

RNG = np.random.default_rng(1)


def _softmax_ref(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("shape", [(8, 12, 64, 64), (3, 5), (2, 3, 17), (7, 3)])
def test_softmax_matches_numpy(shape):
    x = te.placeholder(shape, name="x")
    func = te.create_prim_func([x, topi.nn.softmax(x, axis=-1)])
    data = RNG.standard_normal(shape, dtype="float32") * 10
    np.testing.assert_allclose(run(scheduled(Reduction(), func), data), _softmax_ref(data), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(1, 64), (64,), (1, 1, 40), (1, 37)])
def test_single_row_softmax_is_scheduled_and_matches_numpy(shape):
    x = te.placeholder(shape, name="x")
    func = scheduled(Reduction(), te.create_prim_func([x, topi.nn.softmax(x, axis=-1)]))
    data = RNG.standard_normal(shape, dtype="float32") * 10
    data.flat[0] = np.inf
    with np.errstate(invalid="ignore"):
        expected = _softmax_ref(data)
    np.testing.assert_allclose(run(func, data), expected, rtol=1e-5, atol=1e-7)
    assert shape[-1] % 2 or "vectorized" in loop_kinds(func)


def test_softmax_propagates_nan_and_inf_like_numpy():
    x = te.placeholder((2, 32), name="x")
    func = te.create_prim_func([x, topi.nn.softmax(x, axis=-1)])
    data = RNG.standard_normal((2, 32), dtype="float32")
    data[0, 3], data[1, 5] = np.nan, np.inf
    with np.errstate(all="ignore"):
        expected = _softmax_ref(data)
    np.testing.assert_allclose(run(scheduled(Reduction(), func), data), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(8, 64, 384), (3, 7), (5, 33)])
def test_layer_norm_matches_numpy(shape):
    x = te.placeholder(shape, name="x")
    gamma = te.placeholder(shape[-1:], name="gamma")
    beta = te.placeholder(shape[-1:], name="beta")
    func = te.create_prim_func([x, gamma, beta, topi.nn.layer_norm(x, gamma, beta, axis=[-1], epsilon=1e-12)])
    data = RNG.standard_normal(shape, dtype="float32") * 3 + 1
    g, b = RNG.standard_normal(shape[-1:], dtype="float32"), RNG.standard_normal(shape[-1:], dtype="float32")
    mean, var = data.mean(-1, keepdims=True), data.var(-1, keepdims=True)
    expected = (data - mean) / np.sqrt(var + 1e-12) * g + b
    np.testing.assert_allclose(run(scheduled(Reduction(), func), data, g, b), expected, rtol=1e-4, atol=1e-4)


def test_rows_parallel_and_reduction_vectorized():
    x = te.placeholder((512, 384), name="x")
    kinds = loop_kinds(scheduled(Reduction(), te.create_prim_func([x, topi.sum(x, axis=1)])))
    assert {"parallel", "vectorized"} <= kinds


@pytest.mark.parametrize("axis", [0, 1, (0, 2)])
def test_sum_over_any_axis_matches_numpy(axis):
    x = te.placeholder((4, 9, 6), name="x")
    func = te.create_prim_func([x, topi.sum(x, axis=axis)])
    data = RNG.standard_normal((4, 9, 6), dtype="float32")
    sch = Reduction().apply(func, TARGET, False)
    out = run(func if sch is None else sch.mod["main"], data)
    np.testing.assert_allclose(out, data.sum(axis=axis), rtol=1e-5, atol=1e-5)


def test_declines_a_full_reduction_to_a_scalar():
    x = te.placeholder((4, 16), name="x")
    assert Reduction().apply(te.create_prim_func([x, topi.sum(x)]), TARGET, False) is None


def test_conv2d_rows_parallel_matches_numpy():
    x, w = te.placeholder((2, 3, 9, 7), name="x"), te.placeholder((4, 3, 3, 3), name="w")
    func = te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, stride=1, padding=1, dilation=1)])
    data, weight = RNG.standard_normal((2, 3, 9, 7), dtype="float32"), RNG.standard_normal((4, 3, 3, 3), dtype="float32")
    padded = np.pad(data, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # n c h w kh kw
    expected = np.einsum("nchwij,ocij->nohw", windows, weight)
    with override_params(min_parallel_work=4096):  # 13.6k multiply-adds: below the default threshold
        func = scheduled(Reduction(), func)
    assert "parallel" in loop_kinds(func)
    np.testing.assert_allclose(run(func, data, weight), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape, kernel, stride, padding", [((1, 32, 28, 28), 2, 2, 0), ((2, 3, 9, 7), 3, 1, 1),
                                                             ((1, 5, 7, 7), 2, 2, 0), ((1, 2, 5, 40), 3, 1, 1),
                                                             ((1, 2, 4, 70), 2, 2, 0), ((1, 1, 4, 134), 2, 2, 0),
                                                             ((1, 4, 8, 8), 2, 2, 1), ((2, 3, 9, 9), 3, 2, 1)])
def test_pooling_updates_a_vector_of_outputs_and_matches_numpy(kind, shape, kernel, stride, padding):
    """Max pooling: the window loops run outside the output's last axis, one vector up to two registers long,
    else split in power-of-two vectors; a window strided along the row reads it through a contiguous copy."""
    x = te.placeholder(shape, name="x")
    pool = topi.nn.pool2d(x, (kernel, kernel), (stride, stride), (1, 1), (padding,) * 4, kind, layout="NCHW",
                          count_include_pad=True)
    func = scheduled(Reduction(), te.create_prim_func([x, pool]))
    data = RNG.standard_normal(shape, dtype="float32")
    padded = np.pad(data, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                    constant_values=-np.inf if kind == "max" else 0.0)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    expected = windows.max((-2, -1)) if kind == "max" else windows.mean((-2, -1))
    np.testing.assert_allclose(run(func, data), expected, rtol=1e-5, atol=1e-6)
    if kind == "max":  # average pooling's division is a stage of its own: rows in parallel only, for now
        width, lanes = expected.shape[-1], vector_lanes(TARGET, "float32")
        assert ("vectorized" in loop_kinds(func)) == (width <= 2 * lanes or width % 2 == 0)
        assert ('scope="local"' in func.script()) == (stride > 1 and width <= 2 * lanes)


def test_strided_reduction_is_not_rfactored_into_gathers():
    x = te.placeholder((512, 384), name="x")
    func = scheduled(Reduction(), te.create_prim_func([x, topi.sum(x, axis=0)]))
    assert "_rf" not in func.script() and "parallel" in loop_kinds(func)
    data = RNG.standard_normal((512, 384), dtype="float32")
    np.testing.assert_allclose(run(func, data), data.sum(0), rtol=1e-4, atol=1e-3)


def _layer_norm(shape):
    x, gamma, beta = (te.placeholder(s, name=n) for s, n in ((shape, "x"), (shape[-1:], "gamma"), (shape[-1:], "beta")))
    return te.create_prim_func([x, gamma, beta, topi.nn.layer_norm(x, gamma, beta, axis=[-1], epsilon=1e-5)])


def test_every_row_reduction_accumulates_one_full_vector_per_step():
    """Both LayerNorm reductions are rfactored (the variance also reads the row's mean, a loop-invariant input);
    each lane partial starts at zero before its loop and is updated a whole SIMD vector per step."""
    text = scheduled(Reduction(), _layer_norm((64, 384))).script()
    lanes = vector_lanes(TARGET, "float32")
    for reduction in ("x_sum", "x_var_sum"):
        assert f'T.sblock("{reduction}_rf_init")' in text
        assert re.search(rf'T\.vectorized\({lanes}\):\s*\n\s*with T\.sblock\("{reduction}_rf_update"\)', text)


def test_a_per_row_value_is_computed_for_a_vector_of_rows():
    """The row mean (a per-row stage) runs once per tile of `lanes` rows, as one vector, not once per row."""
    lanes = vector_lanes(TARGET, "float32")
    text = scheduled(Reduction(), _layer_norm((64, 384))).script()
    assert re.search(rf'T\.vectorized\({lanes}\):\s*\n\s*with T\.sblock\("x_mean"\)', text)


def _softmax_with_row_reciprocal(shape):
    """Softmax as the LUT kernel computes it: a per-row reciprocal stage, then one multiply per element."""
    x = te.placeholder(shape, name="x")
    k_max, k_sum = te.reduce_axis((0, shape[-1]), "k_max"), te.reduce_axis((0, shape[-1]), "k_sum")
    row_max = te.compute(shape[:-1], lambda *r: te.max(x[r + (k_max,)], axis=k_max), name="row_max")
    e = te.compute(shape, lambda *i: te.exp(x[i] - row_max[i[:-1]]), name="e")
    row_sum = te.compute(shape[:-1], lambda *r: te.sum(e[r + (k_sum,)], axis=k_sum), name="row_sum")
    recip = te.compute(shape[:-1], lambda *r: 1.0 / row_sum[r], name="recip")
    return te.create_prim_func([x, te.compute(shape, lambda *i: e[i] * recip[i[:-1]], name="out")])


def test_rows_over_several_axes_with_a_reduction_go_in_tiles():
    """A per-row stage after rfactored reductions, rows over three axes: the reciprocal runs once per tile of
    `lanes` rows, as one vector (the tile splits the last row axis; fused first, rfactor's lanes would not
    vectorize), and the result is NumPy's."""
    lanes = vector_lanes(TARGET, "float32")
    shape = (2, 3, 2 * lanes, 48)
    func = scheduled(Reduction(), _softmax_with_row_reciprocal(shape))
    assert re.search(rf'T\.vectorized\({lanes}\):\s*\n\s*with T\.sblock\("recip"\)', func.script())
    data = RNG.standard_normal(shape, dtype="float32") * 5
    np.testing.assert_allclose(run(func, data), _softmax_ref(data), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(48, 96), (5, 33), (1, 1, 7)])
def test_tiled_and_untiled_rows_match_numpy(shape):
    """Row counts that a vector divides go in tiles, the others one by one; both compute the same LayerNorm."""
    data = RNG.standard_normal(shape, dtype="float32") * 3 + 1
    g, b = RNG.standard_normal(shape[-1:], dtype="float32"), RNG.standard_normal(shape[-1:], dtype="float32")
    sch = Reduction().apply(_layer_norm(shape), TARGET, False)
    func = _layer_norm(shape) if sch is None else sch.mod["main"]
    mean, var = data.mean(-1, keepdims=True), data.var(-1, keepdims=True)
    expected = (data - mean) / np.sqrt(var + 1e-5) * g + b
    np.testing.assert_allclose(run(func, data, g, b), expected, rtol=1e-4, atol=1e-4)


def _gate(shape):
    """A squeeze-and-excitation gate: per (n, c), sigmoid of the channel mean, multiplied into the features."""
    x = te.placeholder(shape, name="x")
    mean = topi.sum(x, axis=(2, 3), keepdims=True)
    gate = te.compute(mean.shape, lambda *i: te.sigmoid(mean(*i) / (shape[2] * shape[3])), name="gate")
    out = te.compute(shape, lambda n, c, h, w: x[n, c, h, w] * gate[n, c, 0, 0], name="out")
    return te.create_prim_func([x, out])


@pytest.mark.parametrize("shape", [(2, 16, 12, 12), (1, 3, 7, 5), (3, 5, 1, 2)])
def test_a_broadcast_gate_is_computed_once_per_row_and_matches_numpy(shape):
    func = scheduled(Reduction(), _gate(shape))
    data = RNG.standard_normal(shape, dtype="float32")
    expected = data / (1 + np.exp(-data.mean((2, 3), keepdims=True)))
    np.testing.assert_allclose(run(func, data), expected, rtol=1e-5, atol=1e-6)
    # the gate stays a stage of its own: one sigmoid per (n, c), not one per element
    assert len(re.findall(r"T\.sigmoid\(", func.script())) == 1 and "gate = " in func.script().replace("gate_1", "")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, axis", [((3, 4, 5), 0), ((7, 33), 0), ((2, 3, 4, 16), 1), ((3, 4, 5), 1),
                                         ((5, 1, 9), 0), ((2, 6, 3, 3), 2)])
def test_softmax_over_a_leading_axis_matches_numpy(op, shape, axis):
    """ONNX's Softmax / LogSoftmax with axis != -1: the reductions run over strided rows, apart from the stages."""
    x = te.placeholder(shape, name="x")
    func = scheduled(Reduction(), te.create_prim_func([x, getattr(topi.nn, op)(x, axis=axis)]))
    data = RNG.standard_normal(shape, dtype="float32") * 10
    data.flat[1] = np.inf
    data.flat[2] = np.nan
    shifted = data - data.max(axis, keepdims=True)
    with np.errstate(invalid="ignore"):
        expected = np.exp(shifted) / np.exp(shifted).sum(axis, keepdims=True)
        expected = np.log(expected) if op == "log_softmax" else expected
        np.testing.assert_allclose(run(func, data), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, axes", [((4, 6, 5), [0, 1, 2]), ((3, 8, 5), [1, 2]), ((2, 3, 4, 4), [2, 3]),
                                         ((6, 10), [0, 1])])
def test_layer_norm_over_other_axes_matches_numpy(shape, axes):
    x = te.placeholder(shape, name="x")
    normalized = tuple(shape[a] for a in axes)
    gamma, beta = te.placeholder(normalized, name="gamma"), te.placeholder(normalized, name="beta")
    func = te.create_prim_func([x, gamma, beta, topi.nn.layer_norm(x, gamma, beta, axis=axes, epsilon=1e-5)])
    data = RNG.standard_normal(shape, dtype="float32") * 3 + 1
    g, b = RNG.standard_normal(normalized, dtype="float32"), RNG.standard_normal(normalized, dtype="float32")
    mean, var = data.mean(tuple(axes), keepdims=True), data.var(tuple(axes), keepdims=True)
    expected = (data - mean) / np.sqrt(var + 1e-5) * g + b
    sch = Reduction().apply(func, TARGET, False)
    if sch is None:  # declined: a reduction over every axis has no rows (ApplyCPUSchedules reports why)
        assert len(axes) == len(shape)
        return
    np.testing.assert_allclose(run(sch.mod["main"], data, g, b), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 16, 56, 56), (2, 6, 7, 7), (1, 5, 14, 14), (1, 3, 17, 19)])
def test_a_global_mean_over_whole_planes_is_one_vector_reduction(shape):
    """(h, w) is one contiguous run: rfactored into vector partials (lanes, or 7 for 7x7 and 14x14 maps); a plane
    of 17x19 (no divisor from 2 to 16) stays scalar; all match NumPy."""
    x = te.placeholder(shape, name="x")
    func = scheduled(Reduction(), te.create_prim_func([x, topi.sum(x, axis=(2, 3), keepdims=True)]))
    data = RNG.standard_normal(shape, dtype="float32")
    data[0, 0, 0, 0] = np.inf
    np.testing.assert_allclose(run(func, data), data.sum((2, 3), keepdims=True), rtol=1e-5, atol=1e-4)
    assert ("_rf" in func.script()) == (shape[2] != 17)


def test_a_mean_over_transposed_planes_is_not_fused():
    """x[n, c, w, h] summed over (h, w): the two axes do not walk memory in order, so no plane-long vectors."""
    x = te.placeholder((2, 4, 8, 16), name="x")
    h, w = te.reduce_axis((0, 16), "h"), te.reduce_axis((0, 8), "w")
    out = te.compute((2, 4), lambda n, c: te.sum(x[n, c, w, h], axis=[h, w]), name="out")
    func = scheduled(Reduction(), te.create_prim_func([x, out]))
    assert "_rf" not in func.script()
    data = RNG.standard_normal((2, 4, 8, 16), dtype="float32")
    np.testing.assert_allclose(run(func, data), data.sum((2, 3)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channels, squeeze", [(576, 144), (96, 24), (17, 5)])
def test_a_1x1_conv_on_a_1x1_map_reduces_in_vectors(channels, squeeze):
    """A squeeze-and-excitation gate's 1x1 conv reads x[0, c, 0, 0] and w[o, c, 0, 0]: contiguous along c despite
    the unit trailing dimensions, so it is rfactored (17 channels, a prime above the lanes, in whole vectors and a
    bound-checked tail) and matches NumPy."""
    x = te.placeholder((1, channels, 1, 1), name="x")
    w = te.placeholder((squeeze, channels, 1, 1), name="w")
    func = scheduled(Reduction(), te.create_prim_func([x, w, topi.nn.relu(topi.nn.conv2d_nchw(x, w, 1, 0, 1))]))
    assert "_rf" in func.script()
    data = RNG.standard_normal((1, channels, 1, 1), dtype="float32")
    weight = RNG.standard_normal((squeeze, channels, 1, 1), dtype="float32")
    expected = np.maximum(weight[:, :, 0, 0] @ data[0, :, 0, 0], 0).reshape(1, squeeze, 1, 1)
    np.testing.assert_allclose(run(func, data, weight), expected, rtol=1e-4, atol=1e-4)


def _prime_above(n: int) -> int:
    return next(p for p in range(n + 1, 4 * n) if all(p % d for d in range(2, p)))


@pytest.mark.parametrize("rows", [(3,), (2, 5)])
def test_ragged_rows_reduce_in_whole_vectors_with_a_tail_and_match_numpy(rows):
    """Rows of a prime length above a vector (ViT's 197 tokens; 17 on AVX2, 19 on AVX-512): both softmax reductions
    go in partial vectors of the full width, with a bound check for the last one, and keep NaN and inf as NumPy."""
    lanes = vector_lanes(TARGET, "float32")
    shape = (*rows, _prime_above(lanes))
    x = te.placeholder(shape, name="x")
    func = scheduled(Reduction(), te.create_prim_func([x, topi.nn.softmax(x, axis=-1)]))
    text = func.script()
    for reduction in ("T_softmax_maxelem", "T_softmax_expsum"):
        assert re.search(rf'T\.vectorized\({lanes}\):\s*\n\s*with T\.sblock\("{reduction}_rf"\)', text)
    assert "T.where" in text
    data = RNG.standard_normal(shape, dtype="float32") * 10
    data.flat[4], data.flat[-1] = np.nan, np.inf
    with np.errstate(all="ignore"):
        expected = _softmax_ref(data)
    np.testing.assert_allclose(run(func, data), expected, rtol=1e-5, atol=1e-7)


def test_a_ragged_row_of_one_vector_and_a_divisible_one_keep_the_fused_form():
    """A row no longer than a vector, or one a vector width divides (Swin's 49 = 7 x 7), stays in `_place`'s form:
    every stage at the row loop, no bound-checked partial vectors."""
    lanes = vector_lanes(TARGET, "float32")
    for length in (lanes - 1, 49):
        x = te.placeholder((6, length), name="x")
        text = scheduled(Reduction(), te.create_prim_func([x, topi.nn.softmax(x, axis=-1)])).script()
        assert "T.where" not in text


@pytest.mark.parametrize("op", ["sum", "max", "min"])
def test_ragged_row_reductions_start_from_their_identity(op):
    """The lanes past the row's end keep the reduction's initial value: all-negative rows for max, positive for min."""
    shape = (4, _prime_above(vector_lanes(TARGET, "float32")))
    x = te.placeholder(shape, name="x")
    func = te.create_prim_func([x, getattr(topi, op)(x, axis=1)])
    data = RNG.random(shape, dtype="float32") + 1
    data = -data if op == "max" else data
    np.testing.assert_allclose(run(scheduled(Reduction(), func), data), getattr(np, op)(data, axis=1), rtol=1e-5)
