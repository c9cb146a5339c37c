"""The MiniLM task's head: a scikit-learn logistic regression folded into an `nn.Linear`, dead features at 0."""

import numpy as np
import pytest
import torch

from tvm_lut.pq.tasks import linear_from_logistic
from tvm_lut.sentiment import live_features, train_head


def embeddings_with_dead_features(n=200, seed=0):
    """Like MiniLM's sentence embeddings: informative features, and two that are ~0 (a LayerNorm gain of ~1e-9)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 2] = rng.normal(size=n) * 1e-33
    x[:, 4] = rng.normal(size=n) * 1e-9
    labels = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return x, labels


def test_live_features_drops_the_features_without_spread():
    x, _ = embeddings_with_dead_features()
    assert live_features(x).tolist() == [True, True, False, True, False, True]


def test_head_matches_the_pipeline_and_ignores_dead_features():
    x, labels = embeddings_with_dead_features()
    live = live_features(x)
    pipeline = train_head(x[:, live], labels)
    head = linear_from_logistic(pipeline, live)
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(x)), -1)[:, 1].numpy()
    np.testing.assert_allclose(probs, pipeline.predict_proba(x[:, live])[:, 1], rtol=1e-4, atol=1e-6)
    assert head.weight[:, ~live].abs().max() == 0
    # A step of 1e-4 in a dead feature (what exploded the logits of the unfiltered head) changes nothing.
    moved = x.copy()
    moved[:, [2, 4]] += 1e-4
    with torch.no_grad():
        assert torch.equal(head(torch.from_numpy(moved)), head(torch.from_numpy(x)))


def test_unfiltered_head_explodes_on_dead_features():
    x, labels = embeddings_with_dead_features()
    head = linear_from_logistic(train_head(x, labels))
    assert head.weight.abs().max() > 1e6


def test_head_mask_must_match_the_pipeline():
    x, labels = embeddings_with_dead_features()
    with pytest.raises(ValueError, match="the pipeline has 6 features, the mask selects 4"):
        linear_from_logistic(train_head(x, labels), live_features(x))
