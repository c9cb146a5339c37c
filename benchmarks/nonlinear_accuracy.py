"""NN-LUT accuracy on a real model: MiniLM-L6 on held-out tweets, FP32 vs every GELU / Softmax / LayerNorm on
lookup tables learned with calibrated ranges (`tvm_lut.lut_accuracy`).

    python -m benchmarks.nonlinear_accuracy [--n-test 1000] [--n-train 2000] [--entries 16] [--json PATH]

Prints PyTorch FP32, TVM exact (the sanity check of the import and schedules) and TVM LUT side by side: accuracy
with one shared sentiment head, cosine of the embeddings to FP32, latency per batch (median of `--repeat`) and
its ratio to TVM exact, the per-op replacement counts of the pass report, and the tables' calibrated ranges.
Exits with status 1 when a target is missed (accuracy drop <= 0.3 points, mean cosine >= 0.999).
"""

import argparse
import sys

from benchmarks.timing import add_common_arguments, write_json
from tvm_lut.lut_accuracy import ExperimentConfig, run_experiment


def main(argv=None) -> int:
    defaults = ExperimentConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-test", type=int, default=defaults.n_test, help="held-out tweets (at most 2000)")
    parser.add_argument("--n-train", type=int, default=defaults.n_train, help="training tweets for the head")
    parser.add_argument("--n-calib", type=int, default=defaults.n_calib, help="calibration tweets for the ranges")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--entries", type=int, default=defaults.entries, help="segments per table")
    add_common_arguments(parser, repeat=defaults.latency_repeats)
    args = parser.parse_args(argv)

    config = ExperimentConfig(n_test=args.n_test, n_train=args.n_train, n_calib=args.n_calib,
                              batch_size=args.batch_size, entries=args.entries, latency_repeats=args.repeat)
    result = run_experiment(config)
    print(result.summary())
    write_json(args.json, result.to_dict())
    return 0 if result.meets_targets else 1


if __name__ == "__main__":
    sys.exit(main())
