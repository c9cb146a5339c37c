"""Per-codebook k-means."""

import pytest
import torch

from tvm_lut.pq.kmeans import distance_scores, kmeans


def test_recovers_well_separated_clusters_per_codebook():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 4, 2, generator=gen) * 10
    labels = torch.randint(0, 4, (3, 400), generator=gen)
    points = centers.gather(1, labels[..., None].expand(-1, -1, 2)) + 0.01 * torch.randn(3, 400, 2, generator=gen)
    found = kmeans(points, 4, iters=20, seed=1)
    for book in range(3):
        dist = torch.cdist(found[book], centers[book])
        assert dist.min(1).values.max() < 0.1


def test_distance_scores_rank_like_squared_distances():
    points, cents = torch.randn(2, 50, 3), torch.randn(2, 5, 3)
    exact = ((points[:, :, None] - cents[:, None]) ** 2).sum(-1)
    scores = distance_scores(points, cents)
    torch.testing.assert_close(scores + (points ** 2).sum(-1, keepdim=True), exact, rtol=1e-5, atol=1e-5)


def test_fewer_points_than_centroids_and_identical_points():
    found = kmeans(torch.ones(1, 3, 2), 16, iters=3)
    assert found.shape == (1, 16, 2) and torch.equal(found, torch.ones(1, 16, 2))


def test_bad_points_raise():
    with pytest.raises(ValueError, match="N > 0"):
        kmeans(torch.zeros(2, 0, 3), 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        kmeans(torch.tensor([[[float("nan")]]]), 1)
