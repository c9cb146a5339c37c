"""The segment directory: its size choice and fallback, its NumPy model, and the compiled lookup bit for bit."""

from types import SimpleNamespace

import numpy as np
import pytest
from tvm.target import Target
from tvm.target.codegen import target_has_features

from schedules import pwl_func
from schedules.kernels import segment_directory
from schedules.kernels.reference import pwl_reference
from tests.schedules.kernel_harness import EDGE_VALUES, EXP, GELU, TARGET, assert_matches, run_kernel
from tests.schedules.test_kernel_codegen import _asm, _basic_blocks

RNG = np.random.default_rng(0)


def _graded(power: float, segments: int = 16) -> np.ndarray:
    """Breakpoints over [0, 4] crowding towards 0 as t^power (power 1: uniform, 16 cells; 1.3: 32; 2: 64; 2.3: 128;
    3: the first gap is span / 2744, too close for 128 cells)."""
    return (4 * np.linspace(0, 1, segments - 1) ** power).astype(np.float32)


def _learned_like(segments: int = 16) -> np.ndarray:
    """Uneven breakpoints as a trainer leaves them (denser where the function bends, here around 0)."""
    return (5 * np.sinh(np.linspace(-2.0, 2.0, segments - 1)) / np.sinh(2.0)).astype(np.float32)


def _probe_inputs(breakpoints: np.ndarray, directory=None, size: int = 4096) -> np.ndarray:
    """Random x over and beyond the table's span, edge values, subnormals, every breakpoint and its neighbours,
    and every cell boundary of `directory` and its neighbours."""
    b = np.asarray(breakpoints, np.float32)
    near = [b, np.nextafter(b, np.float32(-np.inf)), np.nextafter(b, np.float32(np.inf))]
    if directory is not None:
        edges = ((np.arange(directory.cells + 1) - directory.offset) / directory.scale).astype(np.float32)
        near += [edges, np.nextafter(edges, np.float32(-np.inf)), np.nextafter(edges, np.float32(np.inf))]
    span = float(b[-1] - b[0]) if b.size else 1.0
    spread = RNG.uniform(float(b[0]) - span, float(b[-1]) + span, size) if b.size else RNG.standard_normal(size)
    subnormal = np.array([1e-45, -1e-45, 1e-40, -1e-40, 1.1e-38], np.float32)
    x = np.concatenate([EDGE_VALUES, subnormal, *near, spread.astype(np.float32)]).astype(np.float32)
    return x[: x.size - x.size % 16]  # whole registers (the tail loop is tested by the kernel tests' odd shapes)


def _step_table(breakpoints: np.ndarray) -> SimpleNamespace:
    """A table whose output is its segment index, exactly (slope 0, intercept i)."""
    segments = breakpoints.size + 1
    return SimpleNamespace(breakpoints=breakpoints, slopes=np.zeros(segments, np.float32),
                           intercepts=np.arange(segments, dtype=np.float32), scaling="none")


@pytest.mark.parametrize("breakpoints, size", [
    (_graded(1), 16),
    (_graded(1.3), 32),
    (_graded(2), 64),
    (_graded(2.3), 128),
], ids=["uniform-16", "crowded-32", "crowded-64", "crowded-128"])
def test_smallest_directory_that_fits_is_chosen(breakpoints, size):
    directory = segment_directory.plan(breakpoints, 128)
    assert directory is not None and len(directory.first) == size
    assert directory.cells <= size and directory.first[0] == 0


@pytest.mark.parametrize("breakpoints, max_size", [
    (_graded(3), 128),  # breakpoints closer than span / 128: no cell width fits
    (_graded(2), 32),    # needs 64 entries, the target looks up 32 (AVX-512F without VBMI)
    (np.array([0.5], np.float32), 128),  # one breakpoint: nothing to search
], ids=["too-crowded", "too-large-for-target", "single-breakpoint"])
def test_tables_without_a_directory_keep_the_search(breakpoints, max_size):
    assert segment_directory.plan(breakpoints, max_size) is None


@pytest.mark.parametrize("breakpoints", [
    _graded(1), _graded(1.3), _graded(2), _graded(2.3), _learned_like(), _learned_like(9),
    EXP.breakpoints, np.linspace(1.0, 2.0, 15), np.geomspace(1.0, 4.0, 15),
], ids=["uniform", "crowded-32", "crowded-64", "crowded-128", "learned", "learned-9", "exp", "reciprocal", "rsqrt"])
def test_directory_model_gives_the_searched_segment(breakpoints):
    """The NumPy model of the kernel's arithmetic (multiply and add rounded apart) gives count(breakpoints <= x)."""
    b = np.asarray(breakpoints, np.float32)
    directory = segment_directory.plan(b, 128)
    assert directory is not None
    x = _probe_inputs(b, directory, 100_000)
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(directory.segment(b, x)[finite], np.searchsorted(b, x[finite], side="right"))


def _needs(size: int) -> None:
    feature = "avx512vbmi" if size > 32 else "avx512f"
    if TARGET.kind.name != "llvm" or not target_has_features([feature], TARGET):
        pytest.skip(f"a {size}-entry directory needs {feature}")


@pytest.mark.parametrize("breakpoints, size", [
    (_graded(1), 16), (_graded(1.3), 32), (_graded(2), 64),
    (_graded(2.3), 128), (_learned_like(), None), (EXP.breakpoints, None),
], ids=["16", "32", "64", "128", "learned", "exp"])
def test_compiled_directory_picks_the_searched_segment_bit_for_bit(breakpoints, size):
    """Slope 0 and intercept i make the output the segment index: it must equal NumPy's, exactly."""
    _needs(size or 128)
    b = np.asarray(breakpoints, np.float32)
    x = _probe_inputs(b, segment_directory.plan(b, 128))
    got = run_kernel(pwl_func(_step_table(b), x.shape), x)
    want = pwl_reference(_step_table(b), x)
    np.testing.assert_array_equal(got, want)  # NaN in, NaN out; every other input its exact segment index


AVX2 = Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})


@pytest.mark.parametrize("table", [GELU, EXP, SimpleNamespace(
    breakpoints=_learned_like(), slopes=RNG.standard_normal(16).astype(np.float32),
    intercepts=RNG.standard_normal(16).astype(np.float32), scaling="none")], ids=["gelu", "exp", "learned"])
@pytest.mark.parametrize("shape", [(1024,), (8, 8), (3, 5, 7), (0,)], ids=["16-lanes", "8-lanes", "scalar", "empty"])
def test_directory_output_equals_the_search_bit_for_bit(table, shape):
    """The directory build (AVX-512) and the search build (AVX2) give the same output, bit for bit, and match the
    NumPy reference (`PWLTable.__call__` semantics) up to the FMA's rounding."""
    _needs(128)
    if not target_has_features(["avx2"], TARGET):
        pytest.skip("needs AVX2 for the search build")
    x = _probe_inputs(table.breakpoints)
    x = np.resize(x, shape) if x.size and np.prod(shape) else np.zeros(shape, np.float32)
    directory = run_kernel(pwl_func(table, shape), x)
    search = run_kernel(pwl_func(table, shape), x, target=AVX2)
    np.testing.assert_array_equal(directory.view(np.int32), search.view(np.int32))
    assert_matches(directory, pwl_reference(table, x))


def _loop_body(table, target=TARGET) -> list[str]:
    blocks = [b for b in _basic_blocks(_asm((128, 3072), target, table)) if any(i.startswith("vperm") for i in b)]
    return max(blocks, key=len)


@pytest.mark.parametrize("breakpoints, permute", [
    (_graded(1), "vpermd"), (_graded(1.3), "vpermi2d"), (_graded(2), "vpermb"),
    (_graded(2.3), "vpermi2b"),
], ids=["16", "32", "64", "128"])
def test_directory_lookup_is_one_permute(breakpoints, permute):
    _needs(128)
    body = _loop_body(_step_table(np.asarray(breakpoints, np.float32)))
    assert any(i.startswith("vcvttps2dq") for i in body), "no cell computed: the search was kept"
    assert any(i.split()[0] in (permute, permute.replace("i2", "t2")) for i in body)


@pytest.mark.parametrize("breakpoints", [_graded(3), np.array([-1.0, 0.0, 1.0], np.float32)],
                         ids=["too-crowded", "four-segments"])
def test_search_is_kept_where_no_directory_serves(breakpoints):
    _needs(128)
    body = _loop_body(_step_table(np.asarray(breakpoints, np.float32)))
    assert not any(i.startswith("vcvttps2dq") for i in body)
