"""`tvm_lut.autotune` on a small MLP with synthetic latencies: the result keeps the budget, the output directory
holds the plan, report and plot, and a run interrupted mid-way resumes without measuring or learning again what it
had, ending where an uninterrupted run ends. Then `tvm-lut autotune fashion-cnn --quick` end to end."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import tvm_lut
from tvm_lut.artifact import load_artifact
from tvm_lut.autotuning import latency, sensitivity
from tvm_lut.autotuning.config import AutotuneConfig
from tvm_lut.autotuning.plan import Plan
from tvm_lut.cli import main
from tvm_lut.pq import handler
from tvm_lut.pq.config import PQConfig

# Synthetic latencies (us): PQ is faster than exact on fc1 and fc2, slower on fc3.
EXACT_US = {"linear w[64, 32]": 20.0, "linear w[64, 64]": 30.0, "linear w[4, 64]": 2.0}
PQ_FACTOR = {"linear w[64, 32]": 0.5, "linear w[64, 64]": 0.6, "linear w[4, 64]": 1.5}


def fake_measure(spec, choices, target, database=None, tracker=None):
    key = spec.key().split(" x")[0]
    return {choice: EXACT_US[key] * (1.0 if choice.exact else PQ_FACTOR[key] * (0.75 + choice.K / 64 + choice.V / 256))
            for choice in choices}


def fake_measure_models(variants, example_inputs, target, database=None, tracker=None):
    """The whole MLP as the sum of its layers' fake latencies (the guard keeps what pays under this arithmetic)."""
    shapes = {"fc1": "linear w[64, 32]", "fc2": "linear w[64, 64]", "fc3": "linear w[4, 64]"}
    times = {}
    for label, (_model, bundle) in variants.items():
        pq = {} if bundle is None else dict(bundle.items())
        times[label] = sum(EXACT_US[key] * (1.0 if name not in pq else PQ_FACTOR[key] * (
            0.75 + pq[name].K / 64 + pq[name].V / 256)) for name, key in shapes.items())
    return times


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 4)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _task():
    torch.manual_seed(0)
    teacher, model = MLP().eval(), MLP()
    x = torch.randn(1024, 32)
    y = teacher(x).argmax(-1).detach()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = nn.functional.cross_entropy(model(x[:512]), y[:512])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 512, 128)]
    test_x, test_y = x[512:], y[512:]

    def eval_fn(m):
        with torch.no_grad():
            return 100.0 * float((m(test_x).argmax(-1) == test_y).float().mean())

    return model.eval(), batches, eval_fn


CONFIG = AutotuneConfig(K=(8, 16), V=(2, 4, 8), max_drop=3.0, max_trials=3)
LEARNING = PQConfig(epochs=2, kmeans_iters=5, kmeans_rows=512, input_gradient="exact", lr=1e-2)


def _run(out_dir, eval_fn, model, batches):
    return tvm_lut.autotune(model, batches, eval_fn, CONFIG, target=None, example_inputs=(torch.zeros(1, 32),),
                            learning=LEARNING, out_dir=out_dir, progress=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def counted(monkeypatch):
    """Counts of latency measurements, sensitivity forward passes and learning runs."""
    counts = {"measure": 0, "loss": 0, "learn": 0, "whole": 0}

    def count(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(latency, "measure_choices", count("measure", fake_measure))
    monkeypatch.setattr(latency, "measure_models", count("whole", fake_measure_models))
    monkeypatch.setattr(sensitivity, "task_loss", count("loss", sensitivity.task_loss))
    monkeypatch.setattr(handler, "learn_pq", count("learn", handler.learn_pq))
    return counts


def test_keeps_the_budget_and_writes_the_output_directory(tmp_path, counted):
    model, batches, eval_fn = _task()
    result = _run(tmp_path / "out", eval_fn, model, batches)
    exact = eval_fn(model)
    assert result.plan.drop <= 3.0 and result.plan.metric >= exact - 3.0
    assert result.plan.pq_layers  # some layer is worth PQ within this budget
    assert result.plan.choices["fc3"].exact  # PQ is slower there, whatever its accuracy
    measured = sensitivity.Sensitivity.load(tmp_path / "out" / "autotune-state").proxies
    assert set(measured) == {"fc1", "fc2"}  # fc3's PQ forms can never be chosen: their sensitivity is not measured
    assert result.plan.latency_us <= result.plan.exact_us
    for trial in result.trials:
        assert trial.metric is not None and trial.budget == 3.0
    saved = Plan.from_json((tmp_path / "out" / "plan.json").read_text())
    assert saved == result.plan
    assert [layer["name"] for layer in json.loads((tmp_path / "out" / "plan.json").read_text())["layers"]] == \
        ["fc1", "fc2", "fc3"]
    assert (tmp_path / "out" / "plans.png").stat().st_size > 0
    assert "wall time by part" in (tmp_path / "out" / "report.txt").read_text()
    if result.bundle is not None:  # the bundle's fingerprints match the returned model's weights
        assert all(result.bundle.find_pq(result.model.get_submodule(name).weight.detach().numpy()) is not None
                   for name in result.plan.pq_layers)


def test_resumes_after_an_interruption_without_redoing_work(tmp_path, counted):
    model, batches, eval_fn = _task()
    reference = _run(tmp_path / "reference", eval_fn, model, batches)
    total = dict(counted)
    for key in counted:
        counted[key] = 0

    calls = {"n": 0}

    def interrupted(m):
        calls["n"] += 1
        if calls["n"] == 5:  # after the exact metric and the proxy's calibration, during the trials
            raise KeyboardInterrupt
        return eval_fn(m)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "out", interrupted, model, batches)
    before = dict(counted)
    resumed = _run(tmp_path / "out", eval_fn, model, batches)
    assert counted["measure"] == before["measure"]  # no latency measured again
    assert counted["loss"] == before["loss"]  # no sensitivity recomputed
    assert counted["learn"] == total["learn"]  # over both runs: a finished trial is not learned again
    assert counted["whole"] == total["whole"]  # the guard ran once, in the run that finished
    assert _labels(resumed.plan) == _labels(reference.plan)
    assert resumed.plan.metric == pytest.approx(reference.plan.metric)
    assert len(resumed.trials) == len(reference.trials)


def test_the_guard_restores_a_layer_that_does_not_pay_in_the_whole_model(tmp_path, counted, monkeypatch):
    """fc2's PQ form is faster alone but, in the whole model, pays a 40 us cost (say, an epilogue the exact layer
    fused): the result keeps it exact, its table leaves the bundle, and plan.json records both whole-model times."""
    def slower_with_pq_fc2(variants, *args, **kwargs):
        times = fake_measure_models(variants, *args, **kwargs)
        return {label: us + (40.0 if bundle is not None and "fc2" in dict(bundle.items()) else 0.0)
                for (label, us), (_, bundle) in zip(times.items(), variants.values())}

    monkeypatch.setattr(latency, "measure_models", slower_with_pq_fc2)
    model, batches, eval_fn = _task()
    result = _run(tmp_path / "out", eval_fn, model, batches)
    assert any("fc2" in trial.pq_layers for trial in result.trials)  # the solver chose it
    assert result.plan.choices["fc2"].exact and "fc2" in result.plan.restored
    assert result.bundle is None or "fc2" not in dict(result.bundle.items())
    assert result.plan.whole_us <= result.plan.whole_exact_us
    assert result.plan.drop <= 3.0
    saved = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert saved["whole_model"] == {"exact_us": result.plan.whole_exact_us, "plan_us": result.plan.whole_us}
    assert "fc2" in saved["restored"]
    assert "whole model, compiled and timed together" in (tmp_path / "out" / "report.txt").read_text()


def test_a_finished_run_called_again_does_no_work(tmp_path, counted):
    """Not even the proxy's calibration: once a trial exists its scale was loosened by what learning recovered, and a
    calibration step redone on resume would overwrite it (a resumed MiniLM run re-scaled its proxy 9x)."""
    model, batches, eval_fn = _task()
    first = _run(tmp_path / "out", eval_fn, model, batches)
    state = json.loads((tmp_path / "out" / "autotune-state" / "state.json").read_text())
    # fewer steps than CALIBRATION_STEPS, as a run whose calibration converged early (here none, so that the plan a
    # redone step would solve is new whatever the loosened scale)
    state["calibration"] = []
    (tmp_path / "out" / "autotune-state" / "state.json").write_text(json.dumps(state))
    before = dict(counted)
    calls = []
    again = _run(tmp_path / "out", lambda m: calls.append(1) or eval_fn(m), model, batches)
    assert calls == [] and counted == before
    assert _labels(again.plan) == _labels(first.plan)
    saved = json.loads((tmp_path / "out" / "autotune-state" / "state.json").read_text())
    assert saved["alpha"] == state["alpha"] and saved["calibration"] == []


def _labels(plan):
    return {name: choice.label for name, choice in plan.choices.items()}


def test_another_config_in_the_same_directory_is_refused(tmp_path, counted):
    model, batches, eval_fn = _task()
    _run(tmp_path / "out", eval_fn, model, batches)
    with pytest.raises(ValueError, match="another AutotuneConfig"):
        tvm_lut.autotune(model, batches, eval_fn, AutotuneConfig(max_drop=5.0), example_inputs=(torch.zeros(1, 32),),
                         out_dir=tmp_path / "out", progress=False)


def test_misuse_fails_clearly():
    model, batches, eval_fn = _task()
    with pytest.raises(TypeError, match="AutotuneConfig"):
        tvm_lut.autotune(model, batches, eval_fn, PQConfig())
    with pytest.raises(TypeError, match="eval_fn must be callable"):
        tvm_lut.autotune(model, batches, 3.0, CONFIG)
    with pytest.raises(ValueError, match="no calibration batches"):
        tvm_lut.autotune(model, [], eval_fn, CONFIG)


def test_cli_quick_writes_the_plan(tmp_path):
    """The CI-sized command of issue 14, as written (real latencies, a small CNN trained here)."""
    out = tmp_path / "cnn"
    assert main(["autotune", "fashion-cnn", "--max-drop", "1.0", "--quick", "-o", str(out), "--no-progress"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert [layer["name"] for layer in plan["layers"]] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    for layer in plan["layers"]:
        assert layer["choice"] in ("exact", "pq") and layer["exact_us"] > 0 and layer["chosen_us"] > 0
        assert (layer["K"] is None) == (layer["choice"] == "exact")
    assert plan["exact_metric"] - plan["metric"] <= 1.0
    # the output directory is a learned artifact: `tvm-lut compile OUT_DIR` replaces exactly the plan's PQ layers
    assert load_artifact(out).read_json("plan.json") == plan
    report_path = tmp_path / "report.json"
    assert main(["compile", str(out), "-o", str(tmp_path / "lib.so"), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    (dense,) = [r for r in report["passes"] if r["pass"] == "LUTDense"] or [{"replaced": []}]
    assert len(dense["replaced"]) == sum(layer["choice"] == "pq" for layer in plan["layers"])


def test_repair_restores_the_shortest_run_in_predicted_order_within_budget(monkeypatch):
    """Over budget, layers go back to exact the most harmful by the proxy first: the shortest such run that brings
    the measured metric within the budget, found by doubling then bisecting (about 2 log2(n) evaluations, not n)."""
    from tvm_lut.autotuning import driver
    from tvm_lut.autotuning.layers import EXACT, Choice
    from tvm_lut.autotuning.plan import LayerPlan

    monkeypatch.setattr(driver, "_with_exact", lambda _model, names: frozenset(names))
    harm = {"a": 0.5, "b": 0.0, "c": 2.0, "d": 1.5}  # measured points each layer costs
    calls = []

    def eval_fn(exact_layers):
        calls.append(set(exact_layers))
        return 90.0 - sum(h for name, h in harm.items() if name not in exact_layers)

    layers = [LayerPlan(name, "linear", Choice(16, 4), 10.0, 5.0) for name in harm] + \
        [LayerPlan("e", "linear", EXACT, 1.0, 1.0)]
    plan = Plan(tuple(layers), budget=1.0, exact_metric=90.0).with_metric(86.0)
    predicted = {"c": 3.0, "b": 2.0, "d": 1.0, "a": 0.5}  # the proxy is wrong about b
    assert driver._most_harmful(None, plan, eval_fn, 1.0, predicted) == ["c", "b", "d"]
    assert calls == [{"c"}, {"c", "b"}, {"c", "b", "d", "a"}, {"c", "b", "d"}]  # 1, 2, 4 layers; then bisected
    # nothing helps: the most harmful by the proxy goes back, so the next plan differs
    assert driver._most_harmful(None, plan, lambda _model: 86.0, 1.0, predicted) == ["c"]

    # 36 layers (MiniLM's), each costing 0.25 points: the 12 most harmful must go back, in 2 log2(36) evaluations
    names = [f"l{i}" for i in range(36)]
    big = Plan(tuple(LayerPlan(n, "linear", Choice(16, 4), 10.0, 5.0) for n in names), budget=6.0,
               exact_metric=90.0).with_metric(81.0)
    calls.clear()
    restored = driver._most_harmful(None, big, lambda exact: calls.append(1) or 81.0 + 0.25 * len(exact), 6.0,
                                    {n: -i for i, n in enumerate(names)})
    assert restored == names[:12] and len(calls) <= 11




def _penalized(eval_fn, points: float):
    """eval_fn less `points` per K=8 PQ layer of the model: a learned drop the test decides."""
    from tvm_lut.pq.swap import pq_layers

    return lambda m: eval_fn(m) - points * sum(layer.K == 8 for layer in pq_layers(m).values())


def test_fastest_start_learns_the_fastest_plan_then_repairs_by_measurement(tmp_path, counted):
    """start="fastest": no k-means calibration; trial 1 is the fastest plan of the latency table; over the budget,
    the repair measures each PQ layer's effect on the learned model and moves layers to choices the proxy ranks as
    safe or safer (never faster-and-riskier), and that plan is learned next; the result keeps the budget."""
    model, batches, eval_fn = _task()
    config = dataclasses.replace(CONFIG, start="fastest")
    scored = _penalized(eval_fn, 2.0)  # two K=8 layers: 4 points, over the 3-point budget
    result = tvm_lut.autotune(model, batches, scored, config, example_inputs=(torch.zeros(1, 32),),
                              learning=LEARNING, out_dir=tmp_path / "out", progress=False)
    first, second = result.trials[:2]
    # fake_measure: PQ is fastest at the smallest K and V on fc1 and fc2, and slower than exact on fc3
    assert _labels(first) == {"fc1": "pq K=8 V=2", "fc2": "pq K=8 V=2", "fc3": "exact"} and first.drop > 3.0
    state = json.loads((tmp_path / "out" / "autotune-state" / "state.json").read_text())
    assert state["calibration"] == [] and set(state["trials"][0]["effects"]) == {"fc1", "fc2"}
    proxies = sensitivity.Sensitivity.load(tmp_path / "out" / "autotune-state").proxies
    for name in ("fc1", "fc2"):
        before, after = first.choices[name], second.choices[name]
        assert after.exact or proxies[name][after.label][CONFIG.proxy] <= proxies[name][before.label][CONFIG.proxy]
    assert second.latency_us > first.latency_us
    assert result.seconds["repair"] > 0 and result.seconds["calibration"] < 1.0
    assert result.plan.drop <= 3.0


def test_fastest_start_measures_no_repair_it_has_no_trial_left_to_learn(tmp_path, counted):
    model, batches, eval_fn = _task()
    config = dataclasses.replace(CONFIG, start="fastest", max_trials=1)
    result = tvm_lut.autotune(model, batches, _penalized(eval_fn, 2.0), config, example_inputs=(torch.zeros(1, 32),),
                              learning=LEARNING, out_dir=tmp_path / "out", progress=False)
    state = json.loads((tmp_path / "out" / "autotune-state" / "state.json").read_text())
    assert len(result.trials) == 1 and "effects" not in state["trials"][0] and result.seconds["repair"] == 0
    assert result.plan.pq_layers == [] and state["done"]  # over budget: the exact model


def test_repaired_shares_the_measured_drop_by_effect_and_only_moves_to_safer_choices():
    """Layer a carries all the measured drop (4 points, effect 0.4; b's effect 0): a moves to its safer choice
    (proxy a quarter of its current one: 1 point predicted) to fit the 2-point budget, b keeps its choice; b's
    faster choice that the proxy ranks riskier is never offered, though b's share of the drop is nothing."""
    from tvm_lut.autotuning import driver
    from tvm_lut.autotuning.layers import EXACT, Choice, LayerSpec
    from tvm_lut.autotuning.sensitivity import Sensitivity

    fast, safe, risky = Choice(8, 16), Choice(16, 16), Choice(8, 32)
    specs = [LayerSpec(n, "linear", (4, 16), (1, 16), True) for n in ("a", "b")]
    us = {EXACT: 10.0, fast: 4.0, safe: 5.0, risky: 3.0}

    class Latencies:
        def get(self, spec, choice):
            return us[choice]

    sens = Sensitivity(0.0, {n: {fast.label: {"fisher": 1.0}, safe.label: {"fisher": 0.25},
                                 risky.label: {"fisher": 2.0}} for n in ("a", "b")})
    planner = driver._Planner(specs, {n: [EXACT, fast, safe, risky] for n in ("a", "b")}, Latencies(), sens,
                              AutotuneConfig(proxy="fisher", start="fastest"), "llvm", 2.0, 90.0)
    plan = planner._plan([fast, fast]).with_metric(86.0)
    assert planner.repaired(plan, {"a": 0.4, "b": 0.0}).choices == {"a": safe, "b": fast}
    # a tighter budget: a goes exact (b predicts nothing); effects all <= 0 share the drop by the proxy
    planner.budget = 0.5
    assert planner.repaired(plan, {"a": 0.4, "b": -0.1}).choices == {"a": EXACT, "b": fast}
    planner.budget = 1.0  # by the proxy, 2 points each at `fast`, 0.5 at `safe`
    assert planner.repaired(plan, {"a": 0.0, "b": -0.1}).choices == {"a": safe, "b": safe}
