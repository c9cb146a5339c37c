import numpy as np
import pytest
from tvm import te, topi
from tvm.target import Target
from tvm.target.codegen import target_has_features

from schedules.rules import Conv2d, PointwiseConv2d, default_rules
from schedules.rules.pointwise_conv2d import register_tile
from tests.schedules.rule_harness import TARGET, loop_kinds, run, scheduled
from tests.schedules.test_rule_conv2d import _conv_bias_relu, _conv_ref

RNG = np.random.default_rng(11)
AVX2 = Target({"kind": "llvm", "mcpu": "znver3"})
AVX512 = Target({"kind": "llvm", "mcpu": "znver4"})

# (input NCHW, output channels): rows of whole vectors (16 and 8 lanes), batches, odd channel and row counts.
CASES = [((1, 16, 6, 32), 24), ((2, 3, 5, 16), 7), ((1, 5, 3, 24), 9), ((3, 2, 2, 8), 3)]


def _inputs(shape, co):
    x = RNG.standard_normal(shape, dtype="float32")
    w = RNG.standard_normal((co, shape[1], 1, 1), dtype="float32")
    b = RNG.standard_normal((1, co, 1, 1), dtype="float32")
    return x, w, b


@pytest.mark.parametrize("target", [AVX2, AVX512], ids=["avx2", "avx512"])
@pytest.mark.parametrize("shape, co", CASES)
def test_bias_relu_matches_numpy(target, shape, co):
    func = scheduled(PointwiseConv2d(), _conv_bias_relu(shape, co, 1), target)
    assert "layout_rewrite_preproc" not in func.script()  # the weight is read as it is
    if target is AVX512 and not target_has_features(["avx512f"], TARGET):
        return
    x, w, b = _inputs(shape, co)
    expected = np.maximum(_conv_ref(x, w, 1, 0, 1) + b, 0)
    np.testing.assert_allclose(run(func, x, w, b, target=target), expected, rtol=1e-4, atol=1e-4)


def test_hardswish_divides_by_a_product():
    shape, co = CASES[0]
    func = scheduled(PointwiseConv2d(), _conv_bias_relu(shape, co, 1, hardswish=True))
    assert "/ T.float32(6.0)" not in func.script()
    x, w, b = _inputs(shape, co)
    y = _conv_ref(x, w, 1, 0, 1) + b
    np.testing.assert_allclose(run(func, x, w, b), y * np.clip(y + 3, 0, 6) / 6, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, co", CASES[:2])
def test_without_epilogue_propagates_nan_and_inf(shape, co):
    x, w, _ = _inputs(shape, co)
    x *= 1e3
    x[0, 0, 1, 2], x[-1, -1, -1, -1] = np.nan, np.inf
    with np.errstate(invalid="ignore"):
        expected = _conv_ref(x, w, 1, 0, 1)
    out = run(scheduled(PointwiseConv2d(), _conv_bias_relu(shape, co, 1, epilogue=False)), x, w)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-2)
    assert np.isnan(out).any()


def test_pixels_vectorized_tiles_parallel_and_before_the_channel_block():
    kinds = loop_kinds(scheduled(PointwiseConv2d(), _conv_bias_relu((1, 16, 56, 56), 24, 1), Target(
        {"kind": "llvm", "mcpu": "znver4", "num-cores": 2})))
    assert {"parallel", "vectorized", "unroll"} <= kinds
    names = [type(rule).__name__ for rule in default_rules()]
    assert names.index("PointwiseConv2d") < names.index("Conv2d")


@pytest.mark.parametrize("shape, co, k, stride, padding", [
    ((1, 4, 8, 16), 8, 3, 1, 1),  # a 3x3 window
    ((1, 4, 8, 16), 8, 1, 2, 0),  # stride 2
    ((1, 4, 8, 16), 8, 1, 1, 1),  # padded
    ((1, 4, 8, 7), 8, 1, 1, 0),  # a row of no whole vector
])
def test_declines_what_the_channel_block_serves(shape, co, k, stride, padding):
    func = _conv_bias_relu(shape, co, k, stride, padding)
    assert PointwiseConv2d().apply(func, TARGET, False) is None
    assert Conv2d().apply(func, TARGET, False) is not None


@pytest.mark.parametrize("shape, co", [((1, 4, 8, 16), 1), ((1, 4, 1, 16), 8), ((1, 1, 8, 16), 8)],
                         ids=["one-output-channel", "one-row", "one-input-channel"])
def test_declines_unit_axes_and_the_rules_still_compute_them(shape, co):
    """A unit axis is dropped by dlight's normalization: the rule declines (does not raise), another serves it."""
    func = _conv_bias_relu(shape, co, 1)
    assert PointwiseConv2d().apply(func, TARGET, False) is None
    sch = next(s for s in (rule.apply(func, TARGET, False) for rule in default_rules()) if s is not None)
    x, w, b = _inputs(shape, co)
    np.testing.assert_allclose(run(sch.mod["main"], x, w, b), np.maximum(_conv_ref(x, w, 1, 0, 1) + b, 0),
                               rtol=1e-4, atol=1e-4)


def test_declines_a_fused_padding_of_the_next_layer():
    x = te.placeholder((1, 4, 8, 16), name="x")
    w = te.placeholder((8, 4, 1, 1), name="w")
    out = topi.nn.pad(topi.nn.relu(topi.nn.conv2d_nchw(x, w, 1, 0, 1)), [0, 0, 1, 1], [0, 0, 1, 1])
    assert PointwiseConv2d().apply(te.create_prim_func([x, w, out]), TARGET, False) is None


@pytest.mark.parametrize("height, vectors, channels, registers", [(112, 7, 96, 32), (7, 7, 13, 16), (1, 1, 1, 16)])
def test_register_tile_divides_every_extent_and_fits_the_registers(height, vectors, channels, registers):
    outs, rows, row_vectors = register_tile(height, vectors, channels, registers)
    assert channels % outs == 0 and height % rows == 0 and vectors % row_vectors == 0
    assert outs * rows * row_vectors + rows * row_vectors + 1 <= registers
