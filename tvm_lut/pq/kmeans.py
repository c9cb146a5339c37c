"""Per-codebook k-means: the LUT-NN initialisation of centroids from real calibration activations.

All C codebooks are clustered at once as a batch: k-means++ seeding, then Lloyd iterations; a cluster that
loses all its points keeps its previous centroid. Deterministic for a given seed.
"""

from __future__ import annotations

import torch


def distance_scores(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(C, N, V) x (C, K, V) -> (C, N, K) `||c||^2 - 2 x.c`: the squared distance minus `||x||^2`.

    The dropped term is constant over k, so argmin and `softmax(-dist * t)` over k are unchanged; this is
    also the form the compiled kernel evaluates.
    """
    norms = (centroids * centroids).sum(-1)[:, None, :]
    return torch.baddbmm(norms, points, centroids.transpose(1, 2), alpha=-2)


def kmeans(points: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Centroids (C, k, V) float32 for points (C, N, V); fewer than k distinct points repeat some centroids."""
    if points.ndim != 3 or points.shape[1] == 0:
        raise ValueError(f"k-means needs points shaped (C, N, V) with N > 0, got {tuple(points.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError("calibration activations contain NaN or inf: the model diverges on the calibration data")
    points = points.to(torch.float32)
    num_codebooks, num_points, sub_len = points.shape
    gen = torch.Generator().manual_seed(seed)
    books = torch.arange(num_codebooks)

    first = torch.randint(num_points, (num_codebooks,), generator=gen)
    centroids = points[books, first].unsqueeze(1)
    closest = ((points - centroids) ** 2).sum(-1)
    for _ in range(1, k):
        weights = closest + (closest.sum(1, keepdim=True) == 0)  # all points already covered: pick uniformly
        pick = torch.multinomial(weights, 1, generator=gen).squeeze(1)
        new = points[books, pick].unsqueeze(1)
        centroids = torch.cat([centroids, new], dim=1)
        closest = torch.minimum(closest, ((points - new) ** 2).sum(-1))

    ones = torch.ones(num_codebooks, num_points)
    for _ in range(iters):
        assign = distance_scores(points, centroids).argmin(-1)
        sums = torch.zeros_like(centroids).scatter_add_(1, assign[..., None].expand(-1, -1, sub_len), points)
        counts = torch.zeros(num_codebooks, k).scatter_add_(1, assign, ones)
        updated = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids
