import numpy as np
import pytest
import tvm
from tvm import relax, te, topi

from relay_passes.pipeline import tvm_lut_pipeline
from schedules.rules import Matmul
from schedules.rules.common import WEIGHT_PREPACK
from tests.schedules.rule_harness import TARGET, loop_kinds, run, scheduled

RNG = np.random.default_rng(2)


def _matmul(a, b, transpose_b=False):
    *batch, _, k = a.shape
    r = te.reduce_axis((0, k), "k")
    n = b.shape[-2] if transpose_b else b.shape[-1]
    if transpose_b:
        return te.compute((*batch, a.shape[-2], n), lambda *i: te.sum(a[(*i[:-1], r)] * b[(*i[:-2], i[-1], r)], axis=r))
    return te.compute((*batch, a.shape[-2], n), lambda *i: te.sum(a[(*i[:-1], r)] * b[(*i[:-2], r, i[-1])], axis=r))


@pytest.mark.parametrize("m, n, k", [(512, 384, 384), (7, 5, 3), (13, 48, 33), (2, 3, 5), (6, 100, 9)])
def test_matmul_bias_gelu_matches_numpy(m, n, k):
    a, b, bias = te.placeholder((m, k), name="a"), te.placeholder((k, n), name="b"), te.placeholder((n,), name="bias")
    z = topi.add(_matmul(a, b), bias)
    out = topi.multiply(topi.multiply(z, 0.5), topi.add(topi.erf(topi.multiply(z, 0.7071067811865476)), 1.0))
    func = te.create_prim_func([a, b, bias, out])
    x, w, c = (RNG.standard_normal(s, dtype="float32") for s in ((m, k), (k, n), (n,)))
    z_ref = x @ w + c
    from math import erf

    expected = 0.5 * z_ref * (1 + np.vectorize(erf)(z_ref / np.sqrt(2)))
    np.testing.assert_allclose(run(scheduled(Matmul(), func), x, w, c), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(96, 64, 64, 32), (3, 5, 7, 2)])
def test_batch_matmul_matches_numpy(shape):
    batch, m, n, k = shape
    a, b = te.placeholder((batch, m, k), name="a"), te.placeholder((batch, k, n), name="b")
    func = te.create_prim_func([a, b, _matmul(a, b)])
    x, w = RNG.standard_normal((batch, m, k), dtype="float32"), RNG.standard_normal((batch, k, n), dtype="float32")
    np.testing.assert_allclose(run(scheduled(Matmul(), func), x, w), x @ w, rtol=1e-4, atol=1e-4)


def test_matmul_with_residual_and_nonfinite_inputs():
    a, b, res = te.placeholder((8, 4), name="a"), te.placeholder((4, 32), name="b"), te.placeholder((8, 32), name="r")
    func = te.create_prim_func([a, b, res, topi.add(_matmul(a, b), res)])
    x, w, r = RNG.standard_normal((8, 4), "float32"), RNG.standard_normal((4, 32), "float32"), np.zeros((8, 32), "float32")
    x[0, 0], x[1, 1], w[2, 3] = np.nan, np.inf, -np.inf
    with np.errstate(invalid="ignore"):
        expected = x @ w + r
    np.testing.assert_array_equal(np.isnan(run(scheduled(Matmul(), func), x, w, r)), np.isnan(expected))


def test_large_matmul_is_parallel_vectorized_and_unrolled():
    a, b = te.placeholder((128, 384), name="a"), te.placeholder((384, 384), name="b")
    kinds = loop_kinds(scheduled(Matmul(), te.create_prim_func([a, b, _matmul(a, b)])))
    assert kinds == {"parallel", "vectorized", "unroll"}


def test_declines_a_transposed_right_operand():
    a, b = te.placeholder((16, 8), name="a"), te.placeholder((32, 8), name="b")
    assert Matmul().apply(te.create_prim_func([a, b, _matmul(a, b, transpose_b=True)]), TARGET, False) is None


def test_declines_a_plain_reduction():
    x = te.placeholder((16, 8), name="x")
    assert Matmul().apply(te.create_prim_func([x, topi.sum(x, axis=1)]), TARGET, False) is None


@pytest.mark.parametrize("batch, n, k", [((), 128, 576), ((), 10, 128), ((), 5, 3), ((4,), 33, 17)])
def test_one_row_matmul_bias_relu_matches_numpy(batch, n, k):
    a, b = te.placeholder((*batch, 1, k), name="a"), te.placeholder((*batch, k, n), name="b")
    bias = te.placeholder((n,), name="bias")
    func = te.create_prim_func([a, b, bias, topi.nn.relu(topi.add(_matmul(a, b), bias))])
    x, w, c = (RNG.standard_normal(s, dtype="float32") for s in ((*batch, 1, k), (*batch, k, n), (n,)))
    w.flat[:2] = [np.nan, np.inf]  # column 0 NaN, column 1 +-inf; the others finite
    with np.errstate(invalid="ignore"):
        expected = np.fmax(x @ w + c, 0)  # TIR max is LLVM maxnum: max(NaN, 0) = 0
    np.testing.assert_allclose(run(scheduled(Matmul(), func), x, w, c), expected, rtol=1e-4, atol=1e-4)


def test_one_row_matmul_is_vectorized():
    a, b = te.placeholder((1, 576), name="a"), te.placeholder((576, 128), name="b")
    assert "vectorized" in loop_kinds(scheduled(Matmul(), te.create_prim_func([a, b, _matmul(a, b)])))


def test_declines_a_one_by_one_convolution():
    x, w = te.placeholder((1, 64, 7, 7), name="x"), te.placeholder((64, 64, 1, 1), name="w")
    assert Matmul().apply(te.create_prim_func([x, w, topi.nn.conv2d_nchw(x, w, 1, 0, 1)]), TARGET, False) is None


@pytest.mark.parametrize("a_shape, b_shape, packed", [
    ((64, 384), (384, 1536), True),  # a dense layer's weight: panels
    ((1, 576), (576, 128), True),  # one row: panels of the wider one-row tile
    ((64, 96), (96, 128), False),  # 12Ki elements: stays in cache, left alone
    ((12, 64, 32), (12, 32, 256), False),  # batched right operand (attention): left alone
])
def test_repacks_only_large_two_dimensional_weights(a_shape, b_shape, packed):
    a, b = te.placeholder(a_shape, name="a"), te.placeholder(b_shape, name="b")
    func = scheduled(Matmul(), te.create_prim_func([a, b, _matmul(a, b)]))
    assert (WEIGHT_PREPACK in func.script()) == packed
    x, w = RNG.standard_normal(a_shape, dtype="float32"), RNG.standard_normal(b_shape, dtype="float32")
    np.testing.assert_allclose(run(func, x, w), x @ w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m, k, n", [
    (64, 384, 1536),  # MiniLM's FFN
    (197, 384, 197),  # ragged (ViT's 197 tokens): the zero padding and the panels fold into one constant
])
def test_the_pipeline_folds_a_constant_weight_into_panels(m, k, n):
    """Through the `tvm_lut` pipeline a constant weight is repacked once at compile time: no repacking call runs."""
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    weight = RNG.standard_normal((k, n), dtype="float32")
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(builder.emit(relax.op.nn.relu(relax.op.matmul(x, relax.const(weight)))))
        builder.emit_func_output(out)
    executable = tvm.compile(builder.get(), target=TARGET, relax_pipeline=tvm_lut_pipeline(target=TARGET))
    calls = executable.as_text().split("@main:")[1].split("\n\n")[0]
    assert "_prepacked" in calls and "_weight_prepack" not in calls
    data = RNG.standard_normal((m, k), dtype="float32")
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
    np.testing.assert_allclose(got, np.maximum(data @ weight, 0), rtol=1e-4, atol=1e-4)
