"""`tvm-lut demo`: NN-LUT end to end on MiniLM-L6 and real tweets (the experiment of `tvm_lut.lut_accuracy`).

Learns the GELU / exp / reciprocal / rsqrt tables with ranges calibrated on real tweets, compiles the encoder
with and without the `LUTNonlinear` pass, evaluates both (and PyTorch) on held-out tweets with one sentiment
head, and prints accuracy, latency, cosine, and what was replaced and kept exact.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tvm_lut.lut_accuracy import ExperimentConfig

    defaults = ExperimentConfig()
    parser.add_argument("--n-test", type=int, default=defaults.n_test,
                        help=f"held-out tweets to evaluate on (default {defaults.n_test}, at most 2000)")
    parser.add_argument("--n-train", type=int, default=defaults.n_train,
                        help=f"training tweets for the sentiment head (default {defaults.n_train})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"tweets per compiled batch (default {defaults.batch_size})")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the full result to PATH as JSON")


def run(args: argparse.Namespace) -> int:
    from tvm_lut.lut_accuracy import ExperimentConfig, run_experiment

    config = ExperimentConfig(n_test=args.n_test, n_train=args.n_train, batch_size=args.batch_size)
    result = run_experiment(config)
    print(result.summary())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
