"""LUTDense on graphs from both importers: every dense / conv form replaced, output equal to the PyTorch PQ
reference, and every layer it cannot serve kept exact with its reason."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from relay_passes import LUTDense, PassReport
from schedules import host_target
from schedules.intrin import lookup_intrin
from tvm_lut.bundle import Bundle
from tvm_lut.frontend import from_onnx, from_torch
from tvm_lut.pq.reference import pq_forward
from tvm_lut.pq.table import PQTable

TARGET = host_target()
pytestmark = pytest.mark.skipif(lookup_intrin(TARGET) is None, reason="this CPU has no lookup intrinsic")


class Net(torch.nn.Module):
    """A batched linear with bias, one without, a padded 3x3 conv with bias and a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(8, 6), torch.nn.Linear(6, 5, bias=False)
        self.conv3, self.conv1 = torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.Conv2d(5, 2, 1)

    def forward(self, x, image):
        return self.fc2(self.fc1(x)), self.conv1(self.conv3(image))


def _entry(rng, layer, sub_len, **conv):
    weight = layer.weight.detach().numpy()
    inputs = weight.reshape(weight.shape[0], -1).shape[1]
    centroids = rng.standard_normal((inputs // sub_len, 16, sub_len)).astype(np.float32)
    bias = None if layer.bias is None else layer.bias.detach().numpy()
    if conv:
        conv = {"stride": (1, 1), "dilation": (1, 1), **conv}
    return PQTable.from_weight(centroids, weight, bias, **conv)


@pytest.fixture(scope="module")
def net_and_bundle():
    torch.manual_seed(0)
    net, rng = Net().eval(), np.random.default_rng(0)
    entries = {
        "fc1": _entry(rng, net.fc1, 2),
        "fc2": _entry(rng, net.fc2, 3),  # V = 3, D = 6
        "conv3": _entry(rng, net.conv3, 9, kernel_size=(3, 3), padding=(1, 1)),
        "conv1": _entry(rng, net.conv1, 5, kernel_size=(1, 1), padding=(0, 0)),
    }
    return net, Bundle(entries)


def _reference(bundle, x, image):
    with torch.no_grad():
        dense = pq_forward(pq_forward(x, bundle["fc1"]), bundle["fc2"])
        conv = pq_forward(pq_forward(image, bundle["conv3"]), bundle["conv1"])
    return dense.numpy(), conv.numpy()


def _run(mod, *inputs):
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())
    outputs = vm["main"](*[tvm.runtime.tensor(a.numpy()) for a in inputs])
    return [outputs.numpy()] if hasattr(outputs, "numpy") else [out.numpy() for out in outputs]


@pytest.mark.parametrize("images", [1, 2])  # a conv's (O, pixels) output: reshaped for one image, permuted for more
@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_every_layer_is_replaced_and_equals_the_reference(net_and_bundle, importer, images):
    net, bundle = net_and_bundle
    x, image = torch.randn(2, 3, 8), torch.randn(images, 3, 6, 6)
    mod = from_torch(net, (x, image)) if importer == "torch" else from_onnx(net, example_args=(x, image))
    lut = LUTDense(bundle, target=TARGET)
    rewritten = lut(mod)
    report = PassReport.of(rewritten, "LUTDense")
    assert report.counts() == {"dense": 2, "conv2d": 2} and not report.kept
    text = rewritten.script()
    assert "R.matmul" not in text and "R.nn.conv2d" not in text
    assert text.count("pq_encode_") >= 4 and text.count("pq_lookup_") >= 4
    for got, want in zip(_run(rewritten, x, image), _reference(bundle, x, image)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_layers_it_cannot_serve_stay_exact_with_a_reason(net_and_bundle):
    net, bundle = net_and_bundle
    strided = Net().eval()
    strided.load_state_dict(net.state_dict())
    strided.conv3.stride = (2, 2)  # same weight, different geometry than the entry was trained for
    partial = Bundle({"fc1": bundle["fc1"], "conv3": bundle["conv3"]})
    x, image = torch.randn(2, 3, 8), torch.randn(1, 3, 6, 6)
    mod = from_torch(strided, (x, image))
    lut = LUTDense(partial, target=TARGET)
    rewritten = lut(mod)
    report = PassReport.of(rewritten, "LUTDense")
    reasons = [entry.reason for entry in report.kept]
    assert report.counts() == {"dense": 1}
    assert sum("no pq entry" in r for r in reasons) == 2  # fc2, conv1
    assert any("stride/dilation (2, 2)/(1, 1) in the graph, (1, 1)/(1, 1) in the entry" in r for r in reasons)
    assert len(reasons) == 3
    with torch.no_grad():
        want_conv = strided(x, image)[1].numpy()
    np.testing.assert_allclose(_run(rewritten, x, image)[1], want_conv, rtol=1e-4, atol=1e-5)


def test_a_target_without_a_lookup_intrinsic_keeps_everything_exact(net_and_bundle):
    net, bundle = net_and_bundle
    mod = from_torch(net, (torch.randn(2, 3, 8), torch.randn(1, 3, 6, 6)))
    lut = LUTDense(bundle, target=tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"}))
    rewritten = lut(mod)
    report = PassReport.of(rewritten, "LUTDense")
    assert not report.replaced and len(report.kept) == 4
    assert all("no lookup intrinsic" in entry.reason for entry in report.kept)


def test_a_float16_layer_stays_exact(net_and_bundle):
    net, bundle = net_and_bundle
    # Built by hand: TVM's torch importer fails on a half-precision nn.Linear (addmm with a float32 result).
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float16"))
    with builder.function("main", [x]):
        with builder.dataflow():
            weight = relax.const(net.fc1.weight.detach().numpy().astype(np.float16))
            out = builder.emit_output(relax.op.matmul(x, relax.op.permute_dims(weight)))
        builder.emit_func_output(out)
    mod = builder.get()
    lut = LUTDense(bundle, target=TARGET)
    rewritten = lut(mod)
    report = PassReport.of(rewritten, "LUTDense")
    assert not report.replaced
    assert [entry.reason for entry in report.kept] == ["dtype float16: the PQ kernels compute in float32"]


def test_misuse_is_rejected(net_and_bundle):
    with pytest.raises(TypeError, match="needs a tvm_lut.Bundle"):
        LUTDense(None)
    with pytest.raises(TypeError, match="target must be a tvm.target.Target"):
        LUTDense(net_and_bundle[1], target="llvm")


@pytest.mark.slow
def test_minilm_with_learned_tables_equals_the_pytorch_pq_model():
    """MiniLM-L6, every encoder Linear PQ (K=16, V=32, k-means + one epoch of centroid learning on real tweets),
    imported with torch.export, LUTDense, compiled: the sentence embeddings equal the PyTorch PQ model's."""
    from tvm_lut.datasets.tweets import load_tweets
    from tvm_lut.models.minilm import load_minilm
    from tvm_lut.pq.config import PQConfig
    from tvm_lut.pq.handler import learn_pq

    ids, mask = (torch.from_numpy(a) for a in load_tweets().calibration.head(96).tokens(length=32))
    model = load_minilm()
    batches = [((ids[i:i + 16], mask[i:i + 16]), None) for i in range(16, 96, 16)]
    learned = learn_pq(model, batches, PQConfig(K=16, V=32, epochs=1, include=("encoder.*",)), progress=False)
    lut = LUTDense(learned.bundle, target=TARGET)
    rewritten = lut(from_torch(model, (ids[:16], mask[:16])))
    report = PassReport.of(rewritten, "LUTDense")
    assert not report.kept and report.counts() == {"dense": 36}
    got = _run(rewritten, ids[:16], mask[:16])[0]
    with torch.no_grad():
        want = learned.model(ids[:16], mask[:16]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_tvm_lut_pipeline_builds_lut_kernels_beside_an_exact_conv_with_a_folded_weight(net_and_bundle):
    """The pipeline splits the exact conv's weight repacking out and folds it; the hand-written LUT kernels, which
    TVM's splitting pass cannot read, are left as they are."""
    from relay_passes.pipeline import tvm_lut_pipeline

    net, bundle = net_and_bundle
    partial = Bundle({"fc1": bundle["fc1"], "conv1": bundle["conv1"]})  # conv3 and fc2 stay exact
    x, image = torch.randn(2, 3, 8), torch.randn(1, 3, 6, 6)
    pipeline = tvm_lut_pipeline(bundle=partial, target=TARGET)
    executable = tvm.compile(from_torch(net, (x, image)), target=TARGET, relax_pipeline=pipeline)
    calls = executable.as_text().split("@main:")[1].split("\n\n")[0]
    assert "_prepacked" in calls and "_weight_prepack" not in calls
    outputs = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()),
                                                                 tvm.runtime.tensor(image.numpy()))
    with torch.no_grad():
        want = net.fc2(pq_forward(x, bundle["fc1"])).numpy(), pq_forward(net.conv3(image), bundle["conv1"]).numpy()
    for got, expected in zip(outputs, want):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_a_dense_layer_with_a_few_rows_takes_the_few_row_kernels(net_and_bundle, importer):
    """One row would fill one of the lookup's 32 or 64 lanes: such a layer gets the kernels that vectorize across
    centroids and outputs instead, with the same results."""
    net, bundle = net_and_bundle
    x, image = torch.randn(1, 1, 8), torch.randn(1, 3, 6, 6)
    mod = from_torch(net, (x, image)) if importer == "torch" else from_onnx(net, example_args=(x, image))
    rewritten = LUTDense(bundle, target=TARGET)(mod)
    kernels = {str(f.attrs["tvm_lut.kernel"]) for f in rewritten.functions.values()
               if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "tvm_lut.kernel" in f.attrs}
    assert kernels == {"pq_encode_rows", "pq_lookup_rows", "pq_encode", "pq_lookup"}  # dense: few rows; conv: lanes
    for got, want in zip(_run(rewritten, x, image), _reference(bundle, x, image)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class GeluMLP(torch.nn.Module):
    """A dense layer whose output only GELU reads (the transformer's intermediate layer), then another."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 16)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


@pytest.fixture(scope="module")
def gelu_mlp_and_bundle():
    from tvm_lut.defaults import default_bundle

    torch.manual_seed(0)
    net, rng = GeluMLP().eval(), np.random.default_rng(0)
    return net, default_bundle().merged(Bundle({"fc1": _entry(rng, net.fc1, 4), "fc2": _entry(rng, net.fc2, 4)}))


def _lut_rewrites(mod, bundle, target, dense_first=False):
    from relay_passes import LUTNonlinear

    passes = [LUTNonlinear(bundle), LUTDense(bundle, target=target)]
    with target:
        for lut_pass in passes[::-1] if dense_first else passes:
            mod = lut_pass(mod)
    return mod


def _calls(mod) -> str:
    return "\n".join(line for line in mod["main"].script().splitlines() if "R.call_tir" in line)


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_gelu_after_a_dense_layer_runs_in_its_lookups_epilogue_bit_for_bit(gelu_mlp_and_bundle, importer):
    """With the `vpermb` lookup, the GELU kernel LUTNonlinear wrote joins the lookup before it (directly or through
    the reshape torch.export puts between them): same outputs, bit for bit, as the two kernels (LUTDense run first,
    which leaves GELU to LUTNonlinear)."""
    from schedules.kernels.pq_lookup_dot import dot_lookup_supported

    if not dot_lookup_supported(TARGET, 64):
        pytest.skip("this CPU has no AVX-512 VBMI + VNNI")
    net, bundle = gelu_mlp_and_bundle
    x = torch.randn(2, 40, 32)
    x[0, 0, :3] = torch.tensor([float("nan"), float("inf"), 1e30])
    mod = from_torch(net, (x,)) if importer == "torch" else from_onnx(net, example_args=(x,))
    fused, apart = _lut_rewrites(mod, bundle, TARGET), _lut_rewrites(mod, bundle, TARGET, dense_first=True)
    assert "pq_lookup_fc1_lut_gelu" in _calls(fused) and "(lut_gelu," not in _calls(fused)
    assert "(lut_gelu," in _calls(apart) and "(pq_lookup_fc1," in _calls(apart)
    report = PassReport.of(fused, "LUTDense")
    assert report.counts() == {"dense": 2} and "then a table kernel" in report.replaced[0].form
    np.testing.assert_array_equal(_run(fused, x)[0], _run(apart, x)[0])


def test_gelu_stays_a_kernel_of_its_own_where_the_lookup_has_no_epilogue(gelu_mlp_and_bundle):
    """AVX2 (the `vpshufb` lookup): the dense layers are replaced, GELU stays the table kernel."""
    from schedules.target import resolve_target

    net, bundle = gelu_mlp_and_bundle
    x = torch.randn(2, 40, 32)
    rewritten = _lut_rewrites(from_torch(net, (x,)), bundle, resolve_target("x86-64-v3"))
    assert PassReport.of(rewritten, "LUTDense").counts() == {"dense": 2}
    assert "(lut_gelu," in _calls(rewritten) and "(pq_lookup_fc1," in _calls(rewritten)
