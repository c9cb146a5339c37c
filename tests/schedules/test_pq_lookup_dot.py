"""The AVX-512 VBMI + VNNI lookup (`vpermb` + `vpdpbusd`) and the encode writing its code layout, against the NumPy
references; where it applies (`dot_lookup_supported`) and where it falls back."""

import numpy as np
import pytest
import tvm

from schedules.kernels.pq_encode import pq_encode_reference
from schedules.kernels.pq_lookup import pq_lookup_reference
from schedules.kernels.pq_lookup_dot import DotLookupLayout, dot_lookup_supported, encode_lanes, pack_table_dot, \
    pq_lookup_dot_func, row_parts
from schedules.kernels.pwl import pwl_func
from schedules.kernels.reference import pwl_reference
from schedules.target import resolve_target

from .kernel_harness import GELU, RECIPROCAL, assert_matches, run_kernel
from .pq_harness import DOT_LOOKUP, run_encode, run_lookup_dot

needs_dot = pytest.mark.skipif(not DOT_LOOKUP, reason="this CPU has no AVX-512 VBMI + VNNI")


def _random(rng, rows, codebooks, centroids, outputs):
    codes = rng.integers(0, centroids, (rows, codebooks))
    table = rng.integers(-128, 128, (codebooks, centroids, outputs)).astype(np.int8)
    return codes, table


@needs_dot
@pytest.mark.parametrize("rows, codebooks, centroids, outputs", [
    (1, 24, 16, 16),     # one row: 15 rows of the group never stored
    (37, 5, 11, 32),     # odd rows, C not a multiple of 4 (padded codebooks), K = 11
    (64, 24, 16, 384),   # MiniLM's query layer at one sentence
    (48, 301, 16, 16),   # many codebooks: sums past int16
])
def test_integer_sums_are_exact(rows, codebooks, centroids, outputs):
    codes, table = _random(np.random.default_rng(rows), rows, codebooks, centroids, outputs)
    np.testing.assert_array_equal(run_lookup_dot(codes, table, 1.0, None),
                                  pq_lookup_reference(codes, table, 1.0, None))


@needs_dot
@pytest.mark.parametrize("rows, threads", [
    (512, 2),  # MiniLM 8x64 at two threads: 16 row groups a part
    (80, 2),   # 5 groups: parts of 3 and 2 (the short part sweeps first to last)
    (37, 3),   # 3 groups, the last partial, one a part
    (70, 4),   # 5 groups in 3 parts of 2, 2, 1 (an even part short: its sweep starts past the rows)
    (1, 2),    # one group: one part
    (0, 2),
])
@pytest.mark.parametrize("split_outputs", [False, True], ids=["row-parts", "output-tiles"])
def test_row_parts_write_every_row_once(rows, threads, split_outputs):
    """Each part's sweep (even parts last to first) covers its rows and no other: the sums of the one-part kernel;
    so do the output tiles split between threads. The test process runs TVM's pool at one thread, so the parts run
    in turn here (at three threads: `test_kernel_threads`)."""
    codes, table = _random(np.random.default_rng(rows + threads), rows, 9, 16, 48)
    np.testing.assert_array_equal(run_lookup_dot(codes, table, 1.0, None, threads=threads,
                                                 split_outputs=split_outputs),
                                  pq_lookup_reference(codes, table, 1.0, None))


def test_encode_lanes_give_every_thread_a_row_block():
    """Blocks of 64 rows while every thread gets one; else blocks of 32, so the encode splits by rows."""
    assert encode_lanes(512, 2) == encode_lanes(128, 2) == encode_lanes(64, 1) == 64
    assert encode_lanes(64, 2) == encode_lanes(127, 2) == encode_lanes(20, 1) == 32


def test_row_parts_split_the_groups_contiguously():
    assert row_parts(32, 2) == (2, 16)
    assert row_parts(5, 2) == (2, 3)
    assert row_parts(5, 4) == (3, 2)  # parts of 2, 2, 1: one thread of 4 has none
    assert row_parts(1, 8) == (1, 1)
    assert row_parts(0, 2) == (0, 1)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        row_parts(4, 0)


@needs_dot
@pytest.mark.parametrize("value", [127, -128])
def test_extreme_entries_do_not_overflow(value):
    codebooks = 1024
    table = np.full((codebooks, 16, 16), value, np.int8)
    codes = np.random.default_rng(2).integers(0, 16, (20, codebooks))
    np.testing.assert_array_equal(run_lookup_dot(codes, table, 1.0, None), np.full((20, 16), value * codebooks))


@needs_dot
def test_per_output_scale_and_bias_match_the_reference():
    rng = np.random.default_rng(1)
    codes, table = _random(rng, 50, 12, 16, 48)
    bias = rng.standard_normal(48).astype(np.float32) * 10
    scale = (10.0 ** rng.uniform(-30, 3, 48)).astype(np.float32)
    np.testing.assert_allclose(run_lookup_dot(codes, table, scale, bias),
                               pq_lookup_reference(codes, table, scale, bias), rtol=1e-6, atol=1e-6)


@needs_dot
def test_zero_rows():
    codes, table = _random(np.random.default_rng(3), 0, 4, 16, 16)
    assert run_lookup_dot(codes, table, 1.0, None).shape == (0, 16)


@needs_dot
@pytest.mark.parametrize("rows", [64, 37, 0])  # MiniLM's rows at one sentence, a partial row group, none
def test_an_activation_in_the_epilogue_is_the_table_kernel_on_the_lookup_bit_for_bit(rows):
    """GELU applied in the epilogue equals the lookup followed by the elementwise table kernel exactly, and the
    NumPy references within the kernels' tolerance; outputs of NaN, +-inf, huge and tiny magnitude included."""
    rng = np.random.default_rng(rows)
    codes, table = _random(rng, rows, 24, 16, 64)
    scale = rng.uniform(1e-4, 1e-2, 64).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    bias[:5] = [np.nan, np.inf, -np.inf, 3e38, -3e38]
    scale[5:8] = [1e-30, 1e30, 0.0]  # tiny, huge (overflows to +-inf with the sums), zero
    fused = run_lookup_dot(codes, table, scale, bias, activation=GELU)
    lookup = run_lookup_dot(codes, table, scale, bias)
    if rows:
        np.testing.assert_array_equal(fused, run_kernel(pwl_func(GELU, lookup.shape), lookup))
    assert_matches(fused, pwl_reference(GELU, pq_lookup_reference(codes, table, scale, bias)))
    assert fused.shape == (rows, 64)


def test_an_activation_needs_a_table_without_input_scaling():
    with pytest.raises(ValueError, match="scaling 'none'"):
        pq_lookup_dot_func(DotLookupLayout(16, 4, 16, 16, 32), activation=RECIPROCAL)


@needs_dot
@pytest.mark.parametrize("rows, sub_len, lanes", [(45, 16, 32), (70, 16, 64), (37, 4, 32), (70, 32, 64), (33, 48, 32)])
def test_encode_writes_the_dot_layout(rows, sub_len, lanes):
    """Same codes as the reference, NaN / +-inf sub-vectors code 0, huge, tiny and zero rows nearest."""
    rng = np.random.default_rng(rows)
    cents = rng.standard_normal((6, 16, sub_len)).astype(np.float32)
    x = rng.standard_normal((rows, 6 * sub_len)).astype(np.float32)
    x[0, 0], x[1, sub_len + 1], x[2, 2 * sub_len] = np.nan, np.inf, -np.inf
    x[3], x[4], x[5], x[6] = 1e30, -1e30, 1e-40, 0
    codes = run_encode(x, cents, lanes=lanes, dot=True)
    np.testing.assert_array_equal(codes, pq_encode_reference(x, cents))
    assert codes[0, 0] == codes[1, 1] == codes[2, 2] == 0


def test_only_targets_with_vbmi_and_vnni_and_whole_output_tiles_take_it():
    znver4 = tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})
    assert dot_lookup_supported(znver4, 384)
    assert not dot_lookup_supported(znver4, 24)  # M % 16
    for name in ("x86-64-v3", "x86-64-v4", "aarch64"):  # AVX2; AVX-512 without VBMI / VNNI; NEON
        assert not dot_lookup_supported(resolve_target(name), 384)


def test_misuse_is_rejected():
    with pytest.raises(ValueError, match="multiples of 16"):
        DotLookupLayout(8, 4, 16, 24, 32)
    with pytest.raises(ValueError, match="K = 32"):
        DotLookupLayout(8, 4, 32, 16, 32)
    with pytest.raises(ValueError, match="table must be int8"):
        pack_table_dot(np.zeros((4, 16, 16), np.int16), DotLookupLayout(8, 4, 16, 16, 32))
