"""The quantize_-style module swap and its config: what is replaced, what stays exact and why."""

import json

import pytest
import torch
from torch import nn

from tvm_lut.pq.config import PQConfig
from tvm_lut.pq.layers import PQConv2d, PQLinear
from tvm_lut.pq.swap import pq_layers, quantize_


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.point = nn.Conv2d(8, 8, 1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.same = nn.Conv2d(8, 8, 3, padding="same")
        self.reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.attn = nn.MultiheadAttention(8, 2)
        self.odd = nn.Linear(10, 4)
        self.head = nn.Linear(8, 10)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))


def test_swap_replaces_what_it_can_and_says_why_not():
    model = Net()
    report = quantize_(model, PQConfig(V=4))
    assert isinstance(model.stem, PQConv2d) and model.stem.V == 9 and model.stem.C == 3
    assert isinstance(model.point, PQConv2d) and model.point.V == 4
    assert isinstance(model.head, PQLinear) and isinstance(model.block[1], PQLinear)
    assert set(report.replaced) == {"stem", "point", "head", "block.0", "block.1"}
    assert "depthwise" in report.kept["depthwise"] and "grouped" in report.kept["grouped"]
    assert "padding='same'" in report.kept["same"] and "reflect" in report.kept["reflect"]
    assert "MultiheadAttention" in report.kept["attn.out_proj"]
    assert "V=4 does not divide the input length 10" in report.kept["odd"]
    assert "5 layers replaced" in str(report)
    assert set(pq_layers(model)) == set(report.replaced)


def test_include_exclude_and_per_layer_overrides():
    model = Net()
    config = PQConfig(V=4, include=("block.*", "head", "point"), exclude=("block.0",),
                      overrides={"head": {"V": 2, "K": 8}, "block.*": {"V": 8}, "point": {"skip": True}})
    report = quantize_(model, config)
    assert set(report.replaced) == {"head", "block.1"}
    assert (model.head.K, model.head.V) == (8, 2) and model.block[1].V == 8
    assert report.kept["block.0"].startswith("not selected") and report.kept["point"].startswith("not selected")


def test_swapped_model_shares_the_original_parameters_and_runs():
    model = nn.Sequential(nn.Linear(8, 4))
    weight = model[0].weight
    quantize_(model, PQConfig(V=4))
    assert model[0].weight is weight
    assert model(torch.randn(2, 8)).shape == (2, 4)


def test_layers_get_the_configured_input_gradient():
    model = nn.Sequential(nn.Linear(8, 4), nn.Conv2d(4, 4, 1))
    quantize_(model, PQConfig(V=4, input_gradient="exact"))
    assert [layer.input_gradient for layer in pq_layers(model).values()] == ["exact", "exact"]


def test_config_json_round_trip_and_validation():
    config = PQConfig(V=8, include=("encoder.*",), overrides={"x": {"V": 4}}, trainable="all")
    assert PQConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown fields"):
        PQConfig.from_json('{"K": 16, "Kay": 3}')
    with pytest.raises(ValueError, match="version"):
        PQConfig(version=99)
    with pytest.raises(ValueError, match="K must be"):
        PQConfig(K=300)
    with pytest.raises(ValueError, match="table_dtype"):
        PQConfig(table_dtype="int4")
    with pytest.raises(ValueError, match="unknown keys"):
        PQConfig(overrides={"fc": {"bits": 4}})
    with pytest.raises(ValueError, match="trainable"):
        PQConfig(trainable="weights")
    with pytest.raises(ValueError, match="input_gradient"):
        PQConfig(input_gradient="hard")
    with pytest.raises(ValueError, match="lr_schedule"):
        PQConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="weight_lr"):
        PQConfig(weight_lr=0.0)
    with pytest.raises(ValueError, match="feature_weight"):
        PQConfig(feature_weight=-1.0, feature_distill=("encoder",))
    with pytest.raises(ValueError, match="not all 0"):
        PQConfig(task_weight=0.0, distill_weight=0.0)
    assert PQConfig(task_weight=0.0, distill_weight=0.0, feature_distill=("encoder",)).feature_distill == ("encoder",)
    with pytest.raises(TypeError, match="PQConfig"):
        quantize_(nn.Linear(4, 4), {"V": 4})


def test_version_1_json_reads_as_it_ran():
    """Version 1 trained the other weights at `lr` (it had no `weight_lr`); so does its JSON read today."""
    old = json.loads(PQConfig(lr=3e-3, trainable="all").to_json())
    for key in ("weight_lr", "feature_distill", "feature_weight", "lr_schedule", "warmup_steps"):
        del old[key]
    config = PQConfig.from_json(json.dumps({**old, "version": 1}))
    assert (config.weight_lr, config.version, config.lr_schedule) == (3e-3, 2, "constant")


def test_learn_command_is_registered_and_parses():
    from tvm_lut.cli import build_parser

    args = build_parser().parse_args(["learn", "minilm-l6", "-o", "out", "--V", "8"])
    assert (args.command, args.model, args.V, args.threads) == ("learn", "minilm-l6", 8, None)  # None: every core
