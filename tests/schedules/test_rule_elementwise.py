import numpy as np
import pytest
from tvm import te, topi

from schedules.rules import Elementwise, Reduction
from schedules.target import CPUParams, override_params
from tests.schedules.rule_harness import TARGET, loop_kinds, run, scheduled

RNG = np.random.default_rng(0)
EDGE = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45, -0.0, 0.0], dtype="float32")


def _add_relu_bias(shape):
    a = te.placeholder(shape, name="a")
    bias = te.placeholder(shape[-1:], name="bias")
    out = topi.nn.relu(topi.add(topi.multiply(a, 2.0), bias))
    return te.create_prim_func([a, bias, out])


@pytest.mark.parametrize("shape", [(8, 64, 384), (3, 7, 5), (1,), (17,), (2, 1, 33)])
def test_broadcast_chain_matches_numpy(shape):
    func = _add_relu_bias(shape)
    a = RNG.standard_normal(shape, dtype="float32")
    a.flat[: min(a.size, EDGE.size)] = EDGE[: a.size]
    bias = RNG.standard_normal(shape[-1:], dtype="float32")
    with np.errstate(all="ignore"):
        expected = np.fmax(a * 2 + bias, 0)  # TIR max is LLVM maxnum: max(NaN, 0) = 0
    np.testing.assert_array_equal(run(scheduled(Elementwise(), func), a, bias), expected)
    np.testing.assert_array_equal(run(func, a, bias), expected)


def test_large_chain_is_parallel_and_vectorized():
    kinds = loop_kinds(scheduled(Elementwise(), _add_relu_bias((64, 384))))
    assert {"parallel", "vectorized"} <= kinds


def test_min_parallel_work_decides_threads():
    """12k elements: one thread at the default threshold (a 2-thread launch costs more), two below it."""
    func = _add_relu_bias((32, 384))
    assert 32 * 384 < CPUParams().min_parallel_work
    assert "parallel" not in loop_kinds(scheduled(Elementwise(), func))
    with override_params(min_parallel_work=32 * 384):
        assert "parallel" in loop_kinds(scheduled(Elementwise(), func))


def test_tiny_chain_stays_on_one_thread():
    assert "parallel" not in loop_kinds(scheduled(Elementwise(), _add_relu_bias((4, 8))))


def test_transpose_reshape_matches_numpy():
    x = te.placeholder((2, 5, 3, 7), name="x")
    out = topi.reshape(topi.transpose(x, (0, 2, 1, 3)), (6, 35))
    func = te.create_prim_func([x, out])
    data = RNG.standard_normal((2, 5, 3, 7), dtype="float32")
    np.testing.assert_array_equal(run(scheduled(Elementwise(), func), data), data.transpose(0, 2, 1, 3).reshape(6, 35))


def test_zero_size_is_served():
    func = _add_relu_bias((0, 16))
    assert run(scheduled(Elementwise(), func), np.zeros((0, 16), "float32"), np.zeros(16, "float32")).shape == (0, 16)


def test_declines_a_reduction():
    x = te.placeholder((4, 16), name="x")
    func = te.create_prim_func([x, topi.sum(x, axis=1)])
    assert Elementwise().apply(func, TARGET, False) is None


def test_declines_non_cpu_targets():
    import tvm

    func = _add_relu_bias((4, 8))
    assert Elementwise().apply(func, tvm.target.Target({"kind": "cuda"}), False) is None
    assert Reduction().apply(func, TARGET, False) is None


@pytest.mark.parametrize("shape", [(2, 16, 12, 12), (1, 3, 5, 7)])
def test_a_gate_read_by_two_broadcasts_is_served_and_matches_numpy(shape):
    """A per-channel gate that two stages read at (n, c, 0, 0): it cannot be inlined (two consumers), and reverse
    inlining a broadcast read made TVM fail an internal check; the rule must serve it or decline, never raise."""
    x = te.placeholder((*shape[:2], 1, 1), name="x")
    y = te.placeholder(shape, name="y")
    gate = te.compute(x.shape, lambda *i: te.sigmoid(x(*i)), name="gate")
    scaled = te.compute(shape, lambda n, c, h, w: y[n, c, h, w] * gate[n, c, 0, 0], name="scaled")
    out = te.compute(shape, lambda n, c, h, w: scaled[n, c, h, w] + gate[n, c, 0, 0], name="out")
    func = scheduled(Elementwise(), te.create_prim_func([x, y, out]))
    xs = RNG.standard_normal((*shape[:2], 1, 1), dtype="float32")
    ys = RNG.standard_normal(shape, dtype="float32")
    g = 1 / (1 + np.exp(-xs))
    np.testing.assert_allclose(run(func, xs, ys), ys * g + g, rtol=1e-5, atol=1e-6)


def test_a_reduction_over_unit_axes_keeps_its_epilogue_once():
    """A 1x1 conv of one input channel reduces over axes of extent 1 only, so dlight calls it injective; its bias and
    ReLU must not be inlined into its init as well as its update (TVM's reverse inlining does both)."""
    x, w, b = (te.placeholder(shape, name=name) for shape, name in (((1, 1, 4, 8), "x"), ((3, 1, 1, 1), "w"),
                                                                    ((1, 3, 1, 1), "b")))
    func = te.create_prim_func([x, w, b, topi.nn.relu(topi.add(topi.nn.conv2d_nchw(x, w, 1, 0, 1), b))])
    data, weight, bias = (RNG.standard_normal([int(d) for d in t.shape], dtype="float32") for t in (x, w, b))
    expected = np.maximum(data * weight.reshape(1, 3, 1, 1) + bias, 0)
    np.testing.assert_allclose(run(scheduled(Elementwise(), func), data, weight, bias), expected, rtol=1e-6)
