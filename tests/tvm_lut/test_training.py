"""learn(): config dispatch, the NN-LUT handler end to end on a tiny model, merging, misuse."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import tvm_lut
from tvm_lut.bundle import Bundle
from tvm_lut.training import NonlinearConfig, learn, register_handler
from tvm_lut.pwl import PWLTable

SMALL = NonlinearConfig(entries=6, functions=("gelu", "exp", "rsqrt"))


class Block(nn.Module):
    """GELU on narrow inputs, a softmax, a LayerNorm: what the NN-LUT handler calibrates."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(nn.functional.gelu(x) + torch.softmax(x, -1))


@pytest.fixture(scope="module")
def learned():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 8, generator=generator) * 2 - 1 for _ in range(2)]  # GELU inputs within [-1, 1]
    return learn(Block(), batches, SMALL, progress=False)


def test_nonlinear_handler_fits_calibrated_tables(learned):
    assert sorted(learned) == ["exp", "gelu", "rsqrt"]
    gelu = learned.pwl("gelu")
    assert isinstance(gelu, PWLTable) and gelu.entries == 6
    lo, hi = gelu.input_range
    assert -3.3 < lo < -3.1 and 3.1 < hi < 3.3  # inputs in [-1, 1]: as narrow as the pinned asymptotes allow
    assert learned.pwl("rsqrt").input_range == (1.0, 4.0) and learned.pwl("rsqrt").scaling == "pow4"
    x = np.linspace(-6, 6, 1201, dtype=np.float32)
    exact = nn.functional.gelu(torch.from_numpy(x)).numpy()
    assert np.abs(gelu(x) - exact).max() < 3e-2  # 6 entries


def test_provenance_says_what_was_calibrated(learned):
    ranges = learned.provenance["ranges"]
    assert ranges["gelu"]["calibrated"] and ranges["gelu"]["seen_count"] == 64
    assert NonlinearConfig(**learned.provenance["nonlinear_config"]) == SMALL


def test_uncalled_functions_get_the_default_range():
    bundle = learn(nn.Identity(), [torch.zeros(2, 8)], NonlinearConfig(entries=5, functions=("gelu_tanh",)),
                   progress=False)
    assert bundle.pwl("gelu_tanh").input_range == (-5.0, 5.0)
    assert not bundle.provenance["ranges"]["gelu_tanh"]["calibrated"]


def test_bundle_saves_and_loads(learned, tmp_path):
    learned.save(tmp_path / "b.safetensors")
    loaded = Bundle.load(tmp_path / "b.safetensors")
    assert all(loaded[name] == learned[name] for name in learned)


@dataclass(frozen=True)
class EchoConfig:
    """A stand-in config type (the real second handler is PQConfig, from tvm_lut.pq)."""

    name: str


@register_handler(EchoConfig)
def _learn_echo(model, calib_batches, config, *, progress=True):
    table = PWLTable(config.name, [0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    return Bundle({config.name: table}, provenance={config.name: len(calib_batches)})


def test_a_list_of_configs_merges_bundles_and_batches_are_reused():
    batches = iter([torch.zeros(1, 8), torch.zeros(1, 8)])  # a one-shot iterator: learn lists it once
    bundle = learn(nn.Identity(), batches, [EchoConfig("a"), EchoConfig("b")])
    assert list(bundle) == ["a", "b"] and bundle.provenance == {"a": 2, "b": 2}


def test_config_json_round_trip_and_validation():
    config = NonlinearConfig(entries=32, functions=["gelu"], percentile=99.9)
    assert NonlinearConfig.from_json(config.to_json()) == config and config.functions == ("gelu",)
    with pytest.raises(ValueError, match="unknown NonlinearConfig fields"):
        NonlinearConfig.from_json('{"entries": 16, "bits": 4}')
    with pytest.raises(ValueError, match="version 2 is not supported"):
        NonlinearConfig(version=2)
    with pytest.raises(ValueError, match="unknown: \\['softplus'\\]"):
        NonlinearConfig(functions=("gelu", "softplus"))
    with pytest.raises(ValueError, match="entries must be an integer >= 4"):
        NonlinearConfig(entries=2)
    with pytest.raises(ValueError, match="percentile must be in"):
        NonlinearConfig(percentile=101)


def test_misuse():
    with pytest.raises(TypeError, match="no tvm_lut.learn handler for dict"):
        learn(nn.Identity(), [torch.zeros(1)], {"entries": 16})
    with pytest.raises(ValueError, match="at least one config"):
        learn(nn.Identity(), [torch.zeros(1)], [])
    with pytest.raises(ValueError, match="no calibration batches"):
        learn(nn.Identity(), [], EchoConfig("a"))
    with pytest.raises(TypeError, match="already has the handler"):
        register_handler(EchoConfig)(lambda *a, **k: None)


def test_public_names():
    assert tvm_lut.learn is learn and tvm_lut.NonlinearConfig is NonlinearConfig


def test_learn_hands_back_the_model_its_tables_belong_to():
    """`return_model=True`: PQ with trainable="all" returns the trained FP32 model whose weights the fingerprints
    identify (PQ layers back as nn.Linear); the caller's model is untouched; NN-LUT alone returns the model given."""
    from tvm_lut import fingerprint
    from tvm_lut.pq.config import PQConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    before = [p.detach().clone() for p in model.parameters()]
    batches = [(torch.randn(32, 8), torch.randint(0, 4, (32,))) for _ in range(4)]
    config = PQConfig(V=4, epochs=1, trainable="all", weight_lr=1e-2, kmeans_iters=2)
    bundle, trained = learn(model, batches, [config, SMALL], progress=False, return_model=True)
    assert isinstance(trained[0], nn.Linear) and trained is not model
    assert bundle["0"].weight_fingerprint == fingerprint(trained[0].weight)
    assert bundle["0"].weight_fingerprint != fingerprint(model[0].weight)  # the weights were trained
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert bundle.pwl("gelu") is not None  # NN-LUT calibrated on the trained model, in the same bundle
    assert isinstance(learn(model, batches, SMALL, progress=False), Bundle)
    assert learn(model, batches, SMALL, progress=False, return_model=True)[1] is model
