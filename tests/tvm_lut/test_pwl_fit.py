"""NN-LUT training: the net converts exactly, the fit keeps its constraints, and it repeats bit for bit."""

import numpy as np
import pytest
import torch

from tvm_lut.functions import FUNCTIONS
from tvm_lut.pwl_fit import PWLNet, fit_pwl, fit_pwl_net

FAST = dict(steps=60, samples=512)  # enough to exercise every code path; quality is tested on the full fits


def _agree_to_float_rounding(net, table, x):
    with torch.no_grad():
        expected = net(torch.from_numpy(x.astype(np.float64))).numpy()
    scale = np.abs(net.m).sum().item() * np.abs(x).max() + abs(net.c.item()) + 1  # size of the largest term
    np.testing.assert_allclose(table(x), expected, rtol=0, atol=4e-7 * scale)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_net_with_both_neuron_directions_converts_exactly(seed):
    rng = np.random.default_rng(seed)
    n = rng.choice([-1, 1], 15) * rng.uniform(0.2, 3, 15)
    net = PWLNet(n, rng.normal(size=15), rng.normal(size=15), rng.normal())
    table = net.to_table("custom")
    assert table.entries == 16
    np.testing.assert_array_equal(table.breakpoints, np.sort((-net.b / net.n).numpy()).astype(np.float32))
    x = rng.uniform(-8, 8, 10_000).astype(np.float32)
    _agree_to_float_rounding(net, table, np.concatenate([x, table.breakpoints]))


def test_trained_net_and_table_agree_on_10000_points():
    net = fit_pwl_net("gelu", **FAST)
    table = net.to_table("gelu")
    x = np.linspace(-7, 7, 10_000, dtype=np.float32)
    _agree_to_float_rounding(net, table, x)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_fit_keeps_range_asymptotes_and_size(name):
    spec = FUNCTIONS[name]
    table = fit_pwl(name, entries=8, **FAST)
    lo, hi = spec.default_range
    assert table.entries == 8 and table.input_range == (lo, hi) and table.scaling == spec.scaling
    outside = np.array([lo - 3, lo - 0.5, hi + 0.5, hi + 3], np.float32)
    y = table(outside)
    if name.startswith("gelu"):
        np.testing.assert_array_equal(y, [0, 0, outside[2], outside[3]])
    if name == "exp":
        np.testing.assert_array_equal(y, [0, 0, 1, 1])
        assert table(np.float32(0)) == 1  # the row maximum maps to exactly 1


def test_more_entries_fit_better():
    coarse = fit_pwl("gelu", entries=6, **FAST)
    fine = fit_pwl("gelu", entries=12, **FAST)
    x = np.linspace(-5, 5, 2001, dtype=np.float32)
    exact = FUNCTIONS["gelu"].exact(torch.from_numpy(x.astype(np.float64))).numpy()
    assert np.abs(fine(x) - exact).max() < 0.5 * np.abs(coarse(x) - exact).max()


def test_fit_is_deterministic_and_leaves_torch_state_alone():
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = fit_pwl("rsqrt", entries=8, **FAST)
    assert torch.rand(1) == before and torch.get_num_threads() == threads
    assert fit_pwl("rsqrt", entries=8, **FAST) == first


def test_callable_is_fitted_and_held_constant_outside():
    table = fit_pwl(torch.sigmoid, entries=10, input_range=(-6, 6), **FAST)
    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    assert np.abs(table(x) - torch.sigmoid(torch.from_numpy(x)).numpy()).max() < 2e-2
    assert table.name == "sigmoid"
    assert table(np.float32(-100)) == pytest.approx(float(torch.sigmoid(torch.tensor(-6.0))), abs=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: fit_pwl("softplus"), "unknown NN-LUT function 'softplus'"),
    (lambda: fit_pwl(torch.tanh), "fitting a callable needs input_range"),
    (lambda: fit_pwl("gelu", input_range=(2, 1)), "lo < hi"),
    (lambda: fit_pwl("gelu", input_range=(-np.inf, 1)), "must be finite"),
    (lambda: fit_pwl("gelu", entries=3), "entries must be an integer >= 4"),
    (lambda: fit_pwl("reciprocal", input_range=(0, 1)), "not finite everywhere"),
    (lambda: PWLNet([1.0, 0.0], [0.0, 1.0], [1.0, 1.0], 0.0), "n_i != 0"),
    (lambda: PWLNet([1.0], [0.0, 1.0], [1.0], 0.0), "1-D of one length"),
    (lambda: PWLNet([1.0, 1.0], [-1.0, -1.0 - 1e-12], [1.0, 1.0], 0.0).to_table("t"), "coincide in float32"),
])
def test_misuse_is_reported(call, match):
    with pytest.raises(ValueError, match=match):
        call()
