"""Per-layer sensitivity: what PQ costs when only that layer is product-quantized with k-means centroids.

For every layer and PQ choice, on the calibration batches, two proxies of the accuracy drop:
- `task_loss`: the increase of the task loss (cross entropy with the batch labels; without labels, the KL
  divergence from the exact model's outputs) over the exact model's;
- `output_error`: the layer's relative squared output error `|y_pq - y|^2 / |y|^2` on its sampled input rows.
Which one predicts the measured drop better is measured by `benchmarks/autotune.py`; the solver reads the one
`AutotuneConfig.proxy` names. Each layer's input rows are sampled once (they do not depend on K or V: rows are
the im2col patches of length D) and clustered per choice; the centroids are kept, so that a plan's k-means model
(`kmeans_model`) is built without clustering again.

Results are written after each layer (`sensitivity.json`, `sensitivity_centroids.safetensors` in the output
directory): an interrupted run continues with the next layer.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tvm_lut.autotuning.layers import Choice, LayerSpec

STATE_NAME = "sensitivity.json"
CENTROIDS_NAME = "sensitivity_centroids.safetensors"


@dataclass
class Sensitivity:
    """`proxies[layer][choice label] = {"task_loss": .., "output_error": ..}`; `centroids[(layer, label)]`."""

    baseline_loss: float
    proxies: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    centroids: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def value(self, name: str, choice: Choice, proxy: str) -> float:
        """The proxy of `choice` for layer `name`, never below 0 (exact is 0)."""
        return 0.0 if choice.exact else max(0.0, self.proxies[name][choice.label][proxy])

    def save(self, out_dir: Path) -> None:
        from safetensors.numpy import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({f"{name}|{label}": c for (name, label), c in self.centroids.items()},
                  str(out_dir / (CENTROIDS_NAME + ".tmp")))
        (out_dir / (CENTROIDS_NAME + ".tmp")).replace(out_dir / CENTROIDS_NAME)
        state = {"baseline_loss": self.baseline_loss, "proxies": self.proxies}
        (out_dir / (STATE_NAME + ".tmp")).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
        (out_dir / (STATE_NAME + ".tmp")).replace(out_dir / STATE_NAME)

    @classmethod
    def load(cls, out_dir: Path) -> "Sensitivity | None":
        from safetensors.numpy import load_file

        if not (out_dir / STATE_NAME).is_file() or not (out_dir / CENTROIDS_NAME).is_file():
            return None
        state = json.loads((out_dir / STATE_NAME).read_text())
        centroids = {tuple(key.split("|", 1)): value for key, value in load_file(str(out_dir / CENTROIDS_NAME)).items()}
        return cls(state["baseline_loss"], state["proxies"], centroids)


def _pq_module(module, choice: Choice):
    from torch import nn

    from tvm_lut.pq.layers import PQConv2d, PQLinear

    return (PQConv2d if isinstance(module, nn.Conv2d) else PQLinear)(module, choice.K, choice.V)


def set_module(model, name: str, module) -> None:
    """Put `module` in place of the submodule called `name`."""
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def kmeans_model(model, plan: dict[str, Choice], sensitivity: Sensitivity):
    """A copy of `model` with every PQ layer of `plan` swapped in, its centroids the k-means ones."""
    import torch

    copied = copy.deepcopy(model)
    for name, choice in plan.items():
        if choice.exact:
            continue
        layer = _pq_module(copied.get_submodule(name), choice)
        with torch.no_grad():
            layer.centroids.copy_(torch.from_numpy(sensitivity.centroids[(name, choice.label)]))
        set_module(copied, name, layer)
    return copied.eval()


def task_loss(model, batches, reference: list | None) -> float:
    """Mean cross entropy over `batches` (labels given), else mean KL divergence from `reference` outputs."""
    import torch
    import torch.nn.functional as F

    from tvm_lut.batches import split_batch

    total = 0.0
    with torch.no_grad():
        for index, batch in enumerate(batches):
            inputs, labels = split_batch(batch)
            logits = model(*inputs).flatten(0, -2)
            if labels is not None:
                total += float(F.cross_entropy(logits, labels.flatten()))
            else:
                total += float(F.kl_div(F.log_softmax(logits, -1), F.log_softmax(reference[index], -1),
                                        log_target=True, reduction="batchmean"))
    return total / len(batches)


def measure(model, specs: list[LayerSpec], choices: dict[str, list[Choice]], calib_batches, *, kmeans_rows: int = 4096,
            kmeans_iters: int = 20, seed: int = 0, out_dir: Path | None = None, progress: bool = True) -> Sensitivity:
    """Both proxies for every PQ choice of every layer (resuming from `out_dir` when it holds some)."""
    import torch
    from tqdm import tqdm

    from tvm_lut.batches import as_batch_list, split_batch

    batches = as_batch_list(calib_batches)
    model.eval()
    labelled = all(split_batch(b)[1] is not None for b in batches)
    with torch.no_grad():
        reference = None if labelled else [model(*split_batch(b)[0]).flatten(0, -2) for b in batches]
    state = (Sensitivity.load(out_dir) if out_dir is not None else None) or \
        Sensitivity(task_loss(model, batches, reference))
    for index, spec in enumerate(tqdm(specs, desc="sensitivity", unit="layer", disable=not progress)):
        pq_choices = [c for c in choices[spec.name] if not c.exact]
        if spec.name in state.proxies or not pq_choices:
            continue
        original = model.get_submodule(spec.name)
        layer = _pq_module(original, pq_choices[0])
        layer.start_calibration(kmeans_rows, seed + index)
        set_module(model, spec.name, layer)
        try:
            with torch.no_grad():
                for batch in batches:
                    model(*split_batch(batch)[0])
                sample = layer.calibrating
                rows = sample.rows
                flat_weight = original.weight.reshape(original.weight.shape[0], -1)
                exact_rows = rows @ flat_weight.T
                results = {}
                for choice in pq_choices:
                    layer = _pq_module(original, choice)
                    layer.calibrating = copy.copy(sample)
                    layer.finish_calibration(kmeans_iters, seed + index)
                    set_module(model, spec.name, layer)
                    bias = 0 if original.bias is None else original.bias
                    error = layer.pq_rows(rows) - bias - exact_rows
                    results[choice.label] = {
                        "task_loss": task_loss(model, batches, reference) - state.baseline_loss,
                        "output_error": float((error * error).sum() / (exact_rows * exact_rows).sum().clamp(min=1e-30)),
                    }
                    state.centroids[(spec.name, choice.label)] = layer.centroids.detach().numpy().copy()
        finally:
            set_module(model, spec.name, original)
        state.proxies[spec.name] = results
        if out_dir is not None:
            state.save(out_dir)
    return state
