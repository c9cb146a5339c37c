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

from benchmarks.timing import format_table, write_json

COLUMNS = ["model", "setting", "fp32_acc", "kmeans_acc", "learned_acc", "drop_points", "table_kb",
           "fp32_weight_kb", "compression", "kmeans_s", "learn_s", "final_temperature"]


def accuracy(model, batches) -> float:
    import torch

    correct = total = 0
    with torch.no_grad():
        for inputs, labels in batches:
            correct += int((model(*inputs).argmax(-1) == labels).sum())
            total += len(labels)
    return correct / total


def table_bytes(model) -> tuple[int, int, int]:
    """(int8 table bytes, fp32 centroid bytes, fp32 bytes of the weights they replace) over the PQ layers."""
    from tvm_lut.pq.swap import pq_layers

    layers = pq_layers(model).values()
    tables = sum(layer.C * layer.K * layer.weight.shape[0] for layer in layers)
    centroids = sum(layer.centroids.numel() * 4 for layer in layers)
    weights = sum(layer.weight.numel() * 4 for layer in layers)
    return tables, centroids, weights


def pq_run(name: str, setting: str, model, config, calib, learn, test, fp32_acc: float, progress: bool) -> dict:
    """Swap, k-means, evaluate, learn, evaluate: one row of the results."""
    from tvm_lut.pq.calibrate import init_centroids
    from tvm_lut.pq.swap import quantize_
    from tvm_lut.pq.train import train_centroids

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


# -- CNN on Fashion-MNIST ------------------------------------------------------------------------------------
def cnn_runs(args) -> list[dict]:
    import torch

    from tvm_lut.datasets.fashion_mnist import load_fashion_mnist
    from tvm_lut.models.cnn import train_cnn
    from tvm_lut.pq.config import PQConfig

    images, labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    model = train_cnn(images, labels, epochs=args.cnn_train_epochs, progress=args.progress)

    def batches(x, y, size):
        return [((torch.from_numpy(x[i:i + size]),), torch.from_numpy(y[i:i + size])) for i in range(0, len(x), size)]

    test = batches(test_images, test_labels, 1000)
    calib = batches(images[:2048], labels[:2048], 256)
    learn = batches(images[: args.cnn_learn_size], labels[: args.cnn_learn_size], 128)
    fp32 = accuracy(model, test)
    config = PQConfig(V=args.cnn_V, epochs=args.cnn_epochs, lr=args.cnn_lr, trainable=args.cnn_trainable)
    return [pq_run("cnn", f"conv V=9/4, linear V={args.cnn_V}, train {args.cnn_trainable}", model, config, calib, learn, test, fp32, args.progress)]


# -- MiniLM on tweets ----------------------------------------------------------------------------------------
def length_batches(tweets, size: int, length: int = 64) -> list:
    """Batches of tweets of similar length, each trimmed to its longest (less padding, same results)."""
    import torch

    ids, mask = tweets.tokens(length)
    order = np.argsort(mask.sum(1), kind="stable")
    out = []
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        width = int(mask[rows].sum(1).max())
        out.append(((torch.from_numpy(ids[rows, :width]), torch.from_numpy(mask[rows, :width])),
                    torch.from_numpy(tweets.labels[rows])))
    return out


def minilm_classifier(encoder, head_pipeline):
    """The encoder followed by the sklearn (scaler + logistic regression) head as an `nn.Linear` to 2 logits."""
    import torch
    from torch import nn

    scaler, logistic = head_pipeline[0], head_pipeline[-1]
    w = logistic.coef_[0] / scaler.scale_
    b = logistic.intercept_[0] - scaler.mean_ @ w
    head = nn.Linear(w.shape[0], 2)
    with torch.no_grad():  # logits (-z/2, z/2): softmax gives sigmoid(z), argmax gives z > 0
        head.weight.copy_(torch.from_numpy(np.stack([-w / 2, w / 2])))
        head.bias.copy_(torch.tensor([-b / 2, b / 2]))

    class TweetClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = encoder, head

        def forward(self, input_ids, attention_mask):
            return self.head(self.encoder(input_ids, attention_mask))

    return TweetClassifier().eval()


def minilm_runs(args):
    import torch

    from tvm_lut.datasets.tweets import load_tweets
    from tvm_lut.models.minilm import load_minilm
    from tvm_lut.pq.config import PQConfig
    from tvm_lut.sentiment import embed, torch_encoder, train_head

    splits = load_tweets()
    encoder = load_minilm()
    head_set = splits.train.head(args.head_size)
    embeddings = embed(torch_encoder(encoder), *head_set.tokens(64), batch_size=32, desc="FP32 embeddings",
                       progress=args.progress)
    model = minilm_classifier(encoder, train_head(embeddings, head_set.labels))
    learn_set = splits.train.head(args.head_size + args.learn_size)
    learn_set = type(learn_set)(learn_set.texts[args.head_size:], learn_set.labels[args.head_size:])
    test = length_batches(splits.test.head(args.test_size), 64)
    calib = length_batches(splits.calibration.head(args.calib_size), 64)
    learn = length_batches(learn_set, args.batch_size)
    fp32 = accuracy(model, test)
    for sub_len in args.V:  # a generator: each row is reported (and saved) as soon as it is done
        config = PQConfig(V=sub_len, include=("encoder.*",), epochs=args.epochs, lr=args.lr)
        yield pq_run("minilm", f"V={sub_len}", model, config, calib, learn, test, fp32, args.progress)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "minilm"], choices=["cnn", "minilm"])
    parser.add_argument("--V", nargs="+", type=int, default=[8, 16, 32, 4], help="MiniLM sub-vector lengths")
    parser.add_argument("--test-size", type=int, default=1000, help="held-out test tweets")
    parser.add_argument("--head-size", type=int, default=1500, help="training tweets for the FP32 head")
    parser.add_argument("--calib-size", type=int, default=256, help="calibration tweets for k-means")
    parser.add_argument("--learn-size", type=int, default=1024, help="training tweets for centroid learning")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3, help="centroid learning rate (MiniLM)")
    parser.add_argument("--cnn-V", type=int, default=16, help="sub-vector length of the CNN's linears")
    parser.add_argument("--cnn-train-epochs", type=int, default=2)
    parser.add_argument("--cnn-learn-size", type=int, default=20480)
    parser.add_argument("--cnn-epochs", type=int, default=1)
    parser.add_argument("--cnn-lr", type=float, default=1e-3)
    parser.add_argument("--cnn-trainable", default="all", choices=["centroids", "all"],
                        help="what centroid learning trains in the CNN (all: weights too)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to PATH as JSON")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for name in args.models:
        runs = cnn_runs(args) if name == "cnn" else minilm_runs(args)
        for row in runs:
            rows.append(row)
            print(format_table([row], COLUMNS), flush=True)
            write_json(args.json, {"settings": vars(args) | {"json": str(args.json)}, "runs": rows})
    print("\n" + format_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
