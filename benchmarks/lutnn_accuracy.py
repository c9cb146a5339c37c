"""LUT-NN accuracy on real models and data: FP32 vs PQ after k-means vs PQ after centroid learning.

    python -m benchmarks.lutnn_accuracy [--models cnn minilm] [--V 4 8 16 32] [--json PATH]

- CNN: `FashionCNN` trained here on the Fashion-MNIST training split; every 3x3 conv (V=9), the 1x1 conv (V=4)
  and both linears (`--cnn-V`) PQ with K=16. Accuracy on the 10,000 test images.
- MiniLM: all-MiniLM-L6-v2 (frozen) + a logistic-regression head trained on FP32 embeddings of training tweets
  (`tvm_lut.sentiment.train_head`, folded into an `nn.Linear`); every Linear of the encoder PQ with K=16 and
  V in `--V`; the head stays exact. k-means on the calibration split, centroid learning on training tweets
  after those used for the head, accuracy on the first `--test-size` tweets of the held-out test split.

Held-out test data is never used for learning. Reported per run: accuracies, int8 table bytes (+ centroid
bytes) against the FP32 weight bytes they replace, and wall times. One thread by default: on a shared machine
more threads than free cores make torch far slower.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

import torch

from benchmarks.timing import format_table, write_json
from tvm_lut.pq.calibrate import init_centroids
from tvm_lut.pq.config import PQConfig
from tvm_lut.pq.swap import pq_layers, quantize_
from tvm_lut.pq.tasks import accuracy, cnn_task, minilm_task
from tvm_lut.pq.train import train_centroids

COLUMNS = ["model", "setting", "fp32_acc", "kmeans_acc", "learned_acc", "drop_points", "table_kb",
           "fp32_weight_kb", "compression", "kmeans_s", "learn_s", "final_temperature", "targets"]
# The targets: accuracy drop (points) after learning, and table compression at V=16.
MAX_DROP = {"cnn": 1.0, "minilm": 1.5}
MIN_COMPRESSION_AT_V16 = 8.0


def target_verdict(row: dict) -> str:
    """PASS/FAIL against the targets that apply to this row ("" when none does)."""
    verdicts = []
    if row["model"] == "cnn" or row["config"]["V"] == 8:
        limit = MAX_DROP[row["model"]]
        verdicts.append(f"drop<={limit}:{'PASS' if row['drop_points'] <= limit else 'FAIL'}")
    if row["model"] == "minilm" and row["config"]["V"] == 16:
        ok = row["compression"] >= MIN_COMPRESSION_AT_V16
        verdicts.append(f"compression>={MIN_COMPRESSION_AT_V16:g}x:{'PASS' if ok else 'FAIL'}")
    return " ".join(verdicts)


def table_bytes(model) -> tuple[int, int, int]:
    """(int8 table bytes, fp32 centroid bytes, fp32 bytes of the weights they replace) over the PQ layers."""
    layers = pq_layers(model).values()
    tables = sum(layer.C * layer.K * layer.weight.shape[0] for layer in layers)
    centroids = sum(layer.centroids.numel() * 4 for layer in layers)
    weights = sum(layer.weight.numel() * 4 for layer in layers)
    return tables, centroids, weights


def pq_run(name: str, setting: str, task, config, fp32_acc: float, progress: bool) -> dict:
    """Swap, k-means, evaluate, learn, evaluate: one row of the results."""
    model, calib, learn, test = task.model, task.calib, task.learn, task.test
    student = copy.deepcopy(model)
    report = quantize_(student, config)
    start = time.perf_counter()
    init_centroids(student, calib, config, progress=progress)
    kmeans_s = time.perf_counter() - start
    kmeans_acc = accuracy(student, test)
    start = time.perf_counter()
    history = train_centroids(student, model, learn, config, progress=progress)
    learn_s = time.perf_counter() - start
    learned_acc = accuracy(student, test)
    tables, centroids, weights = table_bytes(student)
    temperatures = [values[-1] for values in history.temperature.values()]
    return {
        "model": name, "setting": setting, "fp32_acc": fp32_acc, "kmeans_acc": kmeans_acc,
        "learned_acc": learned_acc, "drop_points": 100 * (fp32_acc - learned_acc),
        "table_kb": tables / 1024, "centroid_kb": centroids / 1024, "fp32_weight_kb": weights / 1024,
        "compression": weights / tables, "kmeans_s": kmeans_s, "learn_s": learn_s,
        "final_temperature": float(np.mean(temperatures)) if temperatures else None,
        "replaced": report.replaced, "kept_exact": report.kept, "config": json.loads(config.to_json()),
        "loss": history.loss, "temperature": history.temperature,
    }


def cnn_runs(args) -> list[dict]:
    task = cnn_task(args.cnn_learn_size, train_epochs=args.cnn_train_epochs, weights=args.cnn_weights,
                    progress=args.progress)
    config = PQConfig(V=args.cnn_V, epochs=args.cnn_epochs, lr=args.cnn_lr, trainable=args.cnn_trainable,
                      weight_lr=args.cnn_weight_lr, exclude=tuple(args.cnn_exclude))
    setting = (f"conv V=9/4, linear V={args.cnn_V}, train {args.cnn_trainable}, {args.cnn_epochs} ep"
               + (f", exact: {' '.join(args.cnn_exclude)}" if args.cnn_exclude else ""))
    return [pq_run("cnn", setting, task, config, accuracy(task.model, task.test), args.progress)]


def minilm_runs(args):
    task = minilm_task(args.head_size, args.calib_size, args.learn_size, args.test_size, args.batch_size,
                       progress=args.progress)
    fp32 = accuracy(task.model, task.test)
    for sub_len in args.V:  # a generator: each row is reported (and saved) as soon as it is done
        config = PQConfig(V=sub_len, include=("encoder.*",), epochs=args.epochs, lr=args.lr,
                          trainable=args.trainable, weight_lr=args.weight_lr,
                          feature_distill=tuple(args.feature_distill), feature_weight=args.feature_weight,
                          lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps)
        yield pq_run("minilm", f"V={sub_len}", task, config, fp32, args.progress)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "minilm"], choices=["cnn", "minilm"])
    parser.add_argument("--V", nargs="+", type=int, default=[8, 16, 32, 4], help="MiniLM sub-vector lengths")
    parser.add_argument("--test-size", type=int, default=1000, help="held-out test tweets")
    parser.add_argument("--head-size", type=int, default=1500, help="training tweets for the FP32 head")
    parser.add_argument("--calib-size", type=int, default=256, help="calibration tweets for k-means")
    parser.add_argument("--learn-size", type=int, default=4096, help="training tweets for centroid learning")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3, help="centroid learning rate (MiniLM)")
    parser.add_argument("--trainable", default="centroids", choices=["centroids", "all"],
                        help="what centroid learning trains in MiniLM (all: the encoder's and head's weights too)")
    parser.add_argument("--weight-lr", type=float, default=1e-4, help="learning rate of the non-PQ weights (all)")
    parser.add_argument("--feature-distill", nargs="*", default=[], metavar="MODULE",
                        help="modules (globs) whose outputs the PQ model matches to the FP32 model's (MiniLM)")
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"])
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--cnn-V", type=int, default=16, help="sub-vector length of the CNN's linears")
    parser.add_argument("--cnn-train-epochs", type=int, default=2)
    parser.add_argument("--cnn-weights", type=Path, help="FP32 CNN weights (safetensors) instead of training it")
    parser.add_argument("--cnn-learn-size", type=int, default=20480)
    parser.add_argument("--cnn-epochs", type=int, default=1)
    parser.add_argument("--cnn-lr", type=float, default=1e-3)
    parser.add_argument("--cnn-exclude", nargs="*", default=[], metavar="LAYER",
                        help="CNN layers to keep exact (e.g. conv1: one grayscale 3x3 patch is a single codebook)")
    parser.add_argument("--cnn-trainable", default="all", choices=["centroids", "all"],
                        help="what centroid learning trains in the CNN (all: weights too)")
    parser.add_argument("--cnn-weight-lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to PATH as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for name in args.models:
        runs = cnn_runs(args) if name == "cnn" else minilm_runs(args)
        for row in runs:
            row["targets"] = target_verdict(row)
            rows.append(row)
            print(format_table([row], COLUMNS), flush=True)
            settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            write_json(args.json, {"settings": settings, "runs": rows})
    print("\n" + format_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
