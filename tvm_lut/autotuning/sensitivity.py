"""Per-layer sensitivity: what PQ costs when only that layer is product-quantized with k-means centroids.

For every layer and PQ choice, on the calibration batches, two proxies of the accuracy drop:
- `task_loss`: the increase of the task loss (cross entropy with the batch labels; without labels, the KL
  divergence from the exact model's outputs) over the exact model's;
- `output_error`: the layer's relative squared output error `|y_pq - y|^2 / |y|^2` on its sampled input rows;
- `fisher`: the output error weighted per output channel by the squared gradient of the task loss there (a diagonal
  Fisher estimate of the loss increase, as HAWQ and BRECQ weight quantization error), the gradients from one
  backward pass of the exact model.
The task loss costs a forward pass of the calibration set per choice (from the layer onward: the outputs of what
runs before the layer are replayed from one exact pass); the other two cost no pass beyond that exact one and one
backward. Which predicts the measured drop best is measured by `benchmarks/autotune.py`; the solver reads the one
`AutotuneConfig.proxy` names. Each layer's input rows are sampled once (they do not depend on K or V: rows are
the im2col patches of length D) and clustered per choice; the centroids are kept, so that a plan's k-means model
(`kmeans_model`) is built without clustering again.

Results are written after each layer (`sensitivity.json`, `sensitivity_centroids.safetensors` in the output
directory): an interrupted run continues with the next layer.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tvm_lut.autotuning.layers import Choice, LayerSpec

STATE_NAME = "sensitivity.json"
CENTROIDS_NAME = "sensitivity_centroids.safetensors"


@dataclass
class Sensitivity:
    """`proxies[layer][choice label] = {"task_loss": .., "output_error": .., "fisher": ..}`;
    `centroids[(layer, label)]`."""

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


def _batch_loss_tensor(logits, labels, reference):
    import torch.nn.functional as F

    if labels is not None:
        return F.cross_entropy(logits, labels.flatten())
    return F.kl_div(F.log_softmax(logits, -1), F.log_softmax(reference.detach(), -1), log_target=True,
                    reduction="batchmean")


def _batch_loss(logits, labels, reference) -> float:
    return float(_batch_loss_tensor(logits, labels, reference))


def task_loss(model, batches, reference: list | None, replay: "Replay | None" = None) -> float:
    """Mean cross entropy over `batches` (labels given), else mean KL divergence from `reference` outputs; `replay`
    answers the modules it names from the exact forward instead of running them."""
    import torch

    from tvm_lut.batches import split_batch

    total = 0.0
    with torch.no_grad():
        for index, batch in enumerate(batches):
            inputs, labels = split_batch(batch)
            with (replay.batch(index) if replay is not None else contextlib.nullcontext()):
                logits = model(*inputs).flatten(0, -2)
            total += _batch_loss(logits, labels, None if reference is None else reference[index])
    return total / len(batches)


class Replay:
    """Outputs of the exact forward, per module and batch, given back in call order instead of running the module:
    what runs before a layer cannot depend on it, so a layer's proxy is computed from that layer onward only."""

    def __init__(self, model, outputs: dict[str, list[list]]):
        self.model, self.outputs = model, outputs

    @contextlib.contextmanager
    def batch(self, index: int):
        modules = [self.model.get_submodule(name) for name in self.outputs]
        for name, module in zip(self.outputs, modules):
            module.forward = _replayer(iter(self.outputs[name][index]))
        try:
            yield
        finally:
            for module in modules:
                del module.forward

    def only(self, names) -> "Replay":
        return Replay(self.model, {name: self.outputs[name] for name in names})


def _copied(output):
    """`output` with its tensors copied: a later in-place op (ReLU(inplace=True)) must not change the cache."""
    import torch
    from torch.utils._pytree import tree_map

    return tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, output)


def _replayer(calls):
    return lambda *args, **kwargs: _copied(next(calls))


def _finished_before(spans: dict[str, list[int]], name: str) -> list[str]:
    """The largest modules whose every call ends before layer `name` is first called (`spans[module] = [first call
    start, last call end]` in call order), none inside another."""
    start = spans[name][0]
    done = {module for module, (_, end) in spans.items() if end < start}
    return [m for m in done if not any(m.startswith(other + ".") for other in done)]


def _call_spans(model, inputs) -> dict[str, list[int]]:
    """One forward: every submodule's [first call start, last call end] on a shared counter."""
    import torch

    counter, spans, handles = itertools.count(), {}, []

    def started(name):
        spans.setdefault(name, [next(counter), None])  # a pre-hook returning a value would replace the inputs

    def ended(name):
        spans[name][1] = next(counter)

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda _m, _a, name=name: started(name)))
            handles.append(module.register_forward_hook(lambda _m, _a, _o, name=name: ended(name)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return spans


@dataclass
class ExactPass:
    """What one exact forward over the calibration batches gives every layer: its sampled input rows (for k-means
    and the output error), the exact outputs (the KL reference without labels), the modules that run before it
    (`prefix[layer]`) and their outputs (`replay`)."""

    samples: dict
    reference: list | None
    loss: float  # the exact model's task loss
    fisher: dict  # per layer: the summed squared loss gradient per output channel, averaged over batches
    prefix: dict[str, list[str]]
    replay: Replay


def recorded_pass(model, names, batches, pre_hooks=()) -> tuple[dict[str, list[str]], Replay, list]:
    """`batches` through `model` once, recording the outputs of the modules that run before each layer of `names`:
    (`prefix[layer]`, their `Replay`, the logits of every batch). `pre_hooks`: (module name, forward pre-hook)
    pairs that also run during this pass."""
    import torch

    from tvm_lut.batches import split_batch

    spans = _call_spans(model, split_batch(batches[0])[0])
    prefix = {name: _finished_before(spans, name) for name in names}
    replayed = sorted({name for names in prefix.values() for name in names})
    outputs = {name: [[] for _ in batches] for name in replayed}
    position = {"batch": 0}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _a, out, name=name: outputs[name][position["batch"]].append(_copied(out))) for name in replayed]
    handles += [model.get_submodule(name).register_forward_pre_hook(hook) for name, hook in pre_hooks]
    logits = []
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                position["batch"] = index
                logits.append(model(*split_batch(batch)[0]).flatten(0, -2))
    finally:
        for handle in handles:
            handle.remove()
    return prefix, Replay(model, outputs), logits


def exact_pass(model, seeds: dict[str, int], batches, *, kmeans_rows: int) -> ExactPass:
    """The calibration batches through the exact model once, with hooks (see `ExactPass`), for the layers `seeds`
    names; each layer's rows are sampled with its seed (the sample the layer in calibrating mode would take)."""
    import torch

    from tvm_lut.batches import split_batch
    from tvm_lut.pq.layers import RowSample
    from tvm_lut.pq.reference import im2col

    samples = {name: RowSample(kmeans_rows, seed) for name, seed in seeds.items()}

    def sample_rows(module, args, name):
        x = args[0].detach().to(torch.float32)
        if isinstance(module, torch.nn.Conv2d):
            rows = im2col(x, module.kernel_size, module.stride, module.padding, module.dilation)[0]
        else:
            rows = x.reshape(-1, module.in_features)
        samples[name].add(rows)

    prefix, replay, logits = recorded_pass(model, seeds, batches, [
        (name, lambda m, args, name=name: sample_rows(m, args, name)) for name in seeds])
    labelled = all(split_batch(b)[1] is not None for b in batches)
    reference = None if labelled else logits
    loss = sum(_batch_loss(out, split_batch(batch)[1], out) for out, batch in zip(logits, batches)) / len(batches)
    return ExactPass(samples, reference, loss, output_fisher(model, list(seeds), batches, reference), prefix, replay)


def restore_effects(pq_model, names: list[str], batches, restored, exact_model) -> dict[str, float]:
    """Measured, not predicted: for each PQ layer in `names` of a learned model `pq_model`, how much its task loss
    on `batches` falls when that layer alone is exact again (`restored(name)`: that model), each computed from the
    layer onward (the outputs before it replayed from one pass of `pq_model`). Without labels the loss is the KL
    divergence from `exact_model`'s outputs."""
    import torch

    from tvm_lut.batches import split_batch

    prefix, replay, logits = recorded_pass(pq_model, names, batches)
    reference = None
    if not all(split_batch(b)[1] is not None for b in batches):
        with torch.no_grad():
            reference = [exact_model(*split_batch(b)[0]).flatten(0, -2) for b in batches]
    base = sum(_batch_loss(out, split_batch(batch)[1], None if reference is None else reference[index])
               for index, (out, batch) in enumerate(zip(logits, batches))) / len(batches)
    effects = {}
    for name in names:
        model = restored(name)
        effects[name] = base - task_loss(model, batches, reference,
                                         Replay(model, {m: replay.outputs[m] for m in prefix[name]}))
    return effects


def output_fisher(model, names: list[str], batches, reference: list | None) -> dict:
    """Per layer in `names`: sum over output rows of the squared gradient of the batch's task loss with respect to
    each output channel, averaged over batches (one forward and backward pass per batch; weights untouched)."""
    import torch

    from tvm_lut.batches import split_batch

    fisher = {name: 0.0 for name in names}
    if not names:
        return fisher
    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    for name in names:  # a gradient must reach every layer's output
        model.get_submodule(name).weight.requires_grad_(True)
    outputs: dict[str, list] = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _a, out, name=name: outputs.setdefault(name, []).append(out)) for name in names]
    try:
        with torch.enable_grad():
            for index, batch in enumerate(batches):
                outputs.clear()
                inputs, labels = split_batch(batch)
                logits = model(*inputs).flatten(0, -2)
                loss = _batch_loss_tensor(logits, labels, None if reference is None else reference[index])
                called = [(name, out) for name, outs in outputs.items() for out in outs]
                grads = torch.autograd.grad(loss, [out for _, out in called], allow_unused=True)
                for (name, out), grad in zip(called, grads):
                    if grad is not None:  # channels: dim 1 of a conv's output, the last of a linear's
                        grad = grad.movedim(1, -1) if out.dim() == 4 else grad
                        fisher[name] = fisher[name] + (grad * grad).reshape(-1, grad.shape[-1]).sum(0) / len(batches)
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return fisher


def measure(model, specs: list[LayerSpec], choices: dict[str, list[Choice]], calib_batches, *, kmeans_rows: int = 4096,
            kmeans_iters: int = 20, seed: int = 0, out_dir: Path | None = None, progress: bool = True,
            with_task_loss: bool = True) -> Sensitivity:
    """The proxies of every PQ choice of every layer (resuming from `out_dir` when it holds some): the task loss only
    `with_task_loss` (the costly one). One exact forward (`exact_pass`) serves every layer; a layer's task loss is
    computed from that layer onward."""
    import torch
    from tvm_lut.progress import progress_bar

    from tvm_lut.batches import as_batch_list

    batches = as_batch_list(calib_batches)
    model.eval()
    state = Sensitivity.load(out_dir) if out_dir is not None else None
    seeds = {spec.name: seed + index for index, spec in enumerate(specs)
             if any(not c.exact for c in choices[spec.name]) and (state is None or spec.name not in state.proxies)}
    if state is not None and not seeds:
        return state
    cached = exact_pass(model, seeds, batches, kmeans_rows=kmeans_rows)
    state = state or Sensitivity(cached.loss)
    for spec in progress_bar([spec for spec in specs if spec.name in seeds], desc="sensitivity", unit="layer",
                             progress=progress):
        original = model.get_submodule(spec.name)
        sample = cached.samples[spec.name]
        rows = sample.rows
        flat_weight = original.weight.reshape(original.weight.shape[0], -1)
        results = {}
        try:
            with torch.no_grad():
                exact_rows = rows @ flat_weight.T
                for choice in (c for c in choices[spec.name] if not c.exact):
                    layer = _pq_module(original, choice)
                    layer.calibrating = copy.copy(sample)
                    layer.finish_calibration(kmeans_iters, seeds[spec.name])
                    set_module(model, spec.name, layer)
                    bias = 0 if original.bias is None else original.bias
                    error = layer.pq_rows(rows) - bias - exact_rows
                    squared = error * error
                    results[choice.label] = {
                        "output_error": float(squared.sum() / (exact_rows * exact_rows).sum().clamp(min=1e-30)),
                        "fisher": float((squared.mean(0) * cached.fisher[spec.name]).sum()),
                    }
                    if with_task_loss:
                        loss = task_loss(model, batches, cached.reference, cached.replay.only(cached.prefix[spec.name]))
                        results[choice.label]["task_loss"] = loss - state.baseline_loss
                    state.centroids[(spec.name, choice.label)] = layer.centroids.detach().numpy().copy()
        finally:
            set_module(model, spec.name, original)
        state.proxies[spec.name] = results
        if out_dir is not None:
            state.save(out_dir)
    return state
