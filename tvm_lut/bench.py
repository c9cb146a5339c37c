"""`tvm-lut bench NAME [ARGS ...]`: run one of the project's benchmarks by name.

The benchmarks are products of the source tree (`benchmarks/<NAME>.py`, each with `main(argv)`), not library code,
so this command needs the checkout the README installs in editable mode; `python -m benchmarks.<NAME>` is the same.
"""

import argparse
import importlib
import sys
from pathlib import Path

BENCHMARKS = {
    "nonlinear": "NN-LUT kernels vs the exact op, FastMath and PyTorch",
    "nonlinear_accuracy": "MiniLM-L6 on held-out tweets, FP32 vs every GELU/Softmax/LayerNorm on LUTs",
    "lutnn_accuracy": "LUT-NN accuracy: FP32, k-means only and learned centroids, per V",
    "pq_dense": "PQ encode + lookup vs PyTorch, ONNX Runtime fp32/int8 and TVM dense",
    "pq_compiled_accuracy": "MiniLM-L6 with learned PQ tables on tweets: PyTorch PQ vs LUTDense compiled",
    "pq_calibration_accuracy": "MiniLM-L6 with PQ tables fitted from calibration tweets alone: accuracy vs FP32",
    "matmul_rule": "the matmul schedule rule's GFLOPS vs PyTorch",
    "parallel_launch": "where a parallel loop starts to pay: serial vs parallel elementwise add, per size",
    "end_to_end": "whole models: PyTorch, ONNX Runtime, stock TVM, our schedules, tuning, LUT passes",
    "autotune": "the autotuned CNN vs the exact build, hand-picked LUT-NN and ONNX Runtime fp32; proxies vs drops",
    "device": "whole models built for --target, run on an RPC tracker's device: latency there, outputs vs the host",
    "zoo": "common architectures (ResNet, MobileNets, ConvNeXt, ViT, Swin, BERT, ...): our rules vs ONNX Runtime",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tvm_lut.target_args import add_target_arguments

    add_target_arguments(parser, rpc=True)  # handed on to the benchmark (`tvm-lut bench --target aarch64 ... device`)
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (try `--help`)")


def run(args) -> int:
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "benchmarks" / f"{args.name}.py").is_file():
        raise SystemExit(f"tvm-lut bench needs the source checkout (benchmarks/ beside tvm_lut/); not found in {checkout}")
    sys.path.insert(0, str(checkout))
    forwarded = [f"--target={args.target}"] if args.target != "host" else []
    forwarded += [f"--rpc-tracker={args.rpc_tracker}"] if args.rpc_tracker else []
    forwarded += [f"--rpc-key={args.rpc_key}"] if args.rpc_key else []
    return importlib.import_module(f"benchmarks.{args.name}").main(forwarded + args.args)
