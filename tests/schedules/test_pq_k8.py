"""K = 8 codebooks (what the autotuner chooses where it is fast enough): half the encode work, table rows 8..15
padded with zeros. The encode and lookup kernels against their NumPy references on edge inputs, on x86 and on the
aarch64 device (NEON `tbl`), and no code ever points into the padding."""

import numpy as np
import pytest

from schedules import rpc
from schedules.intrin.arm import NEON_LOOKUP
from schedules.kernels.pq_encode import Im2col, pq_encode_reference
from schedules.kernels.pq_lookup import LookupLayout, pq_lookup_func, pq_lookup_reference

from .pq_harness import INTRIN, build, run_encode, run_lookup
from .test_intrin_arm import _on_device, device  # noqa: F401 - the emulated aarch64 device fixture

K = 8


def _edge_rows(rng, rows, features):
    x = rng.standard_normal((rows, features)).astype(np.float32)
    x[0, :] = np.nan
    x[1, 0], x[2, 0], x[3, 0] = np.inf, -np.inf, 3e38
    x[4, :] = 1e-39  # subnormal
    x[5, :] = 0.0
    return x


def _assert_codes(x, centroids, codes):
    reference = pq_encode_reference(x, centroids)
    assert codes.max() < K and codes.min() >= 0  # never a padded table row
    assert codes[0].tolist() == [0] * codes.shape[1]  # NaN sub-vectors take code 0
    assert (codes != reference).mean() < 0.02  # near-ties may round apart by an FMA


x86 = pytest.mark.skipif(INTRIN is None, reason="this CPU has no AVX2 / AVX-512BW lookup intrinsic")


@x86
@pytest.mark.parametrize("rows, codebooks, sub_len", [(45, 9, 4), (1, 144, 4), (70, 3, 9)])
def test_encode_k8_matches_the_reference_on_edge_rows(rows, codebooks, sub_len):
    rng = np.random.default_rng(rows)
    centroids = rng.standard_normal((codebooks, K, sub_len)).astype(np.float32)
    x = _edge_rows(rng, max(rows, 6), codebooks * sub_len)
    _assert_codes(x, centroids, run_encode(x, centroids))


@x86
def test_encode_k8_reads_im2col_rows_of_a_conv():
    rng = np.random.default_rng(3)
    image = rng.standard_normal((1, 4, 7, 7)).astype(np.float32)
    source = Im2col(image.shape, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    centroids = rng.standard_normal((source.features // 9, K, 9)).astype(np.float32)
    codes = run_encode(image, centroids, source=source)
    padded = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)))
    rows = np.stack([padded[0, :, i:i + 3, j:j + 3].reshape(-1) for i in range(7) for j in range(7)])
    assert codes.max() < K
    assert (codes != pq_encode_reference(rows, centroids)).mean() < 0.02


@x86
@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
def test_lookup_k8_sums_exactly_at_the_int8_limits(columns):
    rng = np.random.default_rng(4)
    codes = rng.integers(0, K, (33, 40))
    table = rng.choice(np.array([-127, 127, 0, 1], np.int8), (40, K, 9))
    scale = (10.0 ** rng.uniform(-20, 3, 9)).astype(np.float32)
    bias = rng.standard_normal(9).astype(np.float32)
    got = run_lookup(codes, table, scale, bias, columns=columns)
    np.testing.assert_allclose(got, pq_lookup_reference(codes, table, scale, bias), rtol=1e-6, atol=1e-6)


def test_neon_k8_lookup_is_tensorized_with_tbl():
    func = pq_lookup_func(LookupLayout(40, 4, K, 8, NEON_LOOKUP.lanes), NEON_LOOKUP)
    asm = build(func, rpc.ARM_TARGET).mod.inspect_source("asm")
    assert any(line.split()[:1] == ["tbl"] for line in asm.splitlines())


@pytest.mark.arm
def test_k8_kernels_on_the_aarch64_device(device):
    rng = np.random.default_rng(5)
    codes = rng.integers(0, K, (37, 11))
    table = rng.integers(-127, 128, (11, K, 12)).astype(np.int8)
    got = run_lookup(codes, table, 1.0, None, intrin=NEON_LOOKUP, execute=_on_device(device))
    np.testing.assert_array_equal(got, pq_lookup_reference(codes, table, 1.0, None))
    centroids = rng.standard_normal((5, K, 9)).astype(np.float32)
    x = _edge_rows(rng, 21, 45)
    _assert_codes(x, centroids, run_encode(x, centroids, lanes=NEON_LOOKUP.lanes, execute=_on_device(device)))
