"""The Winograd F(2x2, 3x3) kernel, unscheduled and under the `Winograd` rule, against a direct NumPy conv on odd
shapes, both x86 vector widths, NEON (on the emulated aarch64 device) and edge inputs; the rule declines what is
not one Winograd conv."""

import numpy as np
import pytest
import tvm
from tvm import te, topi
from tvm.target import Target

from schedules import rpc
from schedules.kernels.winograd import winograd_conv2d_func, winograd_weight
from schedules.rules import Conv2d, Winograd, default_rules
from tests.schedules.rule_harness import TARGET, loop_kinds, run, scheduled
from tests.schedules.test_rule_conv2d import _conv_bias_relu

RNG = np.random.default_rng(11)
AVX2 = Target({"kind": "llvm", "mcpu": "core-avx2", "num-cores": 2})


def _reference(x, w, padding):
    """Direct 3x3 stride-1 conv in float64: zero padding (top, left, bottom, right), then 9 shifted contractions."""
    top, left, bottom, right = padding
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h, out_w = padded.shape[2] - 2, padded.shape[3] - 2
    out = np.zeros((x.shape[0], w.shape[0], out_h, out_w))
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(3):
            for j in range(3):
                out += np.einsum("nchw,oc->nohw", padded[:, :, i : i + out_h, j : j + out_w], w[:, :, i, j])
    return out


def _run(x, w, padding, target=TARGET, rule=True):
    func = winograd_conv2d_func(x.shape, w.shape[0], padding)
    if rule:
        func = scheduled(Winograd(), func, target)
    return run(func, x, winograd_weight(w), target=target)


# (input NCHW, output channels, padding): the CNN's conv2, then odd output sizes (a cut last tile), asymmetric
# padding, batches, channel counts off the vector width, a single row of two tiles.
CASES = [
    ((1, 32, 14, 14), 64, (1, 1, 1, 1)),
    ((2, 8, 7, 9), 5, (0, 1, 2, 0)),
    ((1, 12, 5, 6), 20, (0, 0, 0, 0)),
    ((3, 16, 4, 4), 16, (1, 1, 1, 1)),
    ((1, 9, 4, 6), 3, (0, 0, 0, 0)),
]


@pytest.mark.parametrize("target", [TARGET, AVX2], ids=["host", "avx2"])
@pytest.mark.parametrize("shape, co, padding", CASES)
def test_matches_the_direct_conv(shape, co, padding, target):
    x = RNG.standard_normal(shape, dtype="float32")
    w = RNG.standard_normal((co, shape[1], 3, 3), dtype="float32")
    expected = _reference(x, w, padding)
    np.testing.assert_allclose(_run(x, w, padding, target), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_unscheduled_compute_is_the_same_conv():
    shape, co, padding = CASES[1]
    x = RNG.standard_normal(shape, dtype="float32")
    w = RNG.standard_normal((co, shape[1], 3, 3), dtype="float32")
    np.testing.assert_allclose(_run(x, w, padding, rule=False), _reference(x, w, padding), rtol=1e-4, atol=1e-4)


def test_weight_is_g_g_gt_per_filter():
    w = RNG.standard_normal((4, 3, 3, 3))
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    u = winograd_weight(w)
    assert u.shape == (16, 3, 4) and u.dtype == np.float32
    np.testing.assert_allclose(u[:, 2, 1].reshape(4, 4), g @ w[1, 2] @ g.T, rtol=1e-6)
    with pytest.raises(ValueError, match="3x3 filters"):
        winograd_weight(np.zeros((4, 3, 5, 5)))


def test_empty_conv_is_refused():
    with pytest.raises(ValueError, match="empty Winograd conv"):
        winograd_conv2d_func((0, 8, 6, 6), 4, (0, 0, 0, 0))


def test_nan_inf_huge_and_tiny_inputs():
    """NaN reaches the outputs whose window holds it, as in the direct conv; +-inf makes them non-finite (the
    transforms subtract it from itself); huge and tiny magnitudes keep their relative accuracy."""
    shape, co, padding = (1, 8, 8, 8), 4, (1, 1, 1, 1)
    w = RNG.standard_normal((co, shape[1], 3, 3), dtype="float32")
    x = RNG.standard_normal(shape, dtype="float32")
    x[0, 2, 1, 1], x[0, 5, 6, 6] = np.nan, np.inf
    out, expected = _run(x, w, padding), _reference(x, w, padding)
    reach = ~np.isfinite(expected)
    np.testing.assert_array_equal(~np.isfinite(out), reach)
    np.testing.assert_array_equal(np.isnan(out[..., :4, :4]), reach[..., :4, :4])  # the NaN's window: NaN
    np.testing.assert_allclose(out[~reach], expected[~reach], rtol=1e-4, atol=1e-4 * np.abs(expected[~reach]).max())
    for scale in (1e18, 1e-18):
        x = RNG.standard_normal(shape, dtype="float32") * np.float32(scale)
        expected = _reference(x, w, padding)
        np.testing.assert_allclose(_run(x, w, padding), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_parallel_on_several_cores_and_first_among_the_rules():
    func = scheduled(Winograd(), winograd_conv2d_func((1, 32, 14, 14), 64, (1, 1, 1, 1)), AVX2)
    assert {"parallel", "vectorized", "unroll"} <= loop_kinds(func)
    assert type(default_rules()[0]).__name__ == "Winograd"


def test_declines_what_is_not_one_winograd_conv():
    assert Winograd().apply(_conv_bias_relu((1, 8, 6, 6), 4, 3), TARGET, False) is None
    x = te.placeholder((4, 8), name="x")
    assert Winograd().apply(te.create_prim_func([x, topi.nn.relu(x)]), TARGET, False) is None
    # the direct conv rule does not take the Winograd function either
    assert Conv2d().apply(winograd_conv2d_func((1, 8, 6, 6), 4, (0, 0, 0, 0)), TARGET, False) is None
    # a single tile: no pixel axis to tile (WinogradConv2d leaves such convs direct)
    assert Winograd().apply(winograd_conv2d_func((1, 8, 4, 4), 4, (0, 0, 0, 0)), TARGET, False) is None


def test_neon_build_uses_vector_fma():
    func = scheduled(Winograd(), winograd_conv2d_func((1, 16, 8, 8), 8, (1, 1, 1, 1)), rpc.ARM_TARGET)
    asm = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=rpc.ARM_TARGET)
    assert "fmla" in asm.mod.inspect_source("asm")


@pytest.mark.arm
def test_on_the_aarch64_device():
    reason = rpc.missing()
    if reason:
        pytest.skip(reason)
    shape, co, padding = (1, 16, 7, 9), 12, (1, 1, 1, 1)
    x = RNG.standard_normal(shape, dtype="float32")
    w = RNG.standard_normal((co, shape[1], 3, 3), dtype="float32")
    expected = _reference(x, w, padding)
    func = scheduled(Winograd(), winograd_conv2d_func(shape, co, padding), rpc.ARM_TARGET)
    with rpc.emulated_device() as session:
        *_, out = rpc.run_remote(session, tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), "main",
                                 [x, winograd_weight(w), np.zeros(expected.shape, np.float32)])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
