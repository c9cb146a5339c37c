"""`benchmarks.autotune --speed-bound`'s plans: random tables that the compiler cannot merge, and the fastest plan of
a latency table."""

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.autotune import fastest_plan, main, random_bundle
from tvm_lut.autotuning.config import AutotuneConfig
from tvm_lut.autotuning.latency import LatencyTable
from tvm_lut.autotuning.layers import EXACT, Choice, find_layers


class TwoHeads(nn.Module):
    """Two layers of one shape reading one input (as MiniLM's query and key), then a third without bias."""

    def __init__(self):
        super().__init__()
        self.query, self.key = nn.Linear(8, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return self.out(self.query(x) + self.key(x))


@pytest.fixture
def layers():
    torch.manual_seed(0)
    model = TwoHeads().eval()
    specs, _ = find_layers(model, (torch.zeros(2, 8),), AutotuneConfig(K=(8, 16), V=(2, 4)))
    return model, specs


def test_random_bundle_gives_each_layer_its_own_centroids(layers):
    model, specs = layers
    bundle = random_bundle(model, specs, {"query": Choice(16, 4), "key": Choice(16, 4), "out": EXACT})
    assert set(bundle) == {"query", "key"}
    query, key = bundle["query"], bundle["key"]
    assert query.centroids.shape == key.centroids.shape == (2, 16, 4)
    assert not np.array_equal(query.centroids, key.centroids)  # equal ones would let the compiler merge the encodes
    no_bias = random_bundle(model, specs, {"query": EXACT, "key": EXACT, "out": Choice(8, 2)})
    assert no_bias["out"].centroids.shape == (4, 8, 2)


def test_random_bundle_of_an_exact_plan_is_none(layers):
    model, specs = layers
    assert random_bundle(model, specs, {spec.name: EXACT for spec in specs}) is None


def test_fastest_plan_takes_the_least_latency_and_skips_what_is_not_served(layers):
    _, specs = layers
    config = AutotuneConfig(K=(8, 16), V=(2, 4))
    choices = {spec.name: spec.choices(config) for spec in specs}
    table = LatencyTable("llvm")
    for spec in specs:
        for choice in choices[spec.name]:
            table.record(spec, choice, 10.0 if choice.exact else 20.0 - choice.V - choice.K / 16)
    # query and key share a shape, hence their latencies: `out` (another shape) is served by PQ K=16 V=4 only
    (out,) = [spec for spec in specs if spec.name == "out"]
    for choice in choices["out"]:
        table.record(out, choice, None if not choice.exact and choice != Choice(16, 4) else 30.0 - (not choice.exact))
    plan = fastest_plan(specs, choices, table)
    assert plan == {"query": EXACT, "key": EXACT, "out": Choice(16, 4)}
    table.record(specs[0], Choice(16, 4), 5.0)
    assert fastest_plan(specs, choices, table)["query"] == Choice(16, 4)


def test_speed_bound_is_minilm_only():
    with pytest.raises(SystemExit, match="minilm-l6 only"):
        main(["--speed-bound", "--model", "fashion-cnn"])


def test_learn_threads_must_be_positive():
    with pytest.raises(SystemExit, match="--learn-threads must be >= 1"):
        main(["--learn-threads", "0"])
