"""`tvm_lut.autotune`: pick exact or PQ (K, V) for every layer under an accuracy budget, from latencies measured
on the target.

The cheap-to-expensive ladder (NNCF and INC end the same way, HAWQ-V3 solves the middle step):
1. latency table: every choice of every layer compiled alone for the target and timed (`latency`, cached);
2. sensitivity: both proxies of every PQ choice with k-means centroids, on calibration data (`sensitivity`);
3. calibration of the proxy (`AutotuneConfig.start` "calibrated"): a few k-means plans are evaluated with `eval_fn`
   to learn how many metric points one proxy unit costs (`alpha`), first the fastest plan, then the solver's plan
   at the budget;
4. trials: each plan is learned with the existing trainer (`tvm_lut.pq.handler.learn_pq`) and evaluated with
   `eval_fn`, at most `max_trials` of them, no new one after `time_limit_s`.
   - start "calibrated": the solver's plan (`solver`) at the budget first. Within the budget, the next trial
     loosens the prediction by what learning recovered (a faster plan); over it, layers go back to exact
     cumulatively, the most harmful by the proxy first, each step measured with `eval_fn`, until the learned model
     is within the budget, and that plan is learned next.
   - start "fastest": the fastest plan of the latency table first (accuracy not predicted: learning the
     centroids with the weights recovers most of a k-means drop, which a k-means calibration cannot know). Within
     the budget it is the answer; over it, the repair measures each PQ layer's effect on the learned model (its
     calibration loss with that layer alone exact, `sensitivity.restore_effects`), shares the measured drop by
     those effects, and the solver moves the layers that hurt most to safer choices (smaller V, K=16, exact) until
     the prediction fits the budget; that plan is learned next, and repaired again if it misses;
5. the whole-model guard (`guard`): the fastest trial within the budget, the exact model, and that trial with each
   group of its PQ layers restored are compiled whole and timed together; what does not make the compiled model
   measurably faster goes back to exact (the learned model is evaluated again when it does).
The result is that guarded plan (the exact model when no trial kept the budget or no PQ layer pays), so the
autotuned model is not slower than the exact one by the measurement it was chosen on.

Everything measured or learned is written to the output directory's state folder as it is produced (`state.json`,
the latency cache, the sensitivity files, one folder per trial with its bundle, trained weights and training
checkpoint): the same call on the same directory resumes. The result is written as an artifact (`output`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tvm_lut.autotuning import sensitivity as sensitivity_stage
from tvm_lut.autotuning.config import PROXIES, AutotuneConfig
from tvm_lut.autotuning.guard import restore_unpaid
from tvm_lut.autotuning.latency import LatencyTable, cache_path
from tvm_lut.autotuning.layers import EXACT, Choice, LayerSpec, find_layers
from tvm_lut.autotuning.output import state_dir
from tvm_lut.autotuning.plan import LayerPlan, Plan
from tvm_lut.autotuning.solver import Option, solve
from tvm_lut.pq.config import PQConfig

log = logging.getLogger(__name__)

STATE_NAME = "state.json"
STATE_VERSION = 1
CALIBRATION_STEPS = 3  # k-means plans evaluated to scale the proxy to metric points
LOOSEN_FLOOR = 0.25  # a trial within budget loosens the prediction by at most this factor
PARTS = ("latency", "sensitivity", "calibration", "learning", "evaluation", "repair", "guard")
# Rows per layer the sensitivity's k-means clusters (at most `PQConfig.kmeans_rows`): k-means dominates that stage
# once the task loss is not asked for (K=16 V=2 on 4,096 rows of 384 took 7 s on the shared 2-core EPYC, 370
# choices on MiniLM), and a ranking of the choices needs fewer rows than the centroids a trial starts from.
SENSITIVITY_ROWS = 1024


@dataclass
class AutotuneResult:
    """The chosen plan with its learned tables and model, every plan tried, and the wall time of each part."""

    plan: Plan
    bundle: Any  # tvm_lut.Bundle of the plan's PQ layers; None when the plan keeps every layer exact
    model: Any  # the torch model the bundle's fingerprints match (trained weights, every layer exact)
    trials: list[Plan]
    calibration: list[dict]  # the k-means plans evaluated: choices, proxy sum, measured drop
    seconds: dict[str, float]
    kept: dict[str, str] = field(default_factory=dict)  # layers never considered, and why
    out_dir: Path | None = None


class _State:
    """What a run has done so far, in `OUT_DIR/state.json` (rewritten after every step)."""

    def __init__(self, path: Path | None, config: AutotuneConfig):
        self.path = path
        self.data = {"version": STATE_VERSION, "config": json.loads(config.to_json()), "exact_metric": None,
                     "calibration": [], "trials": [], "alpha": None, "forced_exact": [], "phase": "loosen",
                     "next": None, "done": False, "guard": None, "seconds": {part: 0.0 for part in PARTS}}
        if path is not None and path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("version") != STATE_VERSION:
                raise ValueError(f"{path} was written by another version of the autotuner")
            # a config saved before a field existed reads as that field's default
            saved["config"] = json.loads(AutotuneConfig.from_json(json.dumps(saved["config"])).to_json())
            if saved["config"] != self.data["config"]:
                raise ValueError(f"{path} belongs to a run with another AutotuneConfig ({saved['config']}); "
                                 "use a new output directory or the same config")
            # a state written before the guard existed lacks its keys: they start empty
            self.data = {**self.data, **saved, "seconds": {**self.data["seconds"], **saved["seconds"]}}

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.data[key] = value
        self.save()

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.with_suffix(".tmp").write_text(json.dumps(self.data, indent=1) + "\n")
            self.path.with_suffix(".tmp").replace(self.path)

    def timed(self, part: str):
        state = self

        class _Timer:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                state.data["seconds"][part] += time.perf_counter() - self.start
                state.save()

        return _Timer()


def autotune(model, calib_batches, eval_fn: Callable[[Any], float], config: AutotuneConfig, target=None,
             database=None, *, example_inputs: tuple | None = None, learning: PQConfig | None = None,
             learn_batches=None, out_dir=None, source: str = "python", progress: bool = True,
             tracker=None) -> AutotuneResult:
    """Choose exact or PQ (K, V) per layer of `model` (see the module docstring).

    calib_batches: batches (`tvm_lut.batches`) for the sensitivity and k-means; learn_batches: for learning
        centroids (default: the calibration batches).
    eval_fn(model) -> float: the user's metric on held-out data, higher is better; called on torch models.
    config: what may be chosen and the budget. learning: how centroids are learned (`PQConfig`; its K, V and
        layer selection are replaced by each plan's).
    target: the target latencies are measured for (default `schedules.host_target()`; a preset name or a TVM target,
        `schedules.target.resolve_target`); tracker: a `schedules.rpc.Tracker` whose devices measure them (needed
        for a target that does not run here); database: a tuning directory (`tvm-lut tune --db`): its records time
        the exact layers and it caches the latency table.
    example_inputs: the inputs the model is deployed with (latency depends on their shape); default: the inputs
        of the first calibration batch.
    out_dir: where state is kept as it is produced, and the result written (`tvm_lut.autotuning.output`); the
        same call resumes from it. source: what the model is, for the artifact's manifest (a model name, a path).
    """
    import torch

    from schedules.target import resolve_target
    from tvm_lut.batches import as_batch_list, split_batch
    from tvm_lut.pq.train import TeacherTargets

    if not isinstance(config, AutotuneConfig):
        raise TypeError(f"config must be an AutotuneConfig, got {type(config).__name__}")
    if not callable(eval_fn):
        raise TypeError("eval_fn must be callable: eval_fn(model) -> float, higher is better")
    calib = as_batch_list(calib_batches)
    learn = calib if learn_batches is None else as_batch_list(learn_batches)
    learning = PQConfig() if learning is None else learning
    example_inputs = split_batch(calib[0])[0] if example_inputs is None else tuple(example_inputs)
    target = resolve_target(target)
    out_dir = None if out_dir is None else Path(out_dir)
    work_dir = None if out_dir is None else state_dir(out_dir)
    state = _State(None if work_dir is None else work_dir / STATE_NAME, config)
    start = time.monotonic()

    def out_of_time() -> bool:
        return config.time_limit_s is not None and time.monotonic() - start > config.time_limit_s

    model = model.eval()
    specs, kept = find_layers(model, example_inputs, config)
    if not specs:
        raise ValueError(f"no layer of the model can be product-quantized under this config: {kept}")
    choices = {spec.name: spec.choices(config) for spec in specs}

    with state.timed("latency"):
        latencies = LatencyTable(target, cache_path(database, target, work_dir))
        latencies.measure(specs, choices, target, database, progress=progress, tracker=tracker)
    choices = {name: _worth_measuring(latencies, _spec(specs, name), options) for name, options in choices.items()}

    with state.timed("sensitivity"):
        sensitivity = sensitivity_stage.measure(model, specs, choices, calib,
                                                kmeans_rows=min(learning.kmeans_rows, SENSITIVITY_ROWS),
                                                kmeans_iters=learning.kmeans_iters, seed=learning.seed,
                                                out_dir=work_dir, progress=progress,
                                                with_task_loss=config.proxy == "task_loss")
    if state["exact_metric"] is None:
        with state.timed("evaluation"):
            state["exact_metric"] = float(eval_fn(model))
    exact_metric = state["exact_metric"]
    budget = config.allowed_drop(exact_metric)
    planner = _Planner(specs, choices, latencies, sensitivity, config, str(target), budget, exact_metric)

    with state.timed("calibration"), torch.no_grad():
        # only before the first trial: a trial rescales the proxy by what learning recovered, which a calibration
        # step redone on resume would overwrite
        while (config.start == "calibrated" and not state["trials"] and len(state["calibration"]) < CALIBRATION_STEPS
               and not out_of_time()):
            alpha = state["alpha"]
            plan = planner.solve(float("inf") if alpha is None else budget / alpha, set())
            if any(entry["choices"] == _labels(plan) for entry in state["calibration"]):
                break  # converged
            proxy = planner.proxy_sum(plan)
            drop = exact_metric - float(eval_fn(sensitivity_stage.kmeans_model(model, plan.choices, sensitivity)))
            state["calibration"] = state["calibration"] + [{"choices": _labels(plan), "proxy": proxy, "drop": drop,
                                                            "latency_us": plan.latency_us}]
            if proxy > 0 and drop > 0:
                state["alpha"] = drop / proxy
            elif alpha is None:
                state["alpha"] = budget / max(proxy, 1e-12) if proxy > 0 else 1.0

    if state["alpha"] is None:  # the time limit left no calibration: proxy units read as metric points
        state["alpha"] = 1.0
    trials = [Plan.from_dict(t["plan"]) for t in state["trials"]]
    learned_models = {}
    teacher_targets = TeacherTargets(model, learning.feature_distill)  # every trial learns from the same teacher
    while not state["done"] and len(trials) < config.max_trials and not out_of_time():
        plan = Plan.from_dict(state["next"]) if state["next"] is not None else _next_plan(planner, state, trials)
        if plan is None or not plan.pq_layers:
            state["done"] = True  # nothing new to try
            break
        state["next"] = plan.to_dict()  # resuming re-learns this same plan from its checkpoint
        trial_dir = None if work_dir is None else work_dir / "trials" / str(len(trials) + 1)
        with state.timed("learning"):
            learned = learn_cached(model, learn, plan.learning_config(learning), trial_dir, progress,
                                   teacher_targets)
        with state.timed("evaluation"):
            plan = plan.with_metric(float(eval_fn(learned.model)))
        trials.append(plan)
        record = {"plan": plan.to_dict(), "dir": None if trial_dir is None else str(trial_dir)}
        if plan.drop <= budget:
            predicted = state["alpha"] * planner.proxy_sum(plan)
            if config.start == "fastest":
                state["done"] = True  # the fastest plan, or its repair, within the budget
            elif state["phase"] == "loosen" and predicted > 0:
                state["alpha"] = state["alpha"] * max(max(plan.drop, 0.0) / predicted, LOOSEN_FLOOR)
            else:
                state["done"] = True  # repaired to within budget: the repair found its plan
            state["next"] = None
        elif config.start == "fastest" and len(trials) >= config.max_trials:
            state["done"], state["next"] = True, None  # no trial left to learn a repair: measuring it is wasted
        elif config.start == "fastest":
            with state.timed("repair"), torch.no_grad():
                effects = sensitivity_stage.restore_effects(
                    learned.model, plan.pq_layers, calib, lambda name: _with_exact(learned.model, [name]), model)
            record["effects"] = effects
            state["phase"] = "repair"
            state["next"] = planner.repaired(plan, effects).to_dict()
        else:
            with state.timed("evaluation"):
                predicted = {name: planner.sensitivity.value(name, choice, config.proxy)
                             for name, choice in plan.choices.items() if not choice.exact}
                restore = _most_harmful(learned.model, plan, eval_fn, budget, predicted)
            record["restored"] = restore
            state["phase"] = "repair"
            state["forced_exact"] = sorted(set(state["forced_exact"]) | set(restore))
            state["next"] = planner.restored(plan, restore).to_dict()
        state["trials"] = state["trials"] + [record]
        learned_models[len(trials) - 1] = learned
    measure = _whole_model_timer(example_inputs, target, database, tracker)
    result = _result(model, state, trials, learned_models, planner, kept, out_dir, eval_fn, measure)
    if out_dir is not None:
        from tvm_lut.autotuning.output import input_specs, write_output

        write_output(result, config, input_specs(model, example_inputs), source)
    return result


def _next_plan(planner: "_Planner", state: _State, trials: list[Plan]) -> Plan | None:
    """The solver's plan at the current scale of the proxy; a plan without PQ layers or one already tried loosens
    the scale (by `LOOSEN_FLOOR`) until a new plan comes, or the fastest plan was tried (None). In the repair phase
    the solver is not asked again (None)."""
    if state["phase"] == "repair":
        return None
    forced = set(state["forced_exact"])
    if planner.config.start == "fastest":
        return None if trials else planner.solve(float("inf"), forced)
    fastest = _labels(planner.solve(float("inf"), forced))
    while True:
        plan = planner.solve(planner.budget / state["alpha"], forced)
        if plan.pq_layers and all(_labels(plan) != _labels(t) for t in trials):
            return plan
        if _labels(plan) == fastest:
            return None
        state["alpha"] = state["alpha"] * LOOSEN_FLOOR


def _worth_measuring(latencies: LatencyTable, spec: LayerSpec, options: list[Choice]) -> list[Choice]:
    """Exact and the PQ choices served and faster than exact alone: a slower one can never be chosen (exact costs no
    accuracy), so its sensitivity is not measured (the MiniLM head's PQ forms, the CNN's conv1)."""
    exact_us = latencies.get(spec, EXACT)
    return [c for c in options if c.exact or (latencies.get(spec, c) is not None and latencies.get(spec, c) < exact_us)]


def _spec(specs: list[LayerSpec], name: str) -> LayerSpec:
    return next(spec for spec in specs if spec.name == name)


def _labels(plan: Plan) -> dict[str, str]:
    return {name: choice.label for name, choice in plan.choices.items()}


class _Planner:
    """Builds plans from the latency table and the sensitivities."""

    def __init__(self, specs, choices, latencies, sensitivity, config, target, budget, exact_metric):
        self.specs, self.choices, self.latencies, self.sensitivity = specs, choices, latencies, sensitivity
        self.config, self.target, self.budget, self.exact_metric = config, target, budget, exact_metric
        self.learned: dict[str, Any] = {}

    def layer_plan(self, spec: LayerSpec, choice: Choice) -> LayerPlan:
        proxies = ({} if choice.exact else self.sensitivity.proxies[spec.name][choice.label])
        return LayerPlan(spec.name, spec.kind, choice, self.latencies.get(spec, EXACT),
                         self.latencies.get(spec, choice),
                         {proxy: proxies.get(proxy, 0.0) for proxy in PROXIES})

    def solve(self, proxy_budget: float, forced_exact: set[str]) -> Plan:
        """The fastest plan whose summed proxy is within `proxy_budget` (inf: the fastest plan)."""
        options = []
        for spec in self.specs:
            allowed = [EXACT] if spec.name in forced_exact else self.choices[spec.name]
            options.append([(c, Option(self.latencies.get(spec, c), self.sensitivity.value(spec.name, c, self.config.proxy)))
                            for c in allowed])
        if proxy_budget == float("inf"):
            picks = [min(range(len(o)), key=lambda i, o=o: o[i][1].latency) for o in options]
        else:
            picks = solve([[option for _, option in o] for o in options], proxy_budget, self.config.resolution)
        return self._plan([o[i][0] for o, i in zip(options, picks)])

    def repaired(self, plan: Plan, effects: dict[str, float]) -> Plan:
        """The fastest plan predicted within the budget whose layers are each as safe as in `plan` or safer, from
        `plan`'s measured drop and `effects` (per PQ layer, how much making it alone exact lowered the learned
        model's loss; `sensitivity.restore_effects`). A layer's predicted drop is its share of the measured drop
        by effect; a safer choice's is that scaled by its proxy against the current choice's (within a layer the
        proxies rank the choices like the task loss); exact predicts none. Effects all <= 0 share it by the proxy."""
        proxy = self.config.proxy
        current = {name: self.sensitivity.value(name, plan.choices[name], proxy) for name in plan.pq_layers}
        shares = {name: max(effects.get(name, 0.0), 0.0) for name in plan.pq_layers}
        if sum(shares.values()) <= 0:
            shares = dict(current) if sum(current.values()) > 0 else {name: 1.0 for name in plan.pq_layers}
        scale = max(plan.drop, 0.0) / sum(shares.values())
        options = []
        for spec in self.specs:
            choice = plan.choices[spec.name]
            allowed = [EXACT] if choice.exact else [
                c for c in self.choices[spec.name]
                if c.exact or self.sensitivity.value(spec.name, c, proxy) <= current[spec.name]]

            def predicted(c, name=spec.name):
                if c.exact:
                    return 0.0
                ratio = self.sensitivity.value(name, c, proxy) / current[name] if current[name] > 0 else 1.0
                return scale * shares[name] * ratio

            options.append([(c, Option(self.latencies.get(spec, c), predicted(c))) for c in allowed])
        picks = solve([[option for _, option in o] for o in options], self.budget, self.config.resolution)
        return self._plan([o[i][0] for o, i in zip(options, picks)])

    def restored(self, plan: Plan, names: list[str]) -> Plan:
        return self._plan([EXACT if name in names else choice for name, choice in plan.choices.items()])

    def _plan(self, chosen: list[Choice]) -> Plan:
        return Plan(tuple(self.layer_plan(spec, c) for spec, c in zip(self.specs, chosen)), self.target, self.budget,
                    self.exact_metric)

    def exact_plan(self) -> Plan:
        return self._plan([EXACT] * len(self.specs)).with_metric(self.exact_metric)

    def proxy_sum(self, plan: Plan) -> float:
        return sum(self.sensitivity.value(name, c, self.config.proxy) for name, c in plan.choices.items())


def learn_cached(model, batches, config: PQConfig, trial_dir: Path | None, progress: bool, teacher_targets=None):
    """learn_pq for one plan, its bundle and trained weights saved in `trial_dir` (reloaded when already there);
    `teacher_targets` (`tvm_lut.pq.train.TeacherTargets`) shares the teacher's outputs between plans."""
    from tvm_lut.pq.handler import learn_pq

    if trial_dir is not None and (trial_dir / "done").is_file():
        return _load_trial(model, trial_dir)
    checkpoint = None
    if trial_dir is not None:
        trial_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = trial_dir / "checkpoint.safetensors"
    learned = learn_pq(model, batches, config, checkpoint=checkpoint, progress=progress,
                       teacher_targets=teacher_targets)
    if trial_dir is not None:
        from safetensors.torch import save_model

        from tvm_lut.pq.swap import unswap_

        learned.bundle.save(trial_dir / "bundle.safetensors")
        save_model(unswap_(copy.deepcopy(learned.model)), str(trial_dir / "model.safetensors"))
        (trial_dir / "done").write_text("")
        checkpoint.unlink(missing_ok=True)
    return learned


@dataclass
class _Trial:
    bundle: Any
    model: Any  # the PQ torch model (what eval_fn scores)


def _load_trial(model, trial_dir: Path) -> _Trial:
    """A finished trial's bundle and its PQ model: the trained weights with the learned centroids swapped in."""
    import torch
    from safetensors.torch import load_model

    from tvm_lut.bundle import Bundle
    from tvm_lut.pq.layers import PQConv2d, PQLinear
    from tvm_lut.pq.swap import pq_layers

    bundle = Bundle.load(trial_dir / "bundle.safetensors")
    student = copy.deepcopy(model)
    load_model(student, str(trial_dir / "model.safetensors"))
    for name, table in bundle.items():
        exact = student.get_submodule(name)
        layer = (PQConv2d if table.layer == "conv2d" else PQLinear)(exact, table.K, table.V)
        with torch.no_grad():
            layer.centroids.copy_(torch.from_numpy(table.centroids))
        sensitivity_stage.set_module(student, name, layer)
    assert set(pq_layers(student)) == set(bundle)
    return _Trial(bundle, student.eval())


def _most_harmful(pq_model, plan: Plan, eval_fn, budget: float, predicted: dict[str, float]) -> list[str]:
    """The PQ layers to restore to exact: the shortest run of the most harmful by the proxy (`predicted`) that
    brings the learned model within `budget`, each candidate run measured with `eval_fn` on the learned model with
    those layers exact (INC's cumulative fallback, searched by doubling the run then bisecting: about 2 log2(n)
    evaluations for n PQ layers instead of up to n, i.e. 11 instead of 36 on MiniLM, ~30 s each on 1,000 tweets).
    Restoring more layers is taken not to lower the metric; if no run keeps the budget, the best measured."""
    order = sorted(plan.pq_layers, key=lambda n: predicted[n], reverse=True)
    measured: dict[int, float] = {0: plan.metric}

    def metric(count: int) -> float:
        if count not in measured:
            measured[count] = float(eval_fn(_with_exact(pq_model, order[:count])))
        return measured[count]

    def within(count: int) -> bool:
        return plan.exact_metric - metric(count) <= budget

    low, high = 0, 1  # low: known over budget; high: the next run tried
    while high < len(order) and not within(high):
        low, high = high, min(2 * high, len(order))
    if within(high):
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if within(middle) else (middle, high)
    else:
        high = max(measured, key=lambda count: (measured[count], -count)) or 1
    log.info("restoring %s to exact (metric %.4g -> %.4g, %d evaluations)", order[:high], plan.metric,
             measured.get(high, float("nan")), len(measured) - 1)
    return order[:high]


def _with_exact(pq_model, names):
    """A copy of the PQ model `pq_model` with the layers `names` exact again (their trained weights)."""
    from torch import nn

    from tvm_lut.pq.swap import unswap_

    restored = copy.deepcopy(pq_model)
    for name in names:
        holder = nn.Module()
        holder.layer = restored.get_submodule(name)
        sensitivity_stage.set_module(restored, name, unswap_(holder).layer)
    return restored.eval()


def _result(model, state: _State, trials: list[Plan], learned_models: dict, planner: _Planner, kept: dict,
            out_dir: Path | None, eval_fn, measure) -> AutotuneResult:
    """The fastest trial within the budget, less the PQ layers that do not pay in the whole model (`guard`; its
    outcome is kept in the state); the exact model if no trial kept the budget or no PQ layer pays."""
    from tvm_lut.pq.swap import unswap_

    within = [i for i, plan in enumerate(trials) if plan.drop <= planner.budget]
    plan, bundle, final = planner.exact_plan(), None, model
    if within:
        best = min(within, key=lambda i: trials[i].latency_us)
        learned = learned_models.get(best) or _load_trial(model, Path(state["trials"][best]["dir"]))
        trained = unswap_(copy.deepcopy(learned.model)).eval()
        checked = state["guard"] if state["guard"] and state["guard"]["trial"] == best else None
        if checked is None:
            with state.timed("guard"):
                checked = _guard(trials[best], learned, trained, planner, eval_fn, measure)
            state["guard"] = {"trial": best, **checked}
        guarded = dataclasses.replace(planner.restored(trials[best], checked["restored"]),
                                      whole_exact_us=checked["exact_us"], whole_us=checked["plan_us"],
                                      restored=tuple(checked["restored"]))
        within_budget = checked["metric"] is not None and planner.exact_metric - checked["metric"] <= planner.budget
        if checked["kept"] and within_budget:
            plan, final = guarded.with_metric(checked["metric"]), trained
            bundle = _sub_bundle(learned.bundle, checked["kept"])
        else:
            log.warning("no PQ layer of the best plan pays in the whole model within the budget: every layer exact")
            plan = dataclasses.replace(plan, whole_exact_us=checked["exact_us"], whole_us=checked["exact_us"],
                                       restored=tuple(trials[best].pq_layers))
    else:
        log.warning("no plan tried kept the drop within %.4g: the result keeps every layer exact", planner.budget)
    return AutotuneResult(plan, bundle, final, trials, list(state["calibration"]), dict(state["seconds"]), kept,
                          out_dir)


def _guard(plan: Plan, learned, trained, planner: _Planner, eval_fn, measure) -> dict:
    """`guard.restore_unpaid` on `plan` (groups: the PQ layers of one shape and choice), then the metric of the
    learned model with the restored layers exact (None when nothing is left to score)."""
    specs = {spec.name: spec for spec in planner.specs}
    groups: dict[str, list[str]] = {}
    for name in plan.pq_layers:
        groups.setdefault(f"{specs[name].key()} {plan.choices[name].label}", []).append(name)
    outcome = restore_unpaid(groups, lambda variants: measure(trained, learned.bundle, variants))
    metric = plan.metric
    if outcome.restored and outcome.kept:
        metric = float(eval_fn(_with_exact(learned.model, outcome.restored)))
    return {"kept": list(outcome.kept), "restored": list(outcome.restored), "exact_us": outcome.exact_us,
            "plan_us": outcome.plan_us, "metric": metric if outcome.kept else None}


def _whole_model_timer(example_inputs: tuple, target, database, tracker):
    """measure(model, bundle, variants): microseconds of `model` compiled with the tables of each variant's PQ
    layers (`guard.restore_unpaid`'s `time_models`), timed together through `latency.measure_models`."""
    from tvm_lut.autotuning import latency

    def measure(model, bundle, variants: dict[str, frozenset]) -> dict[str, float]:
        models = {label: (model, _sub_bundle(bundle, layers)) for label, layers in variants.items()}
        return latency.measure_models(models, example_inputs, target, database, tracker)

    return measure


def _sub_bundle(bundle, names):
    """The tables of `bundle` for the layers `names` (None when there are none)."""
    from tvm_lut.bundle import Bundle

    tables = {name: table for name, table in bundle.items() if name in set(names)}
    return Bundle(tables) if tables else None
