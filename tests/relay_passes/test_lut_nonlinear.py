"""LUTNonlinear on whole imported graphs: both importers, several ONNX opsets, compiled and compared to PyTorch.

With exact stand-in kernels the rewritten graph must match PyTorch to float rounding (that checks the rewiring).
With the LUT kernels the tolerance comes from the tables: the output may differ from PyTorch by at most `GAIN`
times the largest table error (measured: 0.031 against a table error of 0.045 on the tiny BERT block).
"""

import math

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from nonlinear_stand_ins import ExactKernels, bundle, module_of, tables
from relay_passes import LUTNonlinear
from relay_passes.report import PassReport, without_reports
from tvm_lut.frontend import from_onnx, from_torch

GAIN = 2.0
TARGET = {"kind": "llvm"}


def _table_error() -> float:
    """Largest error of the stand-in tables on a dense grid of their ranges: absolute for GELU and exp (their
    outputs enter sums), relative for reciprocal and rsqrt (they scale)."""
    grids = {"gelu": np.linspace(-8, 8, 4001), "exp": np.linspace(-20, 0, 4001),
             "reciprocal": np.linspace(1, 2, 4001), "rsqrt": np.linspace(1, 4, 4001)}
    exact = {"gelu": lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2))), "exp": np.exp,
             "reciprocal": lambda v: 1 / v, "rsqrt": lambda v: v**-0.5}
    errors = []
    for name, x in grids.items():
        want = exact[name](x)
        error = np.abs(tables()[name](x.astype(np.float32)) - want)
        errors.append(np.max(error if name in ("gelu", "exp") else error / want))
    return float(max(errors))


class Block(torch.nn.Module):
    """GELU (erf and tanh), softmax over a middle axis, and a LayerNorm without affine."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.proj(x)) + torch.nn.functional.gelu(x, approximate="tanh")
        p = torch.softmax(h.reshape(2, 4, 3, 8), dim=1).reshape(24, 8)
        return torch.nn.functional.layer_norm(p * 10 + h, (8,))


def _compile_and_run(mod, inputs):
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(TARGET)), tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(t.numpy()) for t in inputs)).numpy()


def _import(model, inputs, source):
    if source == "torch":
        return from_torch(model, inputs)
    return from_onnx(model, opset=source, example_args=inputs)


@pytest.mark.parametrize("source", ["torch", 14, 17, 20])
def test_bert_like_block_from_both_importers(monkeypatch, tiny_bert, source):
    """Exact stand-in kernels: the rewritten graph must match PyTorch to float rounding."""
    kernels = ExactKernels().install(monkeypatch)
    model, inputs = tiny_bert
    lut = LUTNonlinear(bundle())
    mod = lut(_import(model, inputs, source))
    report = PassReport.of(mod, "LUTNonlinear")
    assert report.counts() == {"gelu": 1, "softmax": 1, "layer_norm": 3}, str(report)
    assert report.kept == []
    # The two LayerNorms after a residual add share one kernel (with the add fused in); the embeddings' has its own.
    assert sorted(kernels.calls) == ["layer_norm_func", "layer_norm_func", "pwl_func", "softmax_func"]
    assert sum(e.form.endswith(", residual add") for e in report.replaced) == 2, str(report)
    assert [e.form for e in report.replaced if e.op == "softmax"] == ["R.nn.softmax, scale and mask add"]
    with torch.no_grad():
        expected = model(*inputs).numpy()
    np.testing.assert_allclose(_compile_and_run(mod, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source", ["torch", 13])
def test_every_form_of_a_small_module(monkeypatch, source):
    ExactKernels().install(monkeypatch)
    torch.manual_seed(1)
    model, x = Block().eval(), (torch.randn(24, 8) * 3,)
    lut = LUTNonlinear(bundle())
    mod = lut(_import(model, x, source))
    report = PassReport.of(mod, "LUTNonlinear")
    assert report.counts() == {"gelu": 2, "softmax": 1, "layer_norm": 1}, str(report)
    forms = {e.form for e in report.replaced}
    assert forms >= ({"erf-decomposed", "tanh-decomposed", "decomposed"} if source == 13 else {"R.nn.gelu_tanh"})
    with torch.no_grad():
        expected = model(*x).numpy()
    np.testing.assert_allclose(_compile_and_run(mod, x), expected, atol=1e-5, rtol=1e-5)


def test_pass_runs_in_a_sequential_and_keeps_its_report(monkeypatch, tiny_bert):
    ExactKernels().install(monkeypatch)
    model, inputs = tiny_bert
    lut = LUTNonlinear(bundle(), ops=("softmax",))
    mod = tvm.ir.transform.Sequential([lut, relax.transform.LegalizeOps()])(from_torch(model, inputs))
    assert PassReport.of(mod, "LUTNonlinear").counts() == {"softmax": 1}
    assert [gv.name_hint for gv in mod.get_global_vars()].count("lut_softmax") == 1


@pytest.mark.slow
@pytest.mark.parametrize("source", ["torch", 14])
def test_bert_like_block_with_the_lut_kernels(tiny_bert, source):
    """The LUT kernels of `schedules`: the output stays within GAIN x the tables' error of PyTorch."""
    model, inputs = tiny_bert
    lut = LUTNonlinear(bundle())
    mod = lut(_import(model, inputs, source))
    report = PassReport.of(mod, "LUTNonlinear")
    assert report.counts() == {"gelu": 1, "softmax": 1, "layer_norm": 3}, str(report)
    with torch.no_grad():
        expected = model(*inputs).numpy()
    np.testing.assert_allclose(_compile_and_run(mod, inputs), expected, atol=GAIN * _table_error(), rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["torch", 14, 17])
def test_minilm_counts(monkeypatch, source):
    """all-MiniLM-L6-v2: 6 GELU, 6 softmax, 13 LayerNorm (embeddings + 2 per layer), whatever the importer."""
    from tvm_lut.models.minilm import load_minilm

    ExactKernels().install(monkeypatch)
    model = load_minilm()
    inputs = (torch.randint(1000, 2000, (1, 16)), torch.ones(1, 16, dtype=torch.int64))
    lut = LUTNonlinear(bundle())
    mod = lut(_import(model, inputs, source))
    report = PassReport.of(mod, "LUTNonlinear")
    assert report.counts() == {"gelu": 6, "softmax": 6, "layer_norm": 13}, str(report)
    assert report.kept == []


def test_default_tables_when_no_bundle(monkeypatch):
    from tvm.script import relax as R

    from nonlinear_stand_ins import RecordingBuilders
    from tvm_lut.defaults import default_bundle

    builders = RecordingBuilders({"pwl_func": ExactKernels().pwl_func(tables()["gelu"], (2, 8))}).install(monkeypatch)
    lut = LUTNonlinear()
    mod = lut(module_of(lambda bb, x: R.nn.gelu(x)))
    assert PassReport.of(mod, "LUTNonlinear").counts() == {"gelu": 1}
    ((_, (table, *_), _),) = builders.calls
    assert table == default_bundle().pwl("gelu")


@pytest.mark.slow
def test_minilm_with_default_tables_and_lut_kernels():
    """all-MiniLM-L6-v2 with every GELU, softmax and LayerNorm on the shipped tables: the sentence embeddings keep
    a cosine >= 0.999 with PyTorch's (the project's accuracy target)."""
    from tvm_lut.models.minilm import load_minilm

    model = load_minilm()
    torch.manual_seed(0)
    inputs = (torch.randint(1000, 20000, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
    lut = LUTNonlinear()
    mod = lut(from_torch(model, inputs))
    report = PassReport.of(mod, "LUTNonlinear")
    assert report.counts() == {"gelu": 6, "softmax": 6, "layer_norm": 13}, str(report)
    with torch.no_grad():
        expected = model(*inputs).numpy()
    actual = _compile_and_run(mod, inputs)
    cosine = np.sum(actual * expected, axis=1) / np.linalg.norm(actual, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.999, cosine


def test_a_second_run_changes_nothing(monkeypatch, tiny_bert):
    ExactKernels().install(monkeypatch)
    model, inputs = tiny_bert
    once = without_reports(LUTNonlinear(bundle())(from_torch(model, inputs)))
    twice = LUTNonlinear(bundle())(once)
    tvm.ir.assert_structural_equal(without_reports(twice), once)
    report = PassReport.of(twice, "LUTNonlinear")
    assert report.replaced == [] and report.kept == []


@pytest.mark.parametrize("shape", [(0, 8), (3, 0), (1, 1, 7)])
def test_zero_size_and_odd_shapes_with_the_lut_kernels(shape):
    """Zero-size and odd shapes go through the pass and the kernels like any other static shape."""
    from tvm.script import relax as R

    lut = LUTNonlinear(bundle())
    mod = lut(module_of(lambda bb, x: R.nn.softmax(bb.emit(R.nn.gelu(x)), axis=-1), shape))
    assert PassReport.of(mod, "LUTNonlinear").counts() == {"gelu": 1, "softmax": 1}
    data = np.random.default_rng(0).normal(size=shape).astype("float32")
    expected = torch.softmax(torch.nn.functional.gelu(torch.from_numpy(data)), dim=-1).numpy()
    np.testing.assert_allclose(_compile_and_run(mod, (torch.from_numpy(data),)), expected,
                               atol=GAIN * _table_error(), rtol=0)


def _onnx_node_cases():
    """The ONNX backend node cases of the three ops (onnx generates them in memory), the fused ops and the
    softmaxes in ONNX's own expansion; the expanded GELU (Sum of a stack) and LayerNorm (the importer rejects
    them) are not forms an exporter writes."""
    import re

    from onnx.backend.test.loader import load_model_tests

    wanted = re.compile(r"test_(gelu|layer_normalization|softmax)_.*")
    return [c for c in load_model_tests(kind="node") if wanted.fullmatch(c.name)
            and ("expanded" not in c.name or c.name.startswith("test_softmax"))]


@pytest.mark.slow
def test_onnx_backend_node_cases(monkeypatch):
    """Every case is replaced once and, with exact stand-in kernels, reproduces ONNX's reference output (the first
    one: some LayerNormalization cases also output the mean and inverse std, which stay exact)."""
    kernels = ExactKernels().install(monkeypatch)
    cases = _onnx_node_cases()
    assert len(cases) == 44
    for case in cases:
        inputs, (expected, *_) = ([np.asarray(a) for a in arrays] for arrays in case.data_sets[0])
        lut = LUTNonlinear(bundle())
        mod = lut(from_onnx(case.model))
        report = PassReport.of(mod, "LUTNonlinear")
        assert sum(report.counts().values()) == 1 and report.kept == [], (case.name, str(report))
        vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(TARGET)), tvm.cpu())
        actual = vm["main"](*(tvm.runtime.tensor(a) for a in inputs))
        actual = (actual if hasattr(actual, "numpy") else actual[0]).numpy()
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, err_msg=case.name)
    assert len(kernels.calls) == len(cases)
