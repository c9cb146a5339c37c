import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from relay_passes import PassReport
from relay_passes.pipeline import LUTPipeline, report_of, tvm_lut_pipeline, without_reports
from schedules import host_target
from tvm_lut.frontend import from_onnx, from_torch

TARGET = host_target()


class Block(nn.Module):
    """A transformer-shaped block: dense + bias, GELU, residual, LayerNorm, attention-like softmax."""

    def __init__(self, hidden=24):
        super().__init__()
        self.up, self.down = nn.Linear(hidden, 2 * hidden), nn.Linear(2 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x):
        h = self.norm(x + self.down(nn.functional.gelu(self.up(x))))
        return torch.softmax(h @ h.transpose(-1, -2), dim=-1)


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 10, 24)
    with torch.no_grad():
        expected = model(x).numpy()
    return model, x, expected


def _compile(pipeline, mod):
    """The executable and the report of the pipeline's run (which rides on the lowered module)."""
    with TARGET:
        lowered = pipeline(mod)
    return tvm.compile(without_reports(lowered), target=TARGET, relax_pipeline=None), report_of(lowered)


def _run(executable, x: torch.Tensor) -> np.ndarray:
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()))
    return out.numpy()


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_exact_model_is_fully_scheduled_and_exact(block, importer):
    model, x, expected = block
    mod = from_torch(model, (x,)) if importer == "torch" else from_onnx(model, example_args=(x,))
    executable, report = _compile(tvm_lut_pipeline(target=TARGET), mod)
    result = _run(executable, x)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)
    assert report["unscheduled"] == [] and report["passes"] == []
    assert "Matmul" in report["scheduled"].values() and "Reduction" in report["scheduled"].values()


def test_registered_name_works_with_no_arguments(block):
    model, x, expected = block
    executable = tvm.compile(from_torch(model, (x,)), target=TARGET, relax_pipeline="tvm_lut")
    np.testing.assert_allclose(_run(executable, x), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(relax.get_pipeline("tvm_lut"), tvm.transform.Pass)


def test_nonlinear_uses_the_shipped_tables_and_reports_them(block):
    model, x, expected = block
    executable, report = _compile(tvm_lut_pipeline(nonlinear=True, target=TARGET), from_torch(model, (x,)))
    result = _run(executable, x)
    (lut_report,) = report["passes"]
    assert lut_report["pass"] == "LUTNonlinear" and lut_report["replaced"]
    assert report["unscheduled"] == []
    np.testing.assert_allclose(result, expected, atol=0.05)


def test_without_a_target_says_so(block):
    model, x, _ = block
    with pytest.raises(ValueError, match="needs a target"):
        LUTPipeline()(from_torch(model, (x,)))


def test_missing_database_is_an_error(block, tmp_path):
    model, x, _ = block
    with pytest.raises(FileNotFoundError, match="no tuning database"):
        tvm.compile(from_torch(model, (x,)), target=TARGET,
                    relax_pipeline=tvm_lut_pipeline(database=tmp_path, target=TARGET))


def test_nonlinear_and_pq_compose(block):
    """A PQ-only bundle with nonlinear=True gives both passes; the NN-LUT one gets the shipped tables it lacks.
    A PQ-only bundle alone runs LUTDense only; one bundle may hold both kinds."""
    from relay_passes import LUTDense, LUTNonlinear
    from relay_passes.pipeline import lut_passes
    from tvm_lut import Bundle, default_bundle
    from tvm_lut.pq.table import PQTable

    model, _, _ = block
    centroids = np.random.default_rng(0).standard_normal((3, 16, 8)).astype(np.float32)
    pq = Bundle({"up": PQTable.from_weight(centroids, model.up.weight.detach().numpy())})
    nonlinear, dense = lut_passes(pq, nonlinear=True)
    assert isinstance(nonlinear, LUTNonlinear) and isinstance(dense, LUTDense)
    assert nonlinear.bundle.pwl("gelu") is not None and "up" in nonlinear.bundle
    assert [type(p) for p in lut_passes(pq)] == [LUTDense]
    both = pq.merged(default_bundle())
    assert [type(p) for p in lut_passes(both)] == [LUTNonlinear, LUTDense]
    assert lut_passes(both, nonlinear=True)[0].bundle is both  # nothing to fill in

    x = torch.randn(2, 10, 24)
    with torch.no_grad():
        expected = model(x).numpy()
    executable, report = _compile(tvm_lut_pipeline(bundle=pq, nonlinear=True, target=TARGET), from_torch(model, (x,)))
    result = _run(executable, x)
    lut, pq_report = report["passes"]
    assert lut["pass"] == "LUTNonlinear" and {e["op"] for e in lut["replaced"]} == {"gelu", "softmax", "layer_norm"}
    assert [e["entry"] for e in pq_report["replaced"]] == ["up"] and pq_report["unused"] == []
    assert np.isfinite(result).all() and result.shape == expected.shape


def test_pq_report_names_fingerprint_mismatches(block):
    """Entries learned for other weights: each dense layer kept exact with the reason, each entry listed unused."""
    from relay_passes import LUTDense
    from tvm_lut import Bundle
    from tvm_lut.pq.table import PQTable

    model, x, _ = block
    other = model.up.weight.detach().numpy() + 1e-3
    centroids = np.random.default_rng(0).standard_normal((3, 16, 8)).astype(np.float32)
    pass_ = LUTDense(Bundle({"up": PQTable.from_weight(centroids, other)}), target=TARGET)
    report = PassReport.of(pass_(from_torch(model, (x,))), "LUTDense")
    reasons = [entry.reason for entry in report.kept]
    assert any("fingerprint mismatch" in r and "'up'" in r and "belongs to other weights" in r for r in reasons)
    assert any("no pq entry in the bundle for a weight of shape (24, 48)" in r for r in reasons)
    (unused,) = report.unused
    assert unused.entry == "up" and "matches no dense/conv weight" in unused.reason
    assert "1 bundle entries matched no op" in report.summary()


def test_a_pass_object_keeps_no_state_each_module_carries_its_report(block):
    """One LUTNonlinear run on two modules: each result carries its own report, the pass object holds none; the
    registered pipeline run twice reports each run on its own module."""
    from relay_passes import LUTNonlinear
    from tvm_lut import default_bundle

    model, x, _ = block
    pass_ = LUTNonlinear(default_bundle())
    state = dict(vars(pass_))
    with_gelu = pass_(from_torch(model, (x,)))
    softmax_only = pass_(from_torch(nn.Softmax(dim=-1), (x,)))
    assert PassReport.of(with_gelu, "LUTNonlinear").counts() == {"gelu": 1, "softmax": 1, "layer_norm": 1}
    assert PassReport.of(softmax_only, "LUTNonlinear").counts() == {"softmax": 1}
    assert vars(pass_).keys() == state.keys() and not hasattr(pass_, "report")
    assert [r.pass_name for r in PassReport.all_of(with_gelu)] == ["LUTNonlinear"]
    with pytest.raises(LookupError, match="no LUTDense report on this module"):
        PassReport.of(with_gelu, "LUTDense")

    pipeline = tvm_lut_pipeline(nonlinear=True, target=TARGET)
    _, first = _compile(pipeline, from_torch(model, (x,)))
    _, second = _compile(pipeline, from_torch(nn.Softmax(dim=-1), (x,)))
    assert [p["pass"] for p in first["passes"]] == ["LUTNonlinear"] == [p["pass"] for p in second["passes"]]
    assert {e["op"] for e in second["passes"][0]["replaced"]} == {"softmax"} != {
        e["op"] for e in first["passes"][0]["replaced"]}
    assert not hasattr(pipeline, "report") and not hasattr(pipeline, "schedules")


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_no_function_is_left_uncalled(block, importer):
    """`RewriteDataflowReshape` turns calls of reshape-only PrimFuncs into views and leaves the functions behind
    (here the input's reshapes to rows and back around the dense layers): the pipeline drops them before they are
    compiled."""
    model, x, _ = block
    mod = from_torch(model, (x,)) if importer == "torch" else from_onnx(model, example_args=(x,))
    with TARGET:
        lowered = tvm_lut_pipeline(nonlinear=True, target=TARGET)(mod)
    called = set(relax.analysis.all_global_vars(lowered["main"]))
    functions = {gv for gv, func in lowered.functions_items() if isinstance(func, tvm.tirx.PrimFunc)}
    assert functions and not {gv.name_hint for gv in functions - called}


def _tensors_per_storage(main: relax.Function) -> list[int]:
    """How many tensors the lowered `main` places in each storage it allocates."""
    storages, tensors = [], {}
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.vm.alloc_storage":
                storages.append(binding.var)
            elif isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.vm.alloc_tensor":
                tensors[value.args[0]] = tensors.get(value.args[0], 0) + 1
    return [tensors.get(storage, 0) for storage in storages]


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_several_cores_give_every_tensor_a_storage_of_its_own(block, importer):
    """At one core TVM's static plan shares storages between tensors; at several none is shared (`lowering_passes`:
    a shared storage is written by differently split kernels), and the results are the same."""
    model, x, _ = block
    mod = from_torch(model, (x,)) if importer == "torch" else from_onnx(model, example_args=(x,))
    outputs = {}
    for cores in (1, 2):
        target = host_target(cores)
        with target:
            lowered = without_reports(tvm_lut_pipeline(nonlinear=True, target=target)(mod))
        per_storage = _tensors_per_storage(lowered["main"])
        assert max(per_storage) > 1 if cores == 1 else set(per_storage) == {1}
        vm = relax.VirtualMachine(relax.build(lowered, target=target, relax_pipeline=None), tvm.cpu())
        outputs[cores] = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_array_equal(outputs[1], outputs[2])
