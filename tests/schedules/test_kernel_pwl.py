from types import SimpleNamespace

import numpy as np
import pytest

from tvm.target import Target
from tvm.target.codegen import target_has_features

from schedules import PWLSpec, pwl_func
from schedules.kernels.reference import pwl_reference
from tests.schedules.kernel_harness import EDGE_VALUES, EXP, GELU, RECIPROCAL, RSQRT, assert_matches, interp_table
from tests.schedules.kernel_harness import TARGET, run_kernel

RNG = np.random.default_rng(0)


def _check(table, x):
    assert_matches(run_kernel(pwl_func(table, x.shape), x), pwl_reference(table, x))


def _with_edges(x: np.ndarray, table) -> np.ndarray:
    """x with the edge values and every breakpoint (and the float just below it) written over its first entries."""
    edges = np.concatenate([EDGE_VALUES, table.breakpoints, np.nextafter(table.breakpoints, np.float32(-np.inf))])
    flat = x.reshape(-1)
    flat[:min(flat.size, edges.size)] = edges[:flat.size]
    return x


# Shapes pick every lowering: 16 lanes (permutes on AVX-512), 8 lanes (AVX2 permutes), 4 lanes and scalar
# (compare + select tree), and empty tensors.
@pytest.mark.parametrize("table, shape", [
    (GELU, (64, 48)), (GELU, (8, 8)), (GELU, (4,)), (GELU, (3, 5, 7)), (GELU, (0,)), (GELU, (2, 0, 3)),
    (EXP, (64, 48)), (EXP, (3, 5, 7)),
], ids=["gelu-16", "gelu-8", "gelu-4", "gelu-scalar", "gelu-empty", "gelu-empty-3d", "exp-16", "exp-scalar"])
def test_random_and_edge_inputs_match_reference(table, shape):
    _check(table, _with_edges((RNG.standard_normal(shape) * 6).astype(np.float32), table))


@pytest.mark.parametrize("mcpu", ["haswell", "x86-64"], ids=["avx2-permutes", "portable-select-tree"])
@pytest.mark.parametrize("table", [GELU, RECIPROCAL], ids=["gelu", "reciprocal"])
def test_other_lowerings_match_reference(table, mcpu):
    """The AVX2 form and the portable compare + select form, built for older x86 CPUs this host also runs."""
    target = Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    if not target_has_features(["avx2"] if mcpu == "haswell" else ["sse2"], TARGET):
        pytest.skip(f"this host cannot run {mcpu} code")
    x = _with_edges((RNG.standard_normal(1024) * 6).astype(np.float32), table)
    assert_matches(run_kernel(pwl_func(table, x.shape), x, target=target), pwl_reference(table, x))


def test_special_values_follow_the_contract():
    x = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0] * 4, dtype=np.float32)
    gelu = run_kernel(pwl_func(GELU, x.shape), x)[:5]
    np.testing.assert_array_equal(gelu, [np.nan, 0.0, np.inf, 0.0, 0.0])  # asymptotes 0 and x
    recip = run_kernel(pwl_func(RECIPROCAL, x.shape), x)[:5]
    np.testing.assert_array_equal(recip, [np.nan, -0.0, 0.0, -np.inf, np.inf])
    assert np.signbit(recip[1]) and not np.signbit(recip[2])
    rsqrt = run_kernel(pwl_func(RSQRT, (4,)), np.array([-1.0, 0.0, np.inf, 4.0], dtype=np.float32))
    np.testing.assert_allclose(rsqrt, [np.nan, np.inf, 0.0, 0.5], rtol=1e-3)


@pytest.mark.parametrize("size", [4096, 4095], ids=["16-lanes", "scalar"])
@pytest.mark.parametrize("table", [RECIPROCAL, RSQRT], ids=["reciprocal", "rsqrt"])
def test_scaled_tables_cover_every_magnitude(table, size):
    """Log-uniform magnitudes from subnormal to huge: the scaling is exact, so the error is the table's own."""
    magnitude = np.exp(RNG.uniform(np.log(1e-45), np.log(3e38), size)).astype(np.float32)
    signs = RNG.choice([-1, 1], size) if table is RECIPROCAL else np.ones(size)
    x = _with_edges((magnitude * signs).astype(np.float32), table)
    got = run_kernel(pwl_func(table, x.shape), x)
    assert_matches(got, pwl_reference(table, x))
    exact = _exact(table, x.astype(np.float64))
    normal = (np.abs(exact) > 1.2e-38) & (np.abs(exact) < 3e38) & np.isfinite(x)
    grid = np.linspace(table.breakpoints[0], table.breakpoints[-1], 100_001, dtype=np.float32)
    table_error = np.max(np.abs(pwl_reference(table, grid) / _exact(table, grid.astype(np.float64)) - 1))
    assert np.max(np.abs(got[normal] / exact[normal] - 1)) <= table_error * (1 + 1e-4) + 1e-6


def _exact(table, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return 1 / x if table is RECIPROCAL else 1 / np.sqrt(x)


@pytest.mark.parametrize("segments, size", [(1, 64), (2, 64), (5, 64), (5, 77), (9, 64)])
def test_any_table_size_up_to_sixteen(segments, size):
    table = interp_table(np.tanh, -3.0, 3.0, segments) if segments > 2 else SimpleNamespace(
        breakpoints=np.zeros(segments - 1, np.float32), slopes=np.arange(1, segments + 1, dtype=np.float32),
        intercepts=np.ones(segments, np.float32), scaling="none")
    _check(table, _with_edges((RNG.standard_normal(size) * 4).astype(np.float32), table))


def test_fitted_table_matches_reference():
    tvm_lut = pytest.importorskip("tvm_lut")
    fit_pwl = getattr(tvm_lut, "fit_pwl", None)
    if fit_pwl is None:
        pytest.skip("tvm_lut.fit_pwl is not available yet")
    table = fit_pwl("gelu")
    assert isinstance(table, PWLSpec)
    x = np.concatenate([RNG.standard_normal(4096) * 4, EDGE_VALUES[:13]]).astype(np.float32)[:4096]
    got = run_kernel(pwl_func(table, x.shape), x)
    assert_matches(got, pwl_reference(table, x))
    assert_matches(got, table(x))  # the trainer's own NumPy evaluation


def test_kernel_is_tagged_and_unscheduled():
    func = pwl_func(GELU, (4, 4))
    assert func.attrs["tvm_lut.kernel"] == "pwl"
    assert "tirx.is_scheduled" not in func.attrs


@pytest.mark.parametrize("spec, match", [
    (object(), "not a PWLSpec"),
    (SimpleNamespace(breakpoints=[1.0, 0.0, 2.0], slopes=[0] * 4, intercepts=[0] * 4, scaling="none"), "ascending"),
    (SimpleNamespace(breakpoints=[0.0], slopes=[0] * 2, intercepts=[0] * 3, scaling="none"), "sizes"),
    (SimpleNamespace(breakpoints=[0.0], slopes=[0, np.nan], intercepts=[0] * 2, scaling="none"), "NaN or infinite"),
    (SimpleNamespace(breakpoints=[0.0], slopes=[0] * 2, intercepts=[0] * 2, scaling="log"), "scaling"),
    (SimpleNamespace(breakpoints=[1.5], slopes=[0] * 2, intercepts=[0] * 2, scaling="pow2"), r"cover \[1, 2\]"),
    (interp_table(np.tanh, -3.0, 3.0, 17), "1 to 16 segments"),
])
def test_bad_tables_are_rejected(spec, match):
    with pytest.raises((TypeError, ValueError), match=match):
        pwl_func(spec, (4,))


@pytest.mark.parametrize("shape, dtype, match", [
    ((4, -1), "float32", "non-negative"),
    ((4, 2.5), "float32", "non-negative"),
    (None, "float32", "sequence"),
    ((4,), "float16", "float32"),
])
def test_bad_shapes_and_dtypes_are_rejected(shape, dtype, match):
    with pytest.raises((TypeError, ValueError), match=match):
        pwl_func(GELU, shape, dtype)
