"""k-means initialisation of every PQ layer from the activations of the exact model on calibration batches.

One pass: while calibrating, PQ layers compute exactly (so each sees the FP32 model's activations, as in LUT-NN)
and keep a uniform sample of at most `PQConfig.kmeans_rows` input rows; then each runs per-codebook k-means.
"""

from __future__ import annotations

import torch
from torch import nn
from tvm_lut.progress import progress_bar

from tvm_lut.batches import as_batch_list, split_batch
from tvm_lut.pq.config import PQConfig
from tvm_lut.pq.swap import pq_layers


def init_centroids(model: nn.Module, batches, config: PQConfig, progress: bool = True) -> None:
    """Set the centroids of every PQ layer of `model` by k-means on its inputs over `batches`."""
    layers = pq_layers(model)
    if not layers:
        raise ValueError("the model has no PQ layers: run quantize_(model, config) first")
    for index, layer in enumerate(layers.values()):
        layer.start_calibration(config.kmeans_rows, config.seed + index)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in progress_bar(as_batch_list(batches), desc="PQ calibration", unit="batch", progress=progress,
                                      leave=False):
                inputs, _ = split_batch(batch)
                model(*inputs)
        for index, (name, layer) in enumerate(progress_bar(layers.items(), desc="k-means", unit="layer",
                                                           progress=progress, leave=False)):
            try:
                layer.finish_calibration(config.kmeans_iters, config.seed + index)
            except (RuntimeError, ValueError) as err:
                raise type(err)(f"PQ layer {name!r}: {err}") from None
    finally:
        for layer in layers.values():
            layer.calibrating = None
        model.train(was_training)
