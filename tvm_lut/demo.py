"""`tvm-lut demo`: the main job on MiniLM-L6 and real tweets (the experiment of `tvm_lut.lut_accuracy`).

Learns the NN-LUT tables (GELU / exp / reciprocal / rsqrt, ranges calibrated on real tweets) and fits LUT-NN (PQ)
tables from calibration tweets alone on the encoder's ONNX export; compiles the encoder exact, with NN-LUT, and
with NN-LUT + PQ; evaluates them with PyTorch and ONNX Runtime fp32 / int8 on held-out tweets, and prints
accuracy, cosine, latency and what was replaced and kept exact. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tvm_lut import model_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tvm_lut.lut_accuracy import ExperimentConfig

    defaults = ExperimentConfig()
    parser.add_argument("--n-test", type=int, default=defaults.n_test,
                        help=f"held-out tweets to evaluate on (default {defaults.n_test}, at most 2000)")
    parser.add_argument("--n-train", type=int, default=defaults.n_train,
                        help=f"training tweets for the sentiment heads (default {defaults.n_train})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"tweets per compiled batch (default {defaults.batch_size})")
    parser.add_argument("--V", type=int, default=defaults.pq_V, help=f"PQ sub-vector length (default {defaults.pq_V})")
    parser.add_argument("--independent", action="store_true", help="fit each PQ table on the exact model's "
                        "activations instead of sequentially (faster fit, farther from FP32: drop 4.4 vs 2.7 points)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the full result to PATH as JSON")
    model_spec.add_threads_argument(parser)
    model_spec.add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from schedules import host_target
    from tvm_lut.lut_accuracy import ExperimentConfig, run_experiment

    threads = model_spec.threads_from_args(args)
    torch.set_num_threads(threads)
    config = ExperimentConfig(n_test=args.n_test, n_train=args.n_train, batch_size=args.batch_size, pq_V=args.V,
                              pq_sequential=not args.independent)
    result = run_experiment(config, target=host_target(threads), progress=model_spec.progress_from_args(args))
    print(result.summary())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if result.meets_targets else 1
