"""benchmarks.zoo: the error measure, a failing model recorded without ending the run, a real run written as JSON,
and the MobileNetV3-Small written here."""

import json

import numpy as np
import pytest
import torch

from benchmarks import zoo
from benchmarks.helpers.zoo_models import MobileNetV3Small, keep_scale


def test_max_relative_error_is_relative_to_the_outputs_scale():
    reference = np.array([[0.0, 10.0], [-20.0, 1e-9]], dtype=np.float32)
    assert zoo.max_relative_error(reference, reference) == 0.0
    assert zoo.max_relative_error(reference + 0.002, reference) == pytest.approx(1e-4, rel=1e-3)
    assert zoo.max_relative_error(reference[:1], reference) == float("inf")
    assert zoo.max_relative_error(np.full_like(reference, np.nan), reference) == float("inf")


def test_a_failing_model_is_recorded_and_the_zoo_goes_on(tmp_path, monkeypatch):
    def broken():
        raise RuntimeError("no such architecture")

    monkeypatch.setitem(zoo.MODELS, "broken", broken)
    out = tmp_path / "zoo.json"
    assert zoo.main(["--models", "broken", "fashion-cnn", "--repeat", "1", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    broken_record, cnn = payload["models"]
    assert broken_record["failures"] == {"model": "RuntimeError: no such architecture"}
    assert cnn["failures"] == {} and cnn["reports"]["rules"]["unscheduled"] == []
    assert cnn["error"]["rules"] < 1e-4 and set(cnn["latency_ms"]) == {"pytorch", "ort_fp32", "ort_int8", "rules"}
    (row,) = [row for row in payload["rows"] if row["model"] == "fashion-cnn"]
    assert row["rules_vs_ort"] == pytest.approx(cnn["latency_ms"]["ort_fp32"] / cnn["latency_ms"]["rules"])
    assert payload["summary"]["models_timed"] == 1 and payload["threads"] == 1
    # the load each figure was taken under: the machine's, and each engine's threads' wait for a CPU
    assert payload["load_average"] and set(cnn["cpu_wait"]) == set(cnn["latency_ms"])
    assert all(len(reps) == 1 for reps in cnn["latency_ms_repetitions"].values())


def test_mobilenet_v3_small_has_the_papers_shape():
    model = keep_scale(MobileNetV3Small()).eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.54e6, rel=0.01)  # the paper's 2.5M
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all() and out.abs().max() > 1e-2


def test_the_cpu_clock_times_one_thread_and_is_named_in_the_json(tmp_path):
    out = tmp_path / "zoo.json"
    assert zoo.main(["--models", "fashion-cnn", "--repeat", "1", "--clock", "cpu", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["clock"] == "cpu" and all(ms > 0 for ms in payload["models"][0]["latency_ms"].values())
    with pytest.raises(SystemExit):
        zoo.main(["--models", "fashion-cnn", "--threads", "2", "--clock", "cpu"])

