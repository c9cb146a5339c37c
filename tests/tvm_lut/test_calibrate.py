"""Calibration: every call form is seen, ranges are robust and clipped as documented, misuse is reported."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tvm_lut.calibrate import calibrate_ranges, observe_ranges


class Tiny(nn.Module):
    """Every way a model calls the three ops: modules, functionals, the Tensor method, legacy implicit dim."""

    def __init__(self):
        super().__init__()
        self.gelu, self.norm = nn.GELU(), nn.LayerNorm(8, eps=1e-5)

    def forward(self, x, scores=None):
        h = self.gelu(x) + F.gelu(x, approximate="tanh")
        attention = torch.softmax(x, dim=-1) + x.softmax(-1) + F.softmax(x, dim=1)
        if scores is not None:
            attention = attention + torch.softmax(scores, dim=-1).sum()
        return self.norm(h) + F.layer_norm(attention, (8,))


def _batches(scale=1.0, n=3):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(4, 8, generator=generator) * scale for _ in range(n)]


def test_every_call_form_is_seen_with_exact_extremes():
    batches = _batches()
    seen = observe_ranges(Tiny(), batches, progress=False)
    assert set(seen) == {"gelu", "gelu_tanh", "exp", "reciprocal", "rsqrt"}
    x = torch.cat(batches)
    assert seen["gelu"].minimum == pytest.approx(float(x.min())) and seen["gelu"].maximum == pytest.approx(float(x.max()))
    assert seen["gelu"].count == x.numel() and seen["gelu_tanh"].count == x.numel()
    shifted = x - x.amax(-1, keepdim=True)
    assert seen["exp"].minimum == pytest.approx(float(shifted.min())) and seen["exp"].maximum == 0.0
    assert seen["exp"].count == 3 * x.numel()  # three softmax calls per batch
    assert seen["reciprocal"].minimum >= 1.0
    variance = x.var(-1, unbiased=False) + 1e-5
    assert seen["rsqrt"].minimum <= float(variance.min()) + 1e-6


def test_ranges_are_percentiles_widened_then_clipped_to_the_default_range():
    x = torch.linspace(-4, 4.4, 800).reshape(-1, 8)
    exact = calibrate_ranges(Tiny(), [x], percentile=100, margin=0.0, progress=False)
    assert exact["gelu"] == pytest.approx((-4.0, 4.4))
    widened = calibrate_ranges(Tiny(), [x], percentile=100, margin=0.05, progress=False)
    assert widened["gelu"] == pytest.approx((-4.42, 4.82))
    narrow = calibrate_ranges(Tiny(), _batches(scale=0.5), progress=False)
    assert narrow["gelu"] == pytest.approx((-3.23, 3.23), abs=1e-2)  # where the pinned asymptotes are accurate
    assert narrow["exp"][0] == pytest.approx(-6.5, abs=1e-2) and narrow["exp"][1] == 0.0
    wide = calibrate_ranges(Tiny(), _batches(scale=100.0), progress=False)
    assert wide["gelu"] == (-5.0, 5.0) and wide["exp"] == (-16.0, 0.0)  # beyond that the asymptotes are exact
    assert wide["reciprocal"] == (1.0, 2.0) and wide["rsqrt"] == (1.0, 4.0)  # scaled tables: fixed ranges


def test_one_outlier_does_not_stretch_the_range():
    batch = torch.linspace(-4, 4, 40_000).reshape(-1, 8)
    spiked = batch.clone()
    spiked[0, 0] = -1000.0
    calm = calibrate_ranges(Tiny(), [batch], progress=False)["gelu"]
    assert calibrate_ranges(Tiny(), [spiked], progress=False)["gelu"] == pytest.approx(calm, abs=1e-3)
    assert calm[0] == pytest.approx(-4.8, abs=1e-2)  # 0.01th percentile ~-4, minus 10 % of the width 8


def test_masked_scores_do_not_reach_the_exp_range():
    x = torch.randn(4, 8)
    scores = torch.randn(4, 8)
    scores[:, 4:] = float("-inf")
    seen = observe_ranges(Tiny(), [(x, scores)], progress=False)  # a tuple of positional inputs
    assert seen["exp"].minimum > -100


def test_batch_conventions_and_training_mode_restored():
    model = Tiny().train()
    x = torch.randn(4, 8)
    plain = observe_ranges(model, [x], progress=False)
    assert model.training
    assert observe_ranges(model, [(x, None)], progress=False)["gelu"] == plain["gelu"]
    assert observe_ranges(model, [((x,), torch.zeros(4))], progress=False)["gelu"] == plain["gelu"]


def test_attention_calibration_cannot_see_is_logged(caplog):
    class Attention(nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x)

    with caplog.at_level(logging.WARNING, logger="tvm_lut.calibrate"):
        seen = observe_ranges(Attention(), [torch.randn(1, 4, 8)], progress=False)
    assert seen == {} and "scaled_dot_product_attention" in caplog.text


@pytest.mark.parametrize("kwargs, batches, match", [
    ({}, [], "no calibration batches"),
    ({"percentile": 40}, [torch.zeros(1, 8)], "percentile must be in"),
    ({"margin": -1}, [torch.zeros(1, 8)], "margin must be >= 0"),
    ({}, ["text"], "a batch is a tensor or a pair"),
])
def test_misuse(kwargs, batches, match):
    with pytest.raises((ValueError, TypeError), match=match):
        observe_ranges(Tiny(), batches, progress=False, **kwargs)
