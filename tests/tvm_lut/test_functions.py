"""The function registry and the error report."""

import math

import numpy as np
import pytest
import torch

from tvm_lut.functions import FUNCTIONS, LUTFunction, get_function, measure_error
from tvm_lut.pwl import PWLTable


def test_exact_functions_match_torch():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    torch.testing.assert_close(FUNCTIONS["gelu"].exact(x), torch.nn.functional.gelu(x))
    torch.testing.assert_close(FUNCTIONS["gelu_tanh"].exact(x), torch.nn.functional.gelu(x, approximate="tanh"))
    positive = x.abs() + 0.1
    torch.testing.assert_close(FUNCTIONS["reciprocal"].exact(positive), 1 / positive)
    torch.testing.assert_close(FUNCTIONS["rsqrt"].exact(positive), positive ** -0.5)


def test_asymptote_lines():
    assert FUNCTIONS["gelu"].asymptote_line("left", -5) == (0.0, 0.0)
    assert FUNCTIONS["gelu"].asymptote_line("right", 5) == (1.0, 0.0)
    assert FUNCTIONS["exp"].asymptote_line("right", -1.0) == (0.0, pytest.approx(math.exp(-1)))
    assert FUNCTIONS["reciprocal"].asymptote_line("left", 1.0) is None


def test_scaled_functions_cover_their_scaling_interval():
    assert FUNCTIONS["reciprocal"].default_range == (1.0, 2.0) and FUNCTIONS["reciprocal"].scaling == "pow2"
    assert FUNCTIONS["rsqrt"].default_range == (1.0, 4.0) and FUNCTIONS["rsqrt"].scaling == "pow4"


def test_error_report_numbers_and_text():
    # y = x on [0, 1] against gelu: the error is x * (1 - Phi(x)), largest where 1 - Phi(x) = x * phi(x)
    table = PWLTable("gelu", [0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    report = measure_error(table, samples=1001)
    x = np.linspace(0, 1, 1001)
    error = x * (1 - 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))))
    assert report.max_abs == pytest.approx(error.max(), rel=1e-5)
    assert report.mean_abs == pytest.approx(error.mean(), rel=1e-4)
    assert report.max_rel is None and report.max_error == report.max_abs
    assert not report.passed and "FAILS" in str(report) and "max abs 1.70e-01" in str(report)


def test_relative_error_is_reported_for_reciprocal():
    table = PWLTable("reciprocal", [1.0, 2.0], [0.0, -0.5, 0.0], [1.0, 1.5, 0.5], "pow2")  # the chord of 1/x
    report = measure_error(table)
    assert report.measure == "relative" and report.max_rel == pytest.approx(0.125, rel=1e-3)  # at sqrt(2)
    assert "max rel 1.25e-01" in str(report)


def test_lookup_and_misuse():
    assert get_function("exp") is FUNCTIONS["exp"] and get_function(FUNCTIONS["exp"]) is FUNCTIONS["exp"]
    with pytest.raises(ValueError, match="unknown NN-LUT function 'erf'.*known"):
        get_function("erf")
    with pytest.raises(ValueError, match="asymptotes must be in"):
        LUTFunction("f", np.exp, (0, 1), "flat", "zero", "absolute", 1.0)
    with pytest.raises(ValueError, match="measure must be in"):
        LUTFunction("f", np.exp, (0, 1), "zero", "zero", "ulp", 1.0)
