"""PyTorch reference of PQ inference: the ground truth for the compiled LUT-NN kernels.

Exactly the semantics of `PQTable`: hard nearest-centroid codes (squared distance in float64, ties -> the lowest
k, a NaN distance never wins, so a row of NaN or a sub-vector whose distances are all inf gets code 0), int8
table rows summed exactly in integers, then `scale * sum + bias` (both per output) in float32. Slow and plain on purpose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tvm_lut.pq.table import PQTable

_CHUNK_ELEMENTS = 1 << 22  # rows are encoded in chunks so the (rows, C, K, V) difference stays small


def encode(rows: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Codes (N, C) int64 of rows (N, C*V) against centroids (C, K, V)."""
    num_codebooks, num_centroids, sub_len = centroids.shape
    if rows.ndim != 2 or rows.shape[1] != num_codebooks * sub_len:
        raise ValueError(f"rows must be (N, {num_codebooks * sub_len}), got {tuple(rows.shape)}")
    subs = rows.to(torch.float64).reshape(-1, num_codebooks, 1, sub_len)
    cents = centroids.to(torch.float64).unsqueeze(0)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, num_codebooks * num_centroids * sub_len))
    codes = []
    for start in range(0, subs.shape[0], chunk):
        dist = ((subs[start:start + chunk] - cents) ** 2).sum(-1)
        dist = torch.nan_to_num(dist, nan=float("inf"))
        # argmin of a row of equal values (all inf included) is its first index: ties go to the lowest k.
        codes.append(dist.argmin(-1))
    if not codes:
        return torch.zeros((0, num_codebooks), dtype=torch.int64)
    return torch.cat(codes)


def accumulate(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Exact integer sum over codebooks `sum_c table[c, codes[:, c], :]`: (N, M) int64 (fits int32 by design)."""
    num_codebooks = table.shape[0]
    gathered = table.to(torch.int64)[torch.arange(num_codebooks), codes]  # (N, C, M)
    return gathered.sum(dim=1)


def pq_rows(rows: torch.Tensor, entry: PQTable) -> torch.Tensor:
    """PQ inference of rows (N, D) -> (N, M) float32."""
    codes = encode(rows, torch.from_numpy(entry.centroids))
    acc = accumulate(codes, torch.from_numpy(entry.table))
    out = acc.to(torch.float64) * torch.from_numpy(entry.scale).to(torch.float64)
    if entry.bias is not None:
        out = out + torch.from_numpy(entry.bias).to(torch.float64)
    return out.to(torch.float32)


def im2col(x: torch.Tensor, kernel_size, stride, padding, dilation) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, I, H, W) -> rows (N * H' * W', I*kh*kw) in the conv weight's (I, kh, kw) order, and (H', W')."""
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    out_hw = tuple((size + 2 * pad - dil * (k - 1) - 1) // st + 1
                   for size, pad, dil, k, st in zip(x.shape[2:], padding, dilation, kernel_size, stride))
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]), out_hw


def rows_to_image(out: torch.Tensor, batch: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """Rows (N * H' * W', M) of a conv computed over im2col -> (N, M, H', W')."""
    return out.reshape(batch, out_hw[0] * out_hw[1], -1).transpose(1, 2).reshape(batch, -1, *out_hw)


def pq_forward(x: torch.Tensor, entry: PQTable) -> torch.Tensor:
    """The replaced layer's output: linear x (..., D) -> (..., M); conv2d x (N, I, H, W) -> (N, M, H', W')."""
    if entry.layer == "linear":
        if x.shape[-1] != entry.D:
            raise ValueError(f"linear input must end in {entry.D} features, got {tuple(x.shape)}")
        return pq_rows(x.reshape(-1, entry.D), entry).reshape(*x.shape[:-1], entry.M)
    if x.ndim != 4 or x.shape[1] != entry.in_channels:
        raise ValueError(f"conv input must be (N, {entry.in_channels}, H, W), got {tuple(x.shape)}")
    rows, out_hw = im2col(x, entry.kernel_size, entry.stride, entry.padding, entry.dilation)
    return rows_to_image(pq_rows(rows, entry), x.shape[0], out_hw)
