import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from tvm import te, topi

from schedules.rules import DepthwiseConv2d, default_rules
from schedules.rules.depthwise_conv2d import row_vector
from tests.schedules.rule_harness import TARGET, loop_kinds, run, scheduled

RNG = np.random.default_rng(11)


def _depthwise_ref(x, w, stride, padding, dilation):
    """NCHW depthwise convolution in NumPy (weight [C, 1, kh, kw])."""
    _, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(x, (dilation * (kh - 1) + 1, dilation * (kw - 1) + 1), axis=(2, 3))
    windows = windows[..., ::dilation, ::dilation][:, :, ::stride, ::stride]
    return np.einsum("nchwyx,cyx->nchw", windows, w[:, 0], optimize=True).astype(np.float32)


def _depthwise(shape, k, stride=1, padding=0, dilation=1, epilogue="relu6"):
    x = te.placeholder(shape, name="x")
    w = te.placeholder((shape[1], 1, k, k), name="w")
    out = topi.nn.group_conv2d_nchw(x, w, stride, padding, dilation, groups=shape[1])
    if epilogue is None:
        return te.create_prim_func([x, w, out])
    b = te.placeholder((1, shape[1], 1, 1), name="b")
    out = topi.add(out, b)
    if epilogue == "relu6":
        out = topi.clip(out, 0.0, 6.0)
    elif epilogue == "hardswish":
        out = topi.multiply(out, topi.divide(topi.clip(topi.add(out, 3.0), 0.0, 6.0), 6.0))
    return te.create_prim_func([x, w, b, out])


def _epilogue_ref(y, b, epilogue):
    y = y + b
    if epilogue == "relu6":
        return np.clip(y, 0, 6)
    return y * np.clip(y + 3, 0, 6) / 6


# (input NCHW, kernel, stride, padding, dilation, epilogue): MobileNet's 3x3 strides 1 and 2, 5x5 and ConvNeXt's
# 7x7, odd widths (tails below a vector), batches, dilation, no padding.
CASES = [
    ((1, 32, 16, 16), 3, 1, 1, 1, "relu6"),
    ((1, 16, 17, 17), 3, 2, 1, 1, "relu6"),
    ((2, 5, 9, 13), 5, 2, 2, 1, "hardswish"),
    ((1, 8, 14, 14), 7, 1, 3, 1, "hardswish"),
    ((1, 3, 7, 7), 5, 1, 2, 1, "relu6"),
    ((1, 4, 12, 11), 3, 1, 2, 2, "relu6"),
    ((2, 6, 10, 19), 3, 3, 0, 1, "hardswish"),
    ((1, 5, 7, 7), 3, 1, 1, 1, "relu6"),  # vectors of 7 (row_vector)
    ((1, 3, 14, 14), 5, 1, 2, 1, "hardswish"),  # vectors of 14 (AVX-512) or 7
    ((1, 4, 13, 13), 3, 2, 1, 1, "relu6"),  # 7 outputs a row from a stride of 2
    ((1, 8, 16, 16), 3, 2, 1, 1, "relu6"),  # even padded width
    ((1, 8, 17, 17), 3, 2, 0, 1, "relu6"),  # odd width, no padding (TF "same" padding comes as a pad op before it)
    ((2, 3, 12, 10), 5, 2, 2, 1, "hardswish"),
    ((1, 5, 7, 7), 3, 2, 1, 1, "relu6"),
]


@pytest.mark.parametrize("shape, k, stride, padding, dilation, epilogue", CASES)
def test_depthwise_with_epilogue_matches_numpy(shape, k, stride, padding, dilation, epilogue):
    func = _depthwise(shape, k, stride, padding, dilation, epilogue)
    x = RNG.standard_normal(shape, dtype="float32")
    w = RNG.standard_normal((shape[1], 1, k, k), dtype="float32")
    b = RNG.standard_normal((1, shape[1], 1, 1), dtype="float32")
    expected = _epilogue_ref(_depthwise_ref(x, w, stride, padding, dilation), b, epilogue)
    np.testing.assert_allclose(run(scheduled(DepthwiseConv2d(), func), x, w, b), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, k, stride, padding", [((1, 16, 16, 16), 3, 1, 1), ((1, 8, 9, 9), 3, 2, 1)])
def test_depthwise_alone_propagates_nan_and_inf(shape, k, stride, padding):
    func = _depthwise(shape, k, stride, padding, epilogue=None)
    x = RNG.standard_normal(shape, dtype="float32")
    x[0, 1, 2, 3], x[0, 2, 4, 4], x[0, 3, 0, 0] = np.nan, np.inf, 1e30
    w = RNG.standard_normal((shape[1], 1, k, k), dtype="float32")
    expected = _depthwise_ref(x.astype(np.float64), w.astype(np.float64), stride, padding, 1).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        np.testing.assert_allclose(run(scheduled(DepthwiseConv2d(), func), x, w), expected, rtol=1e-4, atol=1e-3)


def test_depthwise_is_parallel_and_vectorized():
    kinds = loop_kinds(scheduled(DepthwiseConv2d(), _depthwise((1, 32, 16, 16), 3, 1, 1)))
    assert {"vectorized", "unroll"} <= kinds


@pytest.mark.parametrize("width, lanes, taps, expected", [
    (56, 16, 3, 8), (112, 8, 3, 8), (7, 8, 3, 7), (7, 16, 3, 7), (14, 16, 3, 14), (14, 8, 3, 7), (14, 16, 7, 14),
    (7, 16, 5, 1), (7, 16, 7, 1), (28, 16, 3, 14), (13, 8, 3, 1), (1, 8, 1, 1)])
def test_row_vector_takes_odd_widths_only_when_a_vector_spans_two_windows(width, lanes, taps, expected):
    assert row_vector(width, lanes, taps) == expected


@pytest.mark.parametrize("width", [16, 17])
def test_strided_stage_stores_each_phase_of_a_row_contiguously(width):
    """Padded widths 18 and 19 (a multiple of the stride or not): after the de-interleaving layout, the stage's
    column loop is split by the stride with the phase outside, so the innermost loop stores contiguously."""
    sch = DepthwiseConv2d().apply(_depthwise((1, 8, width, width), 3, 2, 1), TARGET, False)
    kinds = [inst.kind.name for inst in sch.trace.insts]
    laid_out = kinds.index("TransformLayout")
    assert kinds[laid_out + 1 : laid_out + 4] == ["GetLoops", "Split", "Reorder"]


def test_seven_wide_rows_are_vectors():
    text = scheduled(DepthwiseConv2d(), _depthwise((1, 8, 7, 7), 3, 1, 1)).script()
    assert "T.vectorized(7)" in text


def test_default_rules_pick_depthwise_for_depthwise_convs():
    func = _depthwise((1, 16, 17, 17), 3, 2, 1)
    fitted = next(type(r).__name__ for r in default_rules() if r.apply(func, TARGET, False))
    assert fitted == "DepthwiseConv2d"


def test_declines_dense_and_grouped_convs_and_matmuls():
    x = te.placeholder((1, 8, 10, 10), name="x")
    dense = te.create_prim_func([x, w := te.placeholder((8, 8, 3, 3), name="w"), topi.nn.conv2d_nchw(x, w, 1, 1, 1)])
    grouped = te.create_prim_func([x, g := te.placeholder((8, 4, 3, 3), name="g"),
                                   topi.nn.group_conv2d_nchw(x, g, 1, 1, 1, groups=2)])
    a, b = te.placeholder((16, 8), name="a"), te.placeholder((8, 16), name="b")
    matmul = te.create_prim_func([a, b, topi.matmul(a, b)])
    for func in (dense, grouped, matmul):
        assert DepthwiseConv2d().apply(func, TARGET, False) is None


def test_hardswish_divides_by_a_product():
    """The epilogue's `/ 6` runs as a multiplication by 1/6 (a vector division is a slow instruction)."""
    text = scheduled(DepthwiseConv2d(), _depthwise((1, 8, 14, 14), 5, padding=2, epilogue="hardswish")).script()
    assert "T.float32(6.0)" in text and "/ T.float32(6.0)" not in text and "T.float32(0.16666666666666666)" in text


def test_epilogue_runs_per_row_in_the_convs_vectors():
    """14-wide rows: the bias and ReLU6 in the conv's 14-lane vectors, per row (not 2-lane vectors over the plane)."""
    text = scheduled(DepthwiseConv2d(), _depthwise((1, 8, 14, 14), 3, 1, 1)).script()
    assert text.count("T.vectorized(14)") == 3 and "T.vectorized(2)" not in text  # init, taps, epilogue


def test_fused_padding_of_the_next_layer_runs_over_the_plane():
    """An epilogue of another shape (the next conv's padding) cannot run per output row; it runs per plane."""
    shape = (2, 8, 9, 12)
    x, w = te.placeholder(shape, name="x"), te.placeholder((shape[1], 1, 3, 3), name="w")
    conv = topi.clip(topi.nn.group_conv2d_nchw(x, w, 1, 1, 1, groups=shape[1]), 0.0, 6.0)
    func = scheduled(DepthwiseConv2d(), te.create_prim_func([x, w, topi.nn.pad(conv, [0, 0, 1, 2], [0, 0, 2, 1])]))
    data = RNG.standard_normal(shape, dtype="float32")
    weight = RNG.standard_normal((shape[1], 1, 3, 3), dtype="float32")
    expected = np.pad(np.clip(_depthwise_ref(data, weight, 1, 1, 1), 0, 6), ((0, 0), (0, 0), (1, 2), (2, 1)))
    np.testing.assert_allclose(run(func, data, weight), expected, rtol=1e-5, atol=1e-5)
