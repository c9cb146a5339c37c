"""Issue 3's Fashion-MNIST target end to end, with the benchmark's defaults (the documented command):
the PQ CNN after centroid learning is at most 1.0 point below its FP32 model on the 10,000 held-out images."""

import json

import pytest

from tvm_lut import cli


@pytest.mark.slow
def test_cnn_lutnn_drop_is_at_most_one_point(tmp_path):
    out = tmp_path / "lutnn.json"
    assert cli.main(["bench", "lutnn_accuracy", "--models", "cnn", "--no-progress", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["runs"]
    assert row["drop_points"] <= 1.0, row["setting"]
