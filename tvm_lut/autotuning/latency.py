"""Measured latency of every choice of every layer: the layer alone, compiled for the target and timed.

A candidate is a one-layer model of the layer's shapes (random weights: latency depends on shapes only), compiled
by `tvm_lut.compile` exactly as a whole model would be: exact under our rules (Winograd for 3x3 convs, the tuning
database's records when it has any for this target), or PQ through `relay_passes.LUTDense` with a table of that K
and V (encode + lookup). It is timed by the evaluator tuning uses (`schedules.tuning.evaluator`), on the target's
threads, and as tuning confirms a schedule: all choices of one layer are built first, then timed taking turns for
`ROUNDS` rounds, so a shared machine's load hits them alike (timed one after the other, on a loaded 2-core machine
the CNN's exact conv2 read 114 us in one measurement and 60 in another). A PQ choice the pass does not serve is
recorded with its reason and never chosen.

Measurements are cached in a JSON file keyed by target and layer shape (`LayerSpec.key()`), written after each
one: a second run, or a run resumed after an interruption, measures only what is missing. With a tuning database
the cache lives in it (`<db>/<target key>/autotune_latency.json`), beside the records it was measured with.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from tvm_lut.autotuning.layers import Choice, LayerSpec

log = logging.getLogger(__name__)

CACHE_FORMAT = "tvm-lut-autotune-latency"
CACHE_VERSION = 1
CACHE_NAME = "autotune_latency.json"
ROUNDS = 5  # turns each choice of a layer is timed in (the median of all its repetitions is kept)
WHOLE_MODEL_ROUNDS = 9  # turns whole models are timed in: their differences are a few percent (`guard`)


class NotServed(Exception):
    """The pass kept this PQ choice exact (the reason is the message)."""


def cache_path(database, target, out_dir) -> Path | None:
    """Where latencies of `target` are cached: in the tuning database if one is given, else in `out_dir`."""
    if database is not None:
        from schedules.tuning import target_key

        return Path(database) / target_key(target) / CACHE_NAME
    return None if out_dir is None else Path(out_dir) / CACHE_NAME


class LatencyTable:
    """Microseconds per (layer shape, choice) for one target; None means the choice is not served (`reasons`)."""

    def __init__(self, target, path: Path | None = None):
        self.target = str(target)
        self.path = path
        self.entries: dict[str, dict[str, float | None]] = {}
        self.reasons: dict[str, dict[str, str]] = {}
        if path is not None and path.is_file():
            self._load(path)

    def _load(self, path: Path) -> None:
        raw = json.loads(path.read_text())
        if raw.get("format") != CACHE_FORMAT or raw.get("version") != CACHE_VERSION:
            raise ValueError(f"{path} is not a version-{CACHE_VERSION} {CACHE_FORMAT} file")
        if raw["target"] != self.target:
            raise ValueError(f"{path} holds latencies of target {raw['target']}, not of {self.target}")
        self.entries, self.reasons = raw["entries"], raw["reasons"]

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "target": self.target,
                   "entries": self.entries, "reasons": self.reasons}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        temporary.replace(self.path)  # an interruption never leaves half a file

    def __contains__(self, item: tuple[LayerSpec, Choice]) -> bool:
        spec, choice = item
        return choice.label in self.entries.get(spec.key(), {})

    def get(self, spec: LayerSpec, choice: Choice) -> float | None:
        return self.entries[spec.key()][choice.label]

    def reason(self, spec: LayerSpec, choice: Choice) -> str | None:
        return self.reasons.get(spec.key(), {}).get(choice.label)

    def record(self, spec: LayerSpec, choice: Choice, microseconds: float | None, reason: str | None = None) -> None:
        self.entries.setdefault(spec.key(), {})[choice.label] = microseconds
        if reason is not None:
            self.reasons.setdefault(spec.key(), {})[choice.label] = reason
        self.save()

    def measure(self, specs: list[LayerSpec], choices: dict[str, list[Choice]], target, database=None,
                progress: bool = True, tracker=None) -> int:
        """Measure every (layer, choice) not cached yet, a layer's choices together; returns how many were
        measured. `tracker` (`schedules.rpc.Tracker`): time them on a device of its pool instead of here."""
        from tvm_lut.progress import progress_bar

        todo: dict[str, tuple[LayerSpec, list[Choice]]] = {}  # equal shapes are measured once
        for spec in specs:
            missing = [c for c in choices[spec.name] if (spec, c) not in self]
            if missing:
                listed = todo.setdefault(spec.key(), (spec, []))[1]
                listed += [c for c in missing if c not in listed]
        for spec, missing in progress_bar(list(todo.values()), desc="latency table", unit="layer", progress=progress):
            for choice, measured in measure_choices(spec, missing, target, database, tracker).items():
                if isinstance(measured, NotServed):
                    log.warning("%s %s: not served: %s", spec.name, choice.label, measured)
                    self.record(spec, choice, None, str(measured))
                else:
                    self.record(spec, choice, measured)
        return sum(len(missing) for _, missing in todo.values())


def layer_module(spec: LayerSpec):
    """A torch model of the one layer, with seeded random weights."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if spec.kind == "linear":
        out_features, in_features = spec.weight_shape
        return nn.Linear(in_features, out_features, bias=spec.bias).eval()
    out_channels, in_channels, kh, kw = spec.weight_shape
    return nn.Conv2d(in_channels, out_channels, (kh, kw), spec.stride, spec.padding, spec.dilation,
                     bias=spec.bias).eval()


def candidate_bundle(spec: LayerSpec, module, choice: Choice):
    """A bundle with one PQ table of `choice` for `module` (random centroids: the kernels' speed does not depend
    on their values)."""
    from tvm_lut.bundle import Bundle
    from tvm_lut.pq.table import PQTable

    weight = module.weight.detach().numpy()
    bias = None if module.bias is None else module.bias.detach().numpy()
    centroids = np.random.default_rng(0).standard_normal(
        (spec.in_features // choice.V, choice.K, choice.V)).astype(np.float32)
    geometry = ({"kernel_size": spec.weight_shape[2:], "stride": spec.stride, "padding": spec.padding,
                 "dilation": spec.dilation} if spec.kind == "conv2d" else {})
    return Bundle({spec.name: PQTable.from_weight(centroids, weight, bias, **geometry)})


def measure_choices(spec: LayerSpec, choices: list[Choice], target, database=None, tracker=None) -> dict:
    """Median microseconds of one call of the layer under each choice (or the `NotServed` reason), the choices
    built first and then timed taking turns: here, or on one device of `tracker`'s pool (uploaded, cross-linked).
    A target that cannot run here needs the tracker."""
    x = np.random.default_rng(1).standard_normal(spec.input_shape).astype(np.float32)
    executables, results = {}, {}
    for choice in choices:
        try:
            executables[choice] = _build(spec, choice, target, database)
        except NotServed as reason:
            results[choice] = reason
    results.update(time_in_turns(executables, [x], target, tracker, ROUNDS))
    return results


def measure_models(variants: dict, example_inputs: tuple, target, database=None, tracker=None,
                   rounds: int = WHOLE_MODEL_ROUNDS) -> dict:
    """Median microseconds of one call of each whole model, `variants`: label -> (torch model, bundle or None),
    each compiled by `tvm_lut.compile` as a user would, then all timed taking turns (as `measure_choices`)."""
    from tvm_lut.compiler import compile as compile_model
    from tvm_lut.frontend import from_torch

    inputs = [x.detach().numpy() for x in example_inputs]
    executables = {label: compile_model(from_torch(model, example_inputs), bundle, target,
                                        database=_usable_database(database, target))
                   for label, (model, bundle) in variants.items()}
    return time_in_turns(executables, inputs, target, tracker, rounds)


def time_in_turns(executables: dict, inputs: list, target, tracker=None, rounds: int = ROUNDS) -> dict:
    """Median microseconds of one call of each compiled model's `main` on `inputs` (numpy arrays), the models
    timed taking turns for `rounds` rounds by tuning's evaluator: here, or on one device of `tracker`'s pool."""
    import tvm
    from tvm import relax

    from schedules.rpc import upload_library
    from schedules.target import runs_on_host
    from schedules.tuning import evaluator

    if tracker is None and not runs_on_host(target):
        raise ValueError(f"target {target} does not run on this machine: measure its latencies on a device "
                         "(tracker=..., or --rpc-tracker HOST:PORT --rpc-key KEY)")
    session = None if tracker is None else tracker.session()
    device = tvm.cpu() if session is None else session.cpu()
    arguments = [tvm.runtime.tensor(x, device) for x in inputs]
    timers = {}
    for label, executable in executables.items():
        loaded = executable if session is None else upload_library(session, executable, target)
        timers[label] = evaluator(relax.VirtualMachine(loaded, device), "main", device)
    seconds = {label: [] for label in timers}
    for _ in range(rounds):
        for label, timer in timers.items():
            seconds[label] += list(timer(*arguments).results)
    results = {}
    for label, values in seconds.items():
        values.sort()
        results[label] = 1e6 * values[len(values) // 2]
    return results


def _usable_database(database, target):
    """`database` if it holds records for `target`, else None (the rules' schedules)."""
    from schedules.tuning import open_database

    if database is not None:
        try:
            open_database(database, target)
        except FileNotFoundError:
            return None
    return database


def _build(spec: LayerSpec, choice: Choice, target, database=None):
    """The one-layer model under `choice`, compiled for `target` (raises `NotServed` when the pass kept it exact)."""
    import torch

    from tvm_lut.compiler import compile as compile_model
    from tvm_lut.frontend import from_torch

    module = layer_module(spec)
    mod = from_torch(module, (torch.zeros(spec.input_shape),))
    bundle = None if choice.exact else candidate_bundle(spec, module, choice)
    executable = compile_model(mod, bundle, target, database=_usable_database(database, target))
    if bundle is not None:
        (report,) = executable.lut_report.passes[-1:] or [{"replaced": [], "kept": []}]
        if not report["replaced"]:
            reasons = [entry["reason"] for entry in report["kept"]] or ["the pass did not match the layer"]
            raise NotServed("; ".join(reasons))
    return executable
