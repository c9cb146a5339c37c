"""Real labelled data that installs offline, for accuracy measurements."""

from tvm_lut.datasets.tweets import TweetSet, TweetSplits, load_tweets

__all__ = ["TweetSet", "TweetSplits", "load_tweets"]
