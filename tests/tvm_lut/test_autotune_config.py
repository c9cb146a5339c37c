"""AutotuneConfig and the plan: JSON round trips, and bad configs / plan files failing with a message that names
what is wrong (also through `tvm-lut autotune`)."""

import dataclasses

import pytest

from tvm_lut.autotuning.config import AutotuneConfig
from tvm_lut.autotuning.layers import EXACT, Choice, LayerSpec
from tvm_lut.autotuning.plan import LayerPlan, Plan
from tvm_lut.cli import main
from tvm_lut.pq.config import PQConfig


def test_config_round_trip():
    config = AutotuneConfig(K=(8,), V=(4, 9), exclude=("conv1",), max_drop=0.02, drop_kind="relative",
                            max_trials=3, time_limit_s=60.0, proxy="output_error")
    assert AutotuneConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("changes, message", [
    ({"K": (32,)}, r"K must be ints in \[2, 16\]"),
    ({"K": ()}, "K must be ints"),
    ({"V": (0, 4)}, "V must be positive ints"),
    ({"max_drop": -1.0}, "max_drop must be a finite number >= 0"),
    ({"max_drop": float("nan")}, "max_drop must be a finite number"),
    ({"drop_kind": "percent"}, "drop_kind must be one of"),
    ({"drop_kind": "relative", "max_drop": 1.0}, "is relative"),
    ({"max_trials": 0}, "max_trials must be an int >= 1"),
    ({"time_limit_s": 0}, "time_limit_s must be > 0"),
    ({"proxy": "hessian"}, "proxy must be one of"),
    ({"start": "slowest"}, "start must be one of"),
    ({"version": 99}, "version 99"),
])
def test_bad_configs_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        AutotuneConfig(**changes)


def test_bad_json_fails_clearly():
    with pytest.raises(ValueError, match=r"unknown fields \['budget'\]"):
        AutotuneConfig.from_json('{"budget": 1}')
    with pytest.raises(ValueError, match="must be an object"):
        AutotuneConfig.from_json("[1]")


def test_relative_budget_scales_with_the_metric():
    assert AutotuneConfig(max_drop=0.01, drop_kind="relative").allowed_drop(90.0) == pytest.approx(0.9)
    assert AutotuneConfig(max_drop=1.0).allowed_drop(90.0) == 1.0


def test_choices_of_a_layer_are_exact_then_the_vs_that_divide_its_row():
    conv = LayerSpec("conv2", "conv2d", (64, 32, 3, 3), (1, 32, 14, 14), True, padding=(1, 1))
    choices = conv.choices(AutotuneConfig(K=(8, 16), V=(4, 5, 9)))
    assert choices[0] == EXACT
    assert {c.V for c in choices[1:]} == {4, 9} and {c.K for c in choices[1:]} == {8, 16}
    assert Choice.from_label(Choice(8, 9).label) == Choice(8, 9) and Choice.from_label("exact") == EXACT
    with pytest.raises(ValueError, match="not a choice label"):
        Choice.from_label("pq K=8")
    with pytest.raises(ValueError, match="exact .* or PQ"):
        Choice(8, None)


def _plan():
    return Plan((LayerPlan("conv2", "conv2d", EXACT, 29.8, 29.8),
                 LayerPlan("fc1", "linear", Choice(8, 4), 8.8, 5.5, {"task_loss": 0.05, "output_error": 0.007})),
                target="llvm", budget=1.0, exact_metric=90.0, metric=89.4)


def test_plan_round_trip_and_its_file_fields():
    plan = _plan()
    assert Plan.from_json(plan.to_json()) == plan
    layer = plan.to_dict()["layers"][1]
    assert {k: layer[k] for k in ("choice", "K", "V", "exact_us", "chosen_us")} == \
        {"choice": "pq", "K": 8, "V": 4, "exact_us": 8.8, "chosen_us": 5.5}
    assert plan.to_dict()["layers"][0]["choice"] == "exact" and plan.to_dict()["layers"][0]["K"] is None
    assert plan.latency_us == pytest.approx(35.3) and plan.drop == pytest.approx(0.6)
    assert "fc1" in plan.table() and "pq K=8 V=4" in plan.table()


def test_plan_learning_config_keeps_how_and_sets_what():
    learning = _plan().learning_config(PQConfig(lr=5e-3, epochs=3, exclude=("fc2",)))
    assert (learning.lr, learning.epochs) == (5e-3, 3)
    assert learning.selects("fc1") and not learning.selects("conv2")
    assert learning.settings_for("fc1", "linear").K == 8 and learning.settings_for("fc1", "linear").V == 4
    with pytest.raises(ValueError, match="nothing to learn"):
        Plan((LayerPlan("a", "linear", EXACT, 1.0, 1.0),)).learning_config(PQConfig())


def test_bad_plan_files_fail_clearly():
    raw = _plan().to_dict()
    with pytest.raises(ValueError, match="not a version-1 tvm-lut-autotune-plan"):
        Plan.from_dict({**raw, "version": 7})
    bad_layer = {**raw["layers"][1], "choice": "lut"}
    with pytest.raises(ValueError, match="choice must be 'exact' or 'pq'"):
        Plan.from_dict({**raw, "layers": [bad_layer]})
    with pytest.raises(ValueError, match="names each layer once"):
        Plan((raw_layer := LayerPlan("a", "linear", EXACT, 1.0, 1.0), dataclasses.replace(raw_layer)))


@pytest.mark.parametrize("argv, message", [
    (["--max-drop", "-1"], "max_drop must be a finite number >= 0"),
    (["--relative", "--max-drop", "5"], "is relative"),
    (["--max-trials", "0"], "max_trials must be an int >= 1"),
    (["--tune-trials", "4"], "--tune-trials needs --db"),
])
def test_cli_rejects_bad_configs_before_any_work(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["autotune", "fashion-cnn", "-o", str(tmp_path / "out"), *argv])
