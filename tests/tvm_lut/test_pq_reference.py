"""The PyTorch PQ reference against an explicit float computation of product quantization."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tvm_lut.pq.reference import encode, pq_forward
from tvm_lut.pq.table import PQTable

CONV = {"kernel_size": (3, 3), "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)}


def explicit_pq(rows: np.ndarray, entry: PQTable) -> np.ndarray:
    """Loop form: nearest centroid per sub-vector, then the dequantized table rows summed in float64."""
    out = np.zeros((rows.shape[0], entry.M))
    table = entry.table.astype(np.float64) * entry.scale
    for n, row in enumerate(rows.astype(np.float64)):
        for c in range(entry.C):
            sub = row[c * entry.V:(c + 1) * entry.V]
            dist = ((entry.centroids[c].astype(np.float64) - sub) ** 2).sum(1)
            out[n] += table[c, int(np.argmin(np.where(np.isnan(dist), np.inf, dist)))]
    return out + (0 if entry.bias is None else entry.bias)


@pytest.mark.parametrize("rows, codebooks, sub_len, out", [(7, 3, 4, 5), (1, 1, 1, 1), (33, 5, 3, 17)])
def test_linear_matches_explicit_pq(rows, codebooks, sub_len, out):
    rng = np.random.default_rng(rows)
    entry = PQTable.from_weight(rng.standard_normal((codebooks, 16, sub_len)),
                                rng.standard_normal((out, codebooks * sub_len)), rng.standard_normal(out))
    x = rng.standard_normal((rows, codebooks * sub_len)).astype(np.float32)
    y = pq_forward(torch.from_numpy(x), entry)
    assert y.dtype == torch.float32 and y.shape == (rows, out)
    np.testing.assert_allclose(y.numpy(), explicit_pq(x, entry), rtol=1e-6, atol=1e-5)


def test_batched_leading_dims_and_empty_input():
    rng = np.random.default_rng(3)
    entry = PQTable.from_weight(rng.standard_normal((2, 16, 3)), rng.standard_normal((4, 6)))
    x = torch.randn(2, 5, 6)
    np.testing.assert_allclose(pq_forward(x, entry).numpy().reshape(10, 4),
                               explicit_pq(x.numpy().reshape(10, 6), entry), rtol=1e-6, atol=1e-5)
    assert pq_forward(torch.zeros(0, 6), entry).shape == (0, 4)


def test_conv_matches_explicit_pq_over_im2col():
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((5, 2, 3, 3)).astype(np.float32)
    entry = PQTable.from_weight(rng.standard_normal((2, 16, 9)), weight, rng.standard_normal(5), **CONV)
    x = torch.randn(2, 2, 9, 8)
    y = pq_forward(x, entry)
    reference_shape = F.conv2d(x, torch.from_numpy(weight), **{k: v for k, v in CONV.items() if k != "kernel_size"}).shape
    assert y.shape == reference_shape
    cols = F.unfold(x, 3, dilation=CONV["dilation"], padding=CONV["padding"], stride=CONV["stride"])
    rows = cols.transpose(1, 2).reshape(-1, 18).numpy()
    expected = explicit_pq(rows, entry).reshape(2, -1, 5).transpose(0, 2, 1).reshape(y.shape)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-5)


def test_one_by_one_conv_is_a_linear_over_channels():
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((3, 8, 1, 1)).astype(np.float32)
    geometry = {"kernel_size": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1)}
    conv = PQTable.from_weight(rng.standard_normal((2, 16, 4)), weight, None, **geometry)
    linear = PQTable(conv.centroids, conv.table, conv.scale, None, {"shape": [3, 8], "sha256": ""})
    x = torch.randn(2, 8, 4, 5)
    np.testing.assert_array_equal(pq_forward(x, conv).numpy(),
                                  pq_forward(x.permute(0, 2, 3, 1), linear).permute(0, 3, 1, 2).numpy())


def test_edge_inputs_ties_nan_inf():
    centroids = torch.tensor([[[0.0], [1.0], [1.0], [3.0]]])
    rows = torch.tensor([[0.5], [1.0], [float("nan")], [float("inf")], [float("-inf")], [1e6], [-1e-30], [1e30]])
    # 0.5 ties k=0 and k=1 -> 0; 1.0 ties k=1 and k=2 -> 1; NaN and +-inf (all distances NaN/inf) -> 0;
    # large -> 3; 1e30 squares to 1e60, where every distance rounds to the same value: a tie -> 0
    assert encode(rows, centroids).flatten().tolist() == [0, 1, 0, 0, 0, 3, 0, 0]


def test_shape_misuse_raises():
    rng = np.random.default_rng(6)
    entry = PQTable.from_weight(rng.standard_normal((2, 16, 3)), rng.standard_normal((4, 6)))
    with pytest.raises(ValueError, match="end in 6 features"):
        pq_forward(torch.zeros(3, 5), entry)
    conv = PQTable.from_weight(rng.standard_normal((2, 16, 9)), rng.standard_normal((4, 2, 3, 3)), None,
                               kernel_size=(3, 3), stride=(1, 1), padding=(0, 0), dilation=(1, 1))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        pq_forward(torch.zeros(1, 3, 5, 5), conv)
