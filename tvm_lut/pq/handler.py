"""`learn_pq`: the whole LUT-NN training stage for one model (swap -> k-means -> centroid learning -> bundle),
and its registration as the `tvm_lut.learn` handler of `PQConfig`.

The caller's model is not modified: a copy is swapped and trained; the FP32 original is the distillation teacher.
The bundle's provenance records the config and which layers were replaced or kept exact (and why). This module
imports torch only when a handler runs, so that importing `tvm_lut.pq.table` (the compiler side) stays light.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tvm_lut.bundle import Bundle
from tvm_lut.pq.config import PQConfig
from tvm_lut.training import register_handler

if TYPE_CHECKING:
    from torch import nn

    from tvm_lut.pq.swap import SwapReport
    from tvm_lut.pq.train import TrainHistory

log = logging.getLogger(__name__)


@dataclass
class PQLearnResult:
    """Everything a PQ learning run produced: the bundle, the trained PQ model, the swap report, the history."""

    bundle: Bundle
    model: Any
    report: "SwapReport"
    history: "TrainHistory"


def export_tables(model: "nn.Module", provenance: dict | None = None) -> Bundle:
    """One `PQTable` entry per PQ layer of a swapped model, named by module name."""
    from tvm_lut.pq.swap import pq_layers

    return Bundle({name: layer.to_table() for name, layer in pq_layers(model).items()}, provenance)


def learn_pq(model: "nn.Module", calib_batches, config: PQConfig, *, checkpoint: str | os.PathLike | None = None,
             progress: bool = True, teacher_targets=None) -> PQLearnResult:
    """Learn PQ tables for `model` on real batches (see `tvm_lut.batches` for their form). `teacher_targets`: a
    `tvm_lut.pq.train.TeacherTargets` of `model` on these batches, shared by several learning runs."""
    import copy

    import torch

    from tvm_lut.batches import as_batch_list
    from tvm_lut.pq.calibrate import init_centroids
    from tvm_lut.pq.swap import quantize_
    from tvm_lut.pq.train import train_centroids

    batches = as_batch_list(calib_batches)
    student = copy.deepcopy(model)
    report = quantize_(student, config)
    log.info("%s", report)
    if not report.replaced:
        raise ValueError(f"no layer of the model can be served by PQ with this config:\n{report}")
    init_centroids(student, batches, config, progress=progress)
    history = train_centroids(student, model, batches, config, checkpoint=checkpoint, progress=progress,
                              teacher_targets=teacher_targets)
    provenance = {"pq_config": json.loads(config.to_json()), "pq_replaced": report.replaced,
                  "pq_kept_exact": report.kept, "torch_version": torch.__version__}
    return PQLearnResult(export_tables(student, provenance), student, report, history)


@register_handler(PQConfig)
def learn_handler(model, calib_batches, config: PQConfig, *, progress: bool = True) -> tuple[Bundle, "nn.Module"]:
    """`tvm_lut.learn(model, batches, PQConfig(...))`: the bundle of `learn_pq` and the FP32 model its fingerprints
    belong to (the trained student with its PQ layers back as exact layers)."""
    from tvm_lut.pq.swap import unswap_

    result = learn_pq(model, calib_batches, config, progress=progress)
    return result.bundle, unswap_(result.model).eval()
