"""Centroid learning (LUT-NN): task loss plus distillation from the FP32 model, resumable from a checkpoint.

Trainable by default: every PQ layer's `centroids` (Adam, `PQConfig.lr`) and `temperature_logit`
(`PQConfig.temperature_lr`); with `trainable="all"` also every other parameter of the model (`PQConfig.weight_lr`). The student runs
in eval mode (dropout off, batch-norm statistics frozen); its PQ layers use the straight-through soft
assignment whenever gradients are on. The teacher is the FP32 model, never updated.

Checkpoints are one safetensors file (trainable tensors and Adam state) whose metadata holds the progress as JSON
(config, epoch, step, history): no pickle. It is written atomically every `checkpoint_every` steps and at the end
of each epoch; a run started with the same file and config continues where the last one stopped.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tvm_lut.progress import progress_bar

from tvm_lut.batches import as_batch_list, split_batch
from tvm_lut.pq.config import PQConfig
from tvm_lut.pq.swap import pq_layers

CHECKPOINT_FORMAT = "tvm-lut-pq-checkpoint"


@dataclass
class TrainHistory:
    """Per optimisation step: the loss terms and every PQ layer's inverse temperature (by layer name)."""

    loss: list[float] = field(default_factory=list)
    task: list[float] = field(default_factory=list)
    distill: list[float] = field(default_factory=list)
    feature: list[float] = field(default_factory=list)
    temperature: dict[str, list[float]] = field(default_factory=dict)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KL(teacher || student) on softened logits, scaled by T^2 so gradients keep their size."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_student.flatten(0, -2), log_teacher.flatten(0, -2), log_target=True,
                    reduction="batchmean") * temperature ** 2


class FeatureTap:
    """Records the outputs of the modules of `model` whose names match `patterns`, at every forward."""

    def __init__(self, model: nn.Module, patterns: tuple[str, ...]):
        modules = {name: m for name, m in model.named_modules()
                   if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
        if patterns and not modules:
            raise ValueError(f"PQConfig.feature_distill {patterns} matches no module of the model")
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def record(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"feature distillation needs a tensor output from {name!r}, got {type(output).__name__}")
            self.outputs[name] = output
        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class TeacherTargets:
    """The FP32 teacher's outputs (logits and the `feature_distill` modules' outputs) per batch, computed the first
    time a batch is learned from and kept while they fit in `max_bytes`: the teacher never changes, so later epochs,
    and later learning runs given the same object and batches (the autotuner's trials), read them instead of running
    it again (its forward was a fifth of a MiniLM learning step). The values are those a fresh forward gives; a batch
    number asked again with other inputs raises (the targets would be another batch's)."""

    def __init__(self, teacher: nn.Module, feature_distill: tuple[str, ...] = (), max_bytes: int = 3 << 30):
        self.teacher, self.feature_distill, self.max_bytes = teacher, tuple(feature_distill), max_bytes
        self.saved: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self.bytes = 0

    def __call__(self, index: int, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits, {module name: output}) of the teacher on batch number `index`, whose inputs are `inputs`."""
        if index in self.saved:
            kept, targets = self.saved[index]
            if len(kept) != len(inputs) or not all(_same_input(a, b) for a, b in zip(kept, inputs)):
                raise ValueError(f"teacher_targets: batch {index} is not the batch its teacher outputs were kept for "
                                 "(share them only between learning runs on the same batches)")
            return targets
        tap = FeatureTap(self.teacher, self.feature_distill)
        try:
            with torch.no_grad():
                logits = self.teacher(*inputs)
        finally:
            tap.remove()
        targets = (logits, dict(tap.outputs))
        size = sum(t.numel() * t.element_size() for t in (logits, *targets[1].values()))
        if self.bytes + size <= self.max_bytes:
            self.saved[index] = (tuple(inputs), targets)
            self.bytes += size
        return targets


def _same_input(kept, given) -> bool:
    if kept is given:
        return True
    if isinstance(kept, torch.Tensor) and isinstance(given, torch.Tensor):
        return kept.shape == given.shape and kept.dtype == given.dtype and torch.equal(kept, given)
    return False


def feature_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the tapped modules of the relative squared error |s - t|^2 / |t|^2 (scale-free per module)."""
    terms = [(student[name] - t).pow(2).sum() / t.pow(2).sum().clamp(min=1e-12) for name, t in teacher.items()]
    return torch.stack(terms).mean()


def lr_factor(step: int, total: int, config: PQConfig) -> float:
    """Multiplier of every learning rate at optimisation step `step` (0-based) of `total`."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        span = max(total - config.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * (step - config.warmup_steps) / span))
    return 1.0


def _param_groups(model: nn.Module, config: PQConfig) -> list[dict]:
    layers = pq_layers(model)
    centroids = [layer.centroids for layer in layers.values()]
    temperatures = [layer.temperature_logit for layer in layers.values()]
    chosen = {id(p) for p in centroids + temperatures}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    for param in rest:
        param.requires_grad_(config.trainable == "all")
    groups = [{"params": centroids, "lr": config.lr}, {"params": temperatures, "lr": config.temperature_lr}]
    if config.trainable == "all":
        groups.append({"params": rest, "lr": config.weight_lr})
    return groups


class Checkpoint:
    """One safetensors file: trainable tensors, Adam state, and the progress JSON in the metadata."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, progress: dict) -> None:
        from safetensors.torch import save_file

        tensors = {f"param/{name}": p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
        opt = optimizer.state_dict()
        for index, state in opt["state"].items():
            for key, value in state.items():
                tensors[f"optim/{index}/{key}"] = torch.as_tensor(value).reshape(-1).contiguous()
        metadata = {"format": CHECKPOINT_FORMAT, "progress": json.dumps(progress),
                    "param_groups": json.dumps(opt["param_groups"])}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(self.path.suffix + ".partial")
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, self.path)

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: PQConfig) -> dict:
        """Restore `model` and `optimizer`; returns the progress. A checkpoint of another run raises."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path} is not a PQ training checkpoint")
        progress = json.loads(metadata["progress"])
        if progress["config"] != json.loads(config.to_json()):
            raise ValueError(f"{self.path} was written with another PQConfig; delete it or pass the same config")
        params = dict(model.named_parameters())
        saved = {key[len("param/"):] for key in tensors if key.startswith("param/")}
        expected = {name for name, p in params.items() if p.requires_grad}
        if saved != expected:
            raise ValueError(f"{self.path} holds other parameters than this model trains: "
                             f"{sorted(saved ^ expected)[:5]}")
        with torch.no_grad():
            for name in saved:
                params[name].copy_(tensors[f"param/{name}"])
        state: dict[int, dict] = {}
        numbered = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict numbering
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                shape = () if name == "step" else numbered[int(index)].shape
                state.setdefault(int(index), {})[name] = value.reshape(shape)
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
        return progress


def train_centroids(student: nn.Module, teacher: nn.Module, batches, config: PQConfig, *,
                    checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50,
                    progress: bool = True, teacher_targets: TeacherTargets | None = None) -> TrainHistory:
    """Learn the PQ layers of `student` (swapped and k-means initialised) against the FP32 `teacher`.
    `teacher_targets`: the teacher's outputs on these `batches` kept from an earlier run (default: a new cache)."""
    layers = pq_layers(student)
    if not layers:
        raise ValueError("the student has no PQ layers: run quantize_ and init_centroids first")
    if teacher_targets is None:
        teacher_targets = TeacherTargets(teacher, config.feature_distill)
    elif teacher_targets.teacher is not teacher or teacher_targets.feature_distill != config.feature_distill:
        raise ValueError("teacher_targets were kept for another teacher or other feature_distill modules")
    batches = as_batch_list(batches)
    optimizer = torch.optim.Adam(_param_groups(student, config))
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a checkpoint restores scaled ones
    store = Checkpoint(checkpoint) if checkpoint is not None else None
    done = {"epoch": 0, "step": 0, "history": TrainHistory().__dict__}
    if store is not None and store.path.exists():
        done = store.load(student, optimizer, config)
    history = TrainHistory(**done["history"])
    student.eval()
    teacher.eval()
    student_tap = FeatureTap(student, config.feature_distill)

    def save(epoch: int, step: int) -> None:
        if store is not None:
            store.save(student, optimizer, {"config": json.loads(config.to_json()), "epoch": epoch, "step": step,
                                            "history": history.__dict__})

    def learn_step(index: int, global_step: int) -> float:
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * lr_factor(global_step, total, config)
        inputs, labels = split_batch(batches[index])
        target, target_features = teacher_targets(index, inputs)
        logits = student(*inputs)
        zero = logits.new_zeros(())
        distill = distillation_loss(logits, target, config.distill_temperature)
        task = F.cross_entropy(logits.flatten(0, -2), labels.flatten()) if labels is not None else zero
        feature = feature_loss(student_tap.outputs, target_features) if config.feature_distill else zero
        loss = config.task_weight * task + config.distill_weight * distill + config.feature_weight * feature
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for values, term in ((history.loss, loss), (history.task, task), (history.distill, distill),
                             (history.feature, feature)):
            values.append(term.item())
        for name, layer in layers.items():
            history.temperature.setdefault(name, []).append(layer.temperature.item())
        return loss.item()

    total = config.epochs * len(batches)
    bar = progress_bar(total=total, initial=min(total, done["epoch"] * len(batches) + done["step"]),
                       desc="PQ centroid learning", unit="step", progress=progress)
    try:
        for epoch in range(done["epoch"], config.epochs):
            order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
            first = done["step"] if epoch == done["epoch"] else 0
            for step in range(first, len(batches)):
                loss = learn_step(int(order[step]), epoch * len(batches) + step)
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}")
                if (step + 1) % checkpoint_every == 0 and step + 1 < len(batches):
                    save(epoch, step + 1)
            save(epoch + 1, 0)
    finally:
        bar.close()
        student_tap.remove()
    return history
