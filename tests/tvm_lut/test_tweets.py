import numpy as np
import pandas as pd
import pytest

from tvm_lut.datasets import load_tweets
from tvm_lut.datasets.tweets import CALIBRATION_SIZE, TEST_SIZE


@pytest.fixture(scope="module")
def splits():
    return load_tweets()


def test_split_sizes_and_balance(splits):
    assert len(splits.test) == TEST_SIZE >= 1000
    assert len(splits.calibration) == CALIBRATION_SIZE
    assert len(splits.train) > 10_000
    for part in (splits.train, splits.calibration, splits.test):
        assert set(np.unique(part.labels)) == {0, 1}
        assert 0.2 < part.labels.mean() < 0.4  # about 30 % positive in the corpus


def test_splits_disjoint_and_deduplicated(splits):
    train, calib, test = (set(p.texts) for p in (splits.train, splits.calibration, splits.test))
    assert not (train & test or calib & test or train & calib)
    assert len(train) == len(splits.train)


def test_split_is_deterministic(splits):
    again = load_tweets()
    assert again.test.texts == splits.test.texts
    np.testing.assert_array_equal(again.train.labels, splits.train.labels)


def test_tokens(splits):
    ids, mask = splits.test.head(4).tokens(64)
    assert ids.shape == mask.shape == (4, 64)
    assert (ids[:, 0] == 101).all() and (mask.sum(1) > 2).all()


def test_head_misuse(splits):
    assert splits.test.head(None) is splits.test
    with pytest.raises(ValueError, match="asked for 5000 tweets, the set has 2000"):
        splits.test.head(5000)


def synthetic_corpus(path, n=3000):
    rows = [{"sentiment": "positive" if i % 3 == 0 else "negative", "confidence": 1.0, "text": f"tweet {i}"}
            for i in range(n)]
    rows += [{"sentiment": "neutral", "confidence": 1.0, "text": "neutral one"},
             {"sentiment": "positive", "confidence": 1.0, "text": "tweet 1"},  # conflicts with label negative
             {"sentiment": "negative", "confidence": 1.0, "text": "tweet 2"}]  # exact duplicate
    pd.DataFrame(rows).to_csv(path, index=False, encoding="latin-1")


def test_conflicting_labels_dropped_duplicates_merged(tmp_path):
    synthetic_corpus(tmp_path / "c.csv")
    splits = load_tweets(tmp_path / "c.csv")
    texts = splits.train.texts + splits.calibration.texts + splits.test.texts
    assert len(texts) == 2999 and "tweet 1" not in texts and "neutral one" not in texts


def test_corrupt_corpus_fails_loudly(tmp_path):
    pd.DataFrame({"sentiment": ["positive"], "body": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"missing columns \['text'\]"):
        load_tweets(tmp_path / "bad.csv")
    synthetic_corpus(tmp_path / "small.csv", n=100)
    with pytest.raises(ValueError, match="too few for the split"):
        load_tweets(tmp_path / "small.csv")
