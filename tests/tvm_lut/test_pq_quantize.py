"""int8 PQ tables with a scale per output column: round trip error, and no int16/int32 overflow whatever the input."""

import numpy as np
import pytest
import torch

from tvm_lut.pq.quantize import INT16_BLOCK, accumulator_bound, overflow_safe_scale, quantize_table
from tvm_lut.pq.reference import accumulate, encode
from tvm_lut.pq.table import PQTable


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 16, 5), (40, 16, 7)])
def test_round_trip_error_is_half_a_step(shape):
    table = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3
    q, scale = quantize_table(table)
    assert q.dtype == np.int8 and q.min() >= -127 and scale.shape == (shape[2],) and scale.dtype == np.float32
    assert (np.abs(q).max(axis=(0, 1)) == 127).all()
    assert np.all(np.abs(q.astype(np.float32) * scale - table) <= scale / 2 * (1 + 1e-6))


def test_each_column_gets_its_own_scale():
    """An outlier column (MiniLM's FFN outputs: 325x the median) no longer rounds the other columns to 0."""
    table = np.random.default_rng(1).standard_normal((48, 16, 4)).astype(np.float32)
    table[..., 0] *= 325
    q, scale = quantize_table(table)
    np.testing.assert_allclose(scale[0] / scale[1:], 325, rtol=0.3)
    assert (q[..., 1:] != 0).mean() > 0.9


def test_zero_and_empty_tables():
    q, scale = quantize_table(np.zeros((2, 4, 3)))
    assert (scale == 1.0).all() and not q.any()
    q, scale = quantize_table(np.zeros((0, 16, 3)))
    assert q.shape == (0, 16, 3) and (scale == 1.0).all()
    table = np.zeros((2, 4, 2), np.float32)
    table[..., 1] = 1e-30  # tiny, not zero: its own scale, not 1.0
    q, scale = quantize_table(table)
    assert scale[0] == 1.0 and 0 < scale[1] < 1e-30 and np.abs(q[..., 1]).max() == 127


def test_wide_blocks_raise_the_scale_so_int16_sums_fit():
    table = np.full((1024, 2, 3), 5.0, np.float32)
    q, scale = quantize_table(table, block=1024)
    assert (scale > 5.0 / 127).all()
    assert accumulator_bound(q, 1024) <= np.iinfo(np.int16).max


@pytest.mark.parametrize("magnitude", [1e-30, 1.0, 1e30])
def test_no_overflow_at_extreme_activations(magnitude):
    """Huge, tiny, inf and NaN inputs only pick codes; every int16 block and the int32 total stay in range."""
    rng = np.random.default_rng(1)
    num_codebooks, sub_len = 2 * INT16_BLOCK + 3, 2
    weight = rng.standard_normal((4, num_codebooks * sub_len)).astype(np.float32) * 1e3
    entry = PQTable.from_weight(rng.standard_normal((num_codebooks, 16, sub_len)), weight)
    rows = torch.from_numpy(rng.standard_normal((64, num_codebooks * sub_len)) * magnitude)
    rows[0], rows[1, :7], rows[2, ::3] = float("inf"), float("-inf"), float("nan")
    codes = encode(rows, torch.from_numpy(entry.centroids))
    # adversarial codes: each codebook picks its largest entry for output 0
    codes[3] = torch.from_numpy(entry.table[:, :, 0].argmax(1))
    gathered = torch.from_numpy(entry.table).to(torch.int64)[torch.arange(num_codebooks), codes]
    pad = (-num_codebooks) % INT16_BLOCK
    blocks = torch.nn.functional.pad(gathered, (0, 0, 0, pad)).reshape(64, -1, INT16_BLOCK, 4).sum(2)
    assert blocks.abs().max() <= np.iinfo(np.int16).max
    total = accumulate(codes, torch.from_numpy(entry.table))
    assert total.abs().max() <= np.iinfo(np.int32).max
    assert blocks[3, :, 0].sum() == total[3, 0] == int(entry.table[:, :, 0].astype(np.int64).max(1).sum())


def test_bad_tables_raise():
    with pytest.raises(ValueError, match=r"\(C, K, M\)"):
        quantize_table(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="diverged"):
        quantize_table(np.array([[[np.inf]]]))
    with pytest.raises(ValueError, match="headroom"):
        overflow_safe_scale(np.ones((2, 2)), block=70000)
