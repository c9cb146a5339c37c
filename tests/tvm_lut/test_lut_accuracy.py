import json

import numpy as np
import pytest

from tvm_lut.datasets import TweetSet, TweetSplits
from tvm_lut.lut_accuracy import (
    ENCODERS,
    EncoderResult,
    ExperimentConfig,
    ExperimentResult,
    calibration_batches,
    pq_calibration_tweets,
    run_experiment,
)
from tvm_lut.models import MiniLM, MiniLMConfig


def fake_result(lut_accuracy=0.85, lut_cosine=0.9995, kept=(), pq_accuracy=0.85, pq_ms=20.0):
    encoders = {
        name: EncoderResult(name, accuracy, cosine, cosine, 1e-3, latency)
        for name, accuracy, cosine, latency in (
            ("pytorch_fp32", 0.86, 1.0, 80.0),
            ("ort_fp32", 0.86, 1.0, 90.0),
            ("ort_int8", 0.85, 0.99, 40.0),
            ("tvm_exact", 0.86, 1.0, 100.0),
            ("tvm_lut", lut_accuracy, lut_cosine, 50.0),
            ("tvm_lut_pq", pq_accuracy, 0.95, pq_ms),
        )
    }
    report = {
        "pass": "LUTNonlinear",
        "replaced": [{"op": "gelu", "form": "R.nn.gelu"}] * 6 + [{"op": "softmax", "form": "R.nn.softmax"}] * 6,
        "kept": [{"op": "layer_norm", "form": "R.nn.layer_norm", "reason": "dtype float16"} for _ in kept],
        "unscheduled": [],
    }
    tables = {"gelu": {"entries": 16, "scaling": "none", "input_range": [-3.5, 4.0], "calibrated": True}}
    return ExperimentResult(ExperimentConfig(), encoders, report, tables, {"load": 1.0})


def test_result_summary_and_targets():
    good = fake_result()
    assert good.accuracy_drop_points == pytest.approx(1.0)
    assert not good.meets_targets  # a 1-point drop misses the 0.3-point target
    assert fake_result(lut_accuracy=0.858).meets_targets
    assert not fake_result(lut_accuracy=0.86, lut_cosine=0.998).meets_targets
    assert not fake_result(lut_accuracy=0.858, pq_accuracy=0.83).meets_targets  # a 3-point PQ drop
    slow = fake_result(lut_accuracy=0.858, pq_ms=100.0)
    assert slow.misses() == ["NN-LUT+PQ at 0.90x ORT fp32 (< 1.0x)"] and "MISSED: NN-LUT+PQ" in slow.summary()
    text = fake_result(kept=[1]).summary()
    assert "replaced by LUT kernels: 6 gelu, 6 softmax; kept exact: 1 layer_norm" in text
    assert "kept exact layer_norm (R.nn.layer_norm): dtype float16" in text
    assert "TVM NN-LUT" in text and "2.00x" in text  # 100 ms exact vs 50 ms LUT
    assert "TVM NN-LUT+PQ" in text and "4.50x" in text  # 90 ms ORT fp32 vs 20 ms NN-LUT + PQ
    data = json.loads(json.dumps(good.to_dict()))
    assert data["replaced_counts"] == {"gelu": 6, "softmax": 6} and data["meets_targets"] is False


def test_config_misuse():
    with pytest.raises(ValueError, match="n_test must be a positive int"):
        ExperimentConfig(n_test=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ExperimentConfig(batch_size=2.5)
    with pytest.raises(ValueError, match="must be at least batch_size"):
        ExperimentConfig(n_test=4, batch_size=8)


def test_calibration_batches_follow_the_training_convention():
    ids = np.arange(20, dtype=np.int64).reshape(5, 4)
    batches = calibration_batches(ids, np.ones_like(ids), 2)
    assert [b[0][0].shape[0] for b in batches] == [2, 2, 1]
    assert all(labels is None for _, labels in batches)


def tiny_splits():
    """Separable synthetic sentiment: the words carry the label."""
    rng = np.random.default_rng(0)
    positive, negative = ["great", "love", "happy", "good"], ["awful", "hate", "sad", "bad"]

    def part(n):
        labels = rng.integers(0, 2, n)
        texts = tuple(" ".join(rng.choice(positive if y else negative, 3)) for y in labels)
        return TweetSet(texts, labels)

    return TweetSplits(train=part(48), calibration=part(8), test=part(16))


def test_pq_calibration_tweets_never_take_a_held_out_or_head_tweet():
    def tweets(prefix, n):
        return TweetSet(tuple(f"{prefix}{i}" for i in range(n)), np.arange(n) % 2)

    splits = TweetSplits(train=tweets("train", 10), calibration=tweets("calib", 4), test=tweets("test", 3))
    assert pq_calibration_tweets(splits, 3, n_train=6).texts == ("calib0", "calib1", "calib2")
    more = pq_calibration_tweets(splits, 7, n_train=6)
    assert more.texts == ("calib0", "calib1", "calib2", "calib3", "train6", "train7", "train8")
    assert list(more.labels) == [0, 1, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="asked for 5 tweets, the set has 4"):
        pq_calibration_tweets(splits, 9, n_train=6)


def test_experiment_end_to_end_on_a_tiny_encoder():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tiny = MiniLM(MiniLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=16)).eval()
    config = ExperimentConfig(n_test=16, n_train=48, n_calib=8, batch_size=8, length=12, entries=8,
                              latency_repeats=1, n_pq_calib=8, pq_fit_rows=64)
    result = run_experiment(config, model=tiny, splits=tiny_splits(), progress=False, log=lambda _: None)
    assert set(result.encoders) == set(ENCODERS)
    assert result.encoders["tvm_exact"].max_abs_diff < 1e-4  # the import and schedules are exact
    assert result.replaced_counts() == {"gelu": 1, "softmax": 1, "layer_norm": 3}
    assert result.kept_counts() == {}
    assert result.encoders["tvm_lut"].mean_cosine > 0.99
    assert result.encoders["tvm_lut_pq"].head == "own" and len(result.pq_report["replaced"]) == 6
    assert result.pq_report["kept"] == [] and result.encoders["ort_fp32"].max_abs_diff < 1e-4
    assert all(t["calibrated"] for name, t in result.tables.items() if name != "gelu_tanh")


def test_demo_command_prints_table_and_writes_json(monkeypatch, tmp_path, capsys):
    import tvm_lut.lut_accuracy
    from tvm_lut.cli import main

    seen = {}

    def fake_run(config, target=None, progress=True):
        seen["config"], seen["progress"] = config, progress
        return fake_result(lut_accuracy=seen.get("lut_accuracy", 0.858))

    monkeypatch.setattr(tvm_lut.lut_accuracy, "run_experiment", fake_run)
    assert main(["demo", "--n-test", "1200", "--batch-size", "4", "--json", str(tmp_path / "out" / "r.json")]) == 0
    assert (seen["config"].n_test, seen["config"].batch_size) == (1200, 4)
    assert seen["progress"] is True  # progress on; in a log (pytest's stderr) it is drawn as lines, not bars
    assert "targets met" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "r.json").read_text())["meets_targets"] is True
    assert main(["demo", "--no-progress"]) == 0
    assert seen["progress"] is False
    seen["lut_accuracy"] = 0.80
    assert main(["demo"]) == 1  # a missed target fails the job
    assert "targets MISSED" in capsys.readouterr().out
