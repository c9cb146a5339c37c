"""The lookup-accumulate kernel against its NumPy reference: exact integer sums, per-output scale and bias in float32."""

import numpy as np
import pytest

from schedules.kernels.pq_lookup import INT16_BLOCK, LookupLayout, pack_table, pq_lookup_reference

from .pq_harness import INTRIN, run_lookup

pytestmark = pytest.mark.skipif(INTRIN is None, reason="this CPU has no AVX2 / AVX-512BW lookup intrinsic")


def _random(rng, rows, codebooks, centroids, outputs):
    codes = rng.integers(0, centroids, (rows, codebooks))
    table = rng.integers(-127, 128, (codebooks, centroids, outputs)).astype(np.int8)
    return codes, table


@pytest.mark.parametrize("rows, codebooks, centroids, outputs", [
    (1, 24, 16, 24),     # one token: 31 padded rows
    (37, 3, 16, 7),      # odd rows, prime M (an output tile of 7)
    (64, 5, 8, 16),      # K = 8
    (33, 2, 16, 9),
    (40, 300, 16, 8),    # two int16 blocks of 150 codebooks
])
@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("split_outputs", [False, True], ids=["row-blocks-outer", "output-tiles-outer"])
def test_integer_sums_are_exact(rows, codebooks, centroids, outputs, columns, split_outputs):
    codes, table = _random(np.random.default_rng(rows), rows, codebooks, centroids, outputs)
    got = run_lookup(codes, table, 1.0, None, columns=columns, split_outputs=split_outputs)
    np.testing.assert_array_equal(got, pq_lookup_reference(codes, table, 1.0, None))


@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("outputs", [24, 7])  # whole output tiles, one tile of 7
def test_per_output_scale_and_bias_match_the_reference(outputs, columns):
    rng = np.random.default_rng(1)
    codes, table = _random(rng, 50, 12, 16, outputs)
    bias = rng.standard_normal(outputs).astype(np.float32) * 10
    # one scale per output, over many magnitudes (an outlier column beside tiny ones)
    scale = (10.0 ** rng.uniform(-30, 3, outputs)).astype(np.float32)
    got = run_lookup(codes, table, scale, bias, columns=columns)
    np.testing.assert_allclose(got, pq_lookup_reference(codes, table, scale, bias), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("value", [127, -128])
def test_int16_blocks_at_their_limit_do_not_overflow(value):
    codebooks = 2 * INT16_BLOCK  # two full blocks: each sums to +-32512 / -32768, the total needs int32
    table = np.full((codebooks, 16, 8), value, np.int8)
    codes = np.random.default_rng(2).integers(0, 16, (32, codebooks))
    got = run_lookup(codes, table, 1.0, None)
    np.testing.assert_array_equal(got, np.full((32, 8), value * codebooks, np.float32))


@pytest.mark.parametrize("split_outputs", [False, True])
def test_zero_rows(split_outputs):
    codes, table = _random(np.random.default_rng(3), 0, 4, 16, 8)
    assert run_lookup(codes, table, 1.0, None, split_outputs=split_outputs).shape == (0, 8)


def test_misuse_is_rejected():
    with pytest.raises(ValueError, match="K = 32"):
        LookupLayout(8, 4, 32, 8, 32)
    with pytest.raises(ValueError, match="invalid PQ layer sizes"):
        LookupLayout(8, 0, 16, 8, 32)
    layout = LookupLayout(8, 4, 16, 8, 32)
    with pytest.raises(ValueError, match="table must be int8"):
        pack_table(np.zeros((4, 16, 8), np.int16), layout)
    from schedules.kernels.pq_lookup import pq_lookup_func

    with pytest.raises(ValueError, match="lanes"):
        pq_lookup_func(LookupLayout(8, 4, 16, 8, 16), INTRIN)


def test_kernels_are_marked_scheduled_so_rules_skip_them():
    from schedules.kernels.pq_encode import pq_encode_func
    from schedules.kernels.pq_lookup import pq_lookup_func

    layout = LookupLayout(8, 4, 16, 8, INTRIN.lanes)
    for func in (pq_lookup_func(layout, INTRIN), pq_encode_func(layout, 4)):
        assert func.attrs["tirx.is_scheduled"]


def test_lookups_say_how_threads_split_them():
    from schedules.kernels.pq_lookup import SPLIT_ATTR, pq_lookup_func

    layout = LookupLayout(8, 4, 16, 8, INTRIN.lanes)
    assert pq_lookup_func(layout, INTRIN).attrs[SPLIT_ATTR] == "rows"
    assert pq_lookup_func(layout, INTRIN, split_outputs=True).attrs[SPLIT_ATTR] == "outputs"
