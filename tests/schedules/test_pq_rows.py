"""The few-row PQ kernels against the references the row-lane kernels follow: the first minimum of the centered
distances, code 0 for a sub-vector that is not finite, exact integer sums, then `float32(acc) * scale + bias`."""

import numpy as np
import pytest
import tvm

from schedules.kernels.pq_encode import pq_encode_reference
from schedules.kernels.pq_lookup import pq_lookup_reference
from schedules.kernels.pq_rows import pack_centroids_by_dim, pq_encode_rows_func, pq_lookup_rows_func

from .pq_harness import build


def _encode(x, centroids):
    codes = tvm.runtime.tensor(np.full((x.shape[0], centroids.shape[0]), -1, np.int32))
    func = pq_encode_rows_func(x.shape[0], *centroids.shape[:2], centroids.shape[2])
    build(func)["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(pack_centroids_by_dim(centroids)), codes)
    return codes.numpy()


@pytest.mark.parametrize("rows, codebooks, centroids, sub_len", [(1, 144, 16, 4), (3, 7, 8, 3), (2, 5, 1, 16)])
def test_encode_matches_the_reference_with_nan_inf_and_huge_rows(rows, codebooks, centroids, sub_len):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, codebooks * sub_len)).astype(np.float32)
    x[0, 0], x[-1, -1] = np.nan, np.inf  # the first and last sub-vectors get code 0
    x[0, sub_len:2 * sub_len] = 1e30  # huge but finite: no square to overflow, the nearest centroid still
    table = rng.standard_normal((codebooks, centroids, sub_len)).astype(np.float32)
    codes = _encode(x, table)
    np.testing.assert_array_equal(codes, pq_encode_reference(x, table))
    assert codes[0, 0] == 0 and codes[-1, -1] == 0


def test_encode_ties_go_to_the_lowest_centroid():
    table = np.zeros((2, 16, 4), np.float32)  # every centroid equal: all tie
    np.testing.assert_array_equal(_encode(np.ones((1, 8), np.float32), table), [[0, 0]])


@pytest.mark.parametrize("rows, codebooks, centroids, outputs", [(1, 144, 16, 128), (2, 64, 16, 10), (3, 9, 8, 67)])
def test_lookup_sums_exactly_and_scales_per_output(rows, codebooks, centroids, outputs):
    rng = np.random.default_rng(outputs)
    codes = rng.integers(0, centroids, (rows, codebooks)).astype(np.int32)
    table = rng.integers(-128, 128, (codebooks, centroids, outputs)).astype(np.int8)
    table[:, 0, :] = 127  # code 0 everywhere in row 0: the largest sum
    codes[0] = 0
    scale = (10.0 ** rng.uniform(-6, 2, outputs)).astype(np.float32)
    bias = rng.standard_normal(outputs).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros((rows, outputs), np.float32))
    build(pq_lookup_rows_func(rows, codebooks, centroids, outputs))["main"](
        *[tvm.runtime.tensor(a) for a in (codes, table, scale, bias)], y)
    np.testing.assert_allclose(y.numpy(), pq_lookup_reference(codes, table, scale, bias), rtol=1e-6, atol=1e-6)


def test_zero_rows_build_and_do_nothing():
    y = tvm.runtime.tensor(np.zeros((0, 8), np.float32))
    build(pq_lookup_rows_func(0, 4, 16, 8))["main"](
        tvm.runtime.tensor(np.zeros((0, 4), np.int32)), tvm.runtime.tensor(np.zeros((4, 16, 8), np.int8)),
        tvm.runtime.tensor(np.ones(8, np.float32)), tvm.runtime.tensor(np.zeros(8, np.float32)), y)
    assert y.numpy().shape == (0, 8)
