"""The encode kernel against its NumPy reference and the PyTorch PQ reference, on random, odd and edge inputs."""

import numpy as np
import pytest

from schedules.kernels.pq_encode import DenseRows, Im2col, pack_centroids, pq_encode_func, pq_encode_reference
from schedules.kernels.pq_lookup import LookupLayout

from .pq_harness import INTRIN, run_encode

pytestmark = pytest.mark.skipif(INTRIN is None, reason="this CPU has no AVX2 / AVX-512BW lookup intrinsic")


def assert_codes_nearest(x, centroids, codes, rtol=1e-5):
    """Every code is the nearest centroid (exact float64 distances) up to float32 rounding on near-ties."""
    num_codebooks, _, sub_len = centroids.shape
    subs = x.reshape(x.shape[0], num_codebooks, 1, sub_len).astype(np.float64)
    dist = ((subs - centroids[None].astype(np.float64)) ** 2).sum(-1)  # (N, C, K)
    chosen = np.take_along_axis(dist, codes[..., None], -1)[..., 0]
    best = dist.min(-1)
    slack = rtol * (np.abs(subs).sum(-1)[..., 0] * np.abs(centroids).max() + best + 1)
    assert np.all(chosen - best <= slack)


@pytest.mark.parametrize("rows, codebooks, centroids, sub_len", [
    (1, 24, 16, 16),   # one token
    (45, 3, 16, 16),   # V = 16 (rows transposed in registers), a partial last block
    (96, 2, 12, 16),   # V = 16, three full blocks, K = 12
    (70, 3, 16, 32),   # V = 32 (two 16 x 16 transposes per 16 rows), a partial last block
    (33, 2, 8, 48),    # V = 48, K = 8
    (37, 5, 16, 9),    # odd rows, V = 9 (a 3x3 patch)
    (64, 7, 8, 3),     # K = 8, odd V, D = 21
    (100, 3, 7, 4),    # K = 7 (no group of 4 or 2 centroids)
])
def test_random_inputs(rows, codebooks, centroids, sub_len):
    rng = np.random.default_rng(rows)
    cents = rng.standard_normal((codebooks, centroids, sub_len)).astype(np.float32)
    x = rng.standard_normal((rows, codebooks * sub_len)).astype(np.float32)
    codes = run_encode(x, cents)
    assert_codes_nearest(x, cents, codes)
    reference = pq_encode_reference(x, cents)
    assert (codes != reference).mean() < 0.01  # only near-ties may differ (an FMA rounds once)


@pytest.mark.parametrize("rows, codebooks, threads", [(64, 24, 2), (1, 7, 3), (100, 5, 4), (45, 3, 8)])
def test_codebook_ranges_for_threads_give_the_same_codes(rows, codebooks, threads):
    """Fewer row blocks than threads: each block's codebooks split into ranges (uneven where C does not divide;
    more threads than codebooks: one codebook a task), the codes unchanged."""
    rng = np.random.default_rng(codebooks)
    cents = rng.standard_normal((codebooks, 16, 16)).astype(np.float32)
    x = rng.standard_normal((rows, codebooks * 16)).astype(np.float32)
    np.testing.assert_array_equal(run_encode(x, cents, lanes=64, threads=threads), pq_encode_reference(x, cents))


def test_threads_must_be_positive():
    with pytest.raises(ValueError, match="threads must be a positive int"):
        pq_encode_func(LookupLayout(8, 2, 16, 1, 32), 4, threads=0)


@pytest.mark.parametrize("sub_len", [4, 16, 32])  # 16, 32: the in-register transpose path
def test_edge_values_follow_the_reference(sub_len):
    """NaN and +-inf sub-vectors get code 0; huge, tiny (subnormal) and zero inputs pick the nearest centroid."""
    rng = np.random.default_rng(5)
    cents = rng.standard_normal((4, 16, sub_len)).astype(np.float32)
    x = rng.standard_normal((8, 4 * sub_len)).astype(np.float32)
    x[0, 0] = np.nan
    x[1, sub_len + 1] = np.inf
    x[2, 2 * sub_len + 2] = -np.inf
    x[3] = 1e30
    x[4] = -1e30
    x[5] = 1e-40
    x[6] = 0
    codes = run_encode(x, cents)
    np.testing.assert_array_equal(codes, pq_encode_reference(x, cents))
    assert codes[0, 0] == codes[1, 1] == codes[2, 2] == 0


def test_an_offset_common_to_rows_and_centroids_does_not_cancel():
    """Rows and centroids 1,000 away from the origin, 1 apart: the codes are float64's nearest but for near-ties,
    where the uncentered expanded form `||c||^2 - 2 x . c` in float32 (shown alongside) flips many."""
    rng = np.random.default_rng(8)
    cents = (1000 + rng.standard_normal((6, 16, 16))).astype(np.float32)
    x = (1000 + rng.standard_normal((256, 6 * 16))).astype(np.float32)
    codes = run_encode(x, cents)
    subs = x.reshape(-1, 6, 1, 16).astype(np.float64)
    dist = ((subs - cents[None].astype(np.float64)) ** 2).sum(-1)  # (N, C, K)
    gap = np.take_along_axis(dist, codes[..., None], -1)[..., 0] - dist.min(-1)
    assert np.all(gap <= 1e-3)
    norms = (cents * cents).sum(-1)  # float32, uncentered
    uncentered = (norms[None] - 2 * np.einsum("ncv,ckv->nck", x.reshape(-1, 6, 16), cents)).argmin(-1)
    assert (uncentered != dist.argmin(-1)).mean() > 0.05


@pytest.mark.parametrize("sub_len", [8, 16])
def test_matches_the_pytorch_reference(sub_len):
    torch = pytest.importorskip("torch")
    from tvm_lut.pq.reference import encode

    rng = np.random.default_rng(6)
    cents = rng.standard_normal((6, 16, sub_len)).astype(np.float32)
    x = rng.standard_normal((45, 6 * sub_len)).astype(np.float32)
    x[3, :sub_len] = np.nan
    x[4, sub_len:2 * sub_len] = np.inf
    codes = run_encode(x, cents)
    reference = encode(torch.from_numpy(x), torch.from_numpy(cents)).numpy()
    assert (codes != reference).mean() < 0.01
    assert codes[3, 0] == reference[3, 0] == 0 and codes[4, 1] == reference[4, 1] == 0


def _im2col(image, source: Im2col):
    """NumPy im2col in the weight's (I, kh, kw) order: (B * H' * W', I * kh * kw)."""
    (kh, kw), (sh, sw), (dh, dw) = source.kernel, source.stride, source.dilation
    top, left, bottom, right = source.padding
    padded = np.pad(image, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h, out_w = source.output_hw
    rows = []
    for b in range(image.shape[0]):
        for oh in range(out_h):
            for ow in range(out_w):
                patch = padded[b, :, oh * sh:oh * sh + dh * (kh - 1) + 1:dh, ow * sw:ow * sw + dw * (kw - 1) + 1:dw]
                rows.append(patch.reshape(-1))
    return np.stack(rows)


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", [
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 4, 9, 9), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1)),
    ((1, 2, 8, 8), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
    ((1, 8, 5, 5), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),  # 1x1: a linear over channels
])
def test_im2col_rows_are_read_from_the_nchw_input(shape, kernel, stride, padding, dilation):
    rng = np.random.default_rng(7)
    image = rng.standard_normal(shape).astype(np.float32)
    source = Im2col(shape, kernel, stride, padding, dilation)
    sub_len = kernel[0] * kernel[1] if kernel != (1, 1) else 4
    cents = rng.standard_normal((source.features // sub_len, 16, sub_len)).astype(np.float32)
    codes = run_encode(image, cents, source=source)
    rows = _im2col(image, source)
    assert rows.shape == (source.rows, source.features)
    assert_codes_nearest(rows, cents, codes)


def test_misuse_is_rejected():
    layout = LookupLayout(8, 4, 16, 8, 32)
    with pytest.raises(ValueError, match="positive int"):
        pq_encode_func(layout, 0)
    with pytest.raises(ValueError, match="the layout needs"):
        pq_encode_func(layout, 4, DenseRows(8, 12))
    with pytest.raises(ValueError, match=r"centroids must be \(C, K, V\)"):
        pack_centroids(np.zeros((3, 16, 4), np.float32), layout)
    with pytest.raises(ValueError, match="NaN or inf"):
        pack_centroids(np.full((4, 16, 4), np.inf, np.float32), layout)
