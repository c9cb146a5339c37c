"""The two real tasks of the LUT-NN experiments, as (model, calibration, learning, test) batches.

- `cnn_task`: `FashionCNN` trained on the Fashion-MNIST training split (or loaded from safetensors weights);
  calibration and learning images come from the training split, test images from the 10,000 held-out ones.
- `minilm_task`: all-MiniLM-L6-v2 (frozen) + a logistic-regression head trained on the live features
  (`tvm_lut.sentiment.live_features`) of FP32 sentence embeddings of the first `head_size` training tweets, folded
  into an `nn.Linear` to 2 logits; k-means on the calibration split, learning on the next `learn_size` training
  tweets, test on the held-out test split.

Batches follow `tvm_lut.batches`: `((inputs...), labels)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tvm_lut.pq.config import PQConfig

# The learning settings measured on each task (benchmarks/lutnn_accuracy.py, README "Measured here");
# `tvm-lut learn` starts from them. Both: the exact layer's gradient for PQ inputs
# (`input_gradient="exact"`; with LUT-NN's soft-path gradient MiniLM V=8 learned to 81.4 % instead of 86.0 %, the
# CNN to 87.3 % instead of 88.3 %, same settings, 2 epochs), every weight trained (cosine schedule, 20 warm-up
# steps), and each block's output distilled as well as the logits.
# MiniLM: 2 epochs; weights at 2e-5 (1e-4 exploded only through the head's dead features, see
# `tvm_lut.sentiment.DEAD_FEATURE`).
# CNN: 4 epochs on all 60,000 training images (1: 87.8 %, 2: 88.3 %, 4: 89.3 % against 90.0 % FP32); conv1
# stays exact (one grayscale 3x3 patch is a single 9-long codebook; V=3 for it measured 1.5 points worse); the
# linears at V=4, LUT-NN's choice for a 1x1 conv (a linear is one), fc2 (128 -> 10) at V=2: k-means alone cost
# 4.7 points at fc1 V=16 and 1.1 at V=4, 1.9 at fc2 V=16 and 0.2 at V=2 (their tables are then as large as the
# weights they replace, 1x and 0.5x; the convs keep the V=9, V=4).
MINILM_PQ = PQConfig(V=8, include=("encoder.*",), epochs=2, lr=3e-3, input_gradient="exact", trainable="all",
                     weight_lr=2e-5, feature_distill=("encoder.encoder.layer.?",), lr_schedule="cosine",
                     warmup_steps=20)
CNN_PQ = PQConfig(V=4, overrides={"fc2": {"V": 2}}, exclude=("conv1",), epochs=4, input_gradient="exact",
                  trainable="all", lr=1e-3, weight_lr=1e-3, feature_distill=("conv2", "conv3", "fc1"),
                  lr_schedule="cosine", warmup_steps=20)
TASK_CONFIGS = {"cnn": CNN_PQ, "minilm": MINILM_PQ}


@dataclass
class Task:
    model: nn.Module
    calib: list
    learn: list
    test: list


def accuracy(model: nn.Module, batches) -> float:
    """Fraction of test rows whose argmax logit is the label."""
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in batches:
            correct += int((model(*inputs).argmax(-1) == labels).sum())
            total += len(labels)
    return correct / total


def _image_batches(images: np.ndarray, labels: np.ndarray, size: int) -> list:
    return [((torch.from_numpy(images[i:i + size]),), torch.from_numpy(labels[i:i + size]))
            for i in range(0, len(images), size)]


def cnn_task(learn_size: int = 60000, calib_size: int = 2048, train_epochs: int = 5, weights=None,
             test_size: int = 10000, progress: bool = True, train_size: int = 60000) -> Task:
    """The CNN trained for `train_epochs` on the first `train_size` training images (or loaded from `weights`)."""
    from safetensors.torch import load_file

    from tvm_lut.datasets.fashion_mnist import load_fashion_mnist
    from tvm_lut.models.cnn import FashionCNN, train_cnn

    images, labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    if weights is not None:
        model = FashionCNN()
        model.load_state_dict(load_file(str(weights)))
        model.eval()
    else:
        model = train_cnn(images[:train_size], labels[:train_size], epochs=train_epochs, progress=progress)
    return Task(model, _image_batches(images[:calib_size], labels[:calib_size], 256),
                _image_batches(images[:learn_size], labels[:learn_size], 128),
                _image_batches(test_images[:test_size], test_labels[:test_size], 1000))


def length_batches(tweets, size: int, length: int = 64) -> list:
    """Batches of tweets of similar length, each trimmed to its longest (less padding, same results)."""
    ids, mask = tweets.tokens(length)
    order = np.argsort(mask.sum(1), kind="stable")
    out = []
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        width = int(mask[rows].sum(1).max())
        out.append(((torch.from_numpy(ids[rows, :width]), torch.from_numpy(mask[rows, :width])),
                    torch.from_numpy(tweets.labels[rows])))
    return out


class TweetClassifier(nn.Module):
    """Sentence encoder -> linear head: logits (batch, 2) for (input_ids, attention_mask)."""

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))


def linear_from_logistic(pipeline, live: np.ndarray | None = None) -> nn.Linear:
    """A scikit-learn StandardScaler + binary LogisticRegression as `nn.Linear` to logits (-z/2, z/2), whose
    softmax is the regression's sigmoid(z). `live` (H,): the features the pipeline was fitted on (all if None);
    the others get weight 0."""
    scaler, logistic = pipeline[0], pipeline[-1]
    w_live = logistic.coef_[0] / scaler.scale_
    b = logistic.intercept_[0] - scaler.mean_ @ w_live
    live = np.ones(len(w_live), bool) if live is None else np.asarray(live, bool)
    if live.sum() != len(w_live):
        raise ValueError(f"the pipeline has {len(w_live)} features, the mask selects {live.sum()}")
    w = np.zeros(len(live))
    w[live] = w_live
    head = nn.Linear(len(live), 2)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.stack([-w / 2, w / 2])))
        head.bias.copy_(torch.tensor([-b / 2, b / 2]))
    return head


def minilm_task(head_size: int = 1500, calib_size: int = 256, learn_size: int = 1024, test_size: int = 1000,
                batch_size: int = 32, progress: bool = True) -> Task:
    from tvm_lut.datasets.tweets import TweetSet, load_tweets
    from tvm_lut.models.minilm import load_minilm
    from tvm_lut.sentiment import embed, torch_encoder, train_live_head

    splits = load_tweets()
    encoder = load_minilm()
    head_set = splits.train.head(head_size)
    embeddings = embed(torch_encoder(encoder), *head_set.tokens(64), batch_size=32, desc="FP32 embeddings",
                       progress=progress)
    live, logistic = train_live_head(embeddings, head_set.labels)
    head = linear_from_logistic(logistic, live)
    model = TweetClassifier(encoder, head).eval()
    pool = splits.train.head(head_size + learn_size)
    learn_set = TweetSet(pool.texts[head_size:], pool.labels[head_size:])
    return Task(model, length_batches(splits.calibration.head(calib_size), 64),
                length_batches(learn_set, batch_size), length_batches(splits.test.head(test_size), 64))
