"""The batch convention of `tvm_lut.learn`, shared by NN-LUT calibration and the PQ training stage.

A batch is either the model's input (a tensor) or a pair `(inputs, labels)`, where `inputs` is a tensor or a
tuple of tensors passed positionally (`model(*inputs)`) and `labels` a tensor of class indices or None. The
model returns logits (..., classes). Without labels only distillation from the FP32 model drives PQ learning; calibration ignores labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def split_batch(batch) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """`batch` -> (inputs as a tuple, labels or None)."""
    if isinstance(batch, torch.Tensor):
        return (batch,), None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, labels = batch
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a tensor or None, got {type(labels).__name__}")
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        if inputs and all(isinstance(t, torch.Tensor) for t in inputs):
            return inputs, labels
    raise TypeError("a batch is a tensor or a pair (inputs, labels) with inputs a tensor or a tuple of tensors; "
                    f"got {type(batch).__name__}")


def as_batch_list(batches) -> list:
    """The batches as a list (they are iterated once per epoch and once for k-means); empty raises."""
    batches = list(batches) if not isinstance(batches, Sequence) else batches
    if len(batches) == 0:
        raise ValueError("no calibration batches: learning needs real activations")
    return batches
