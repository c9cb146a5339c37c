"""PQ tables from calibration data alone: the layers found in ONNX and torch.export graphs, the fit, and the
compiled model against the PQ reference (issue 12: a model with no training code)."""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

import tvm_lut
from tvm_lut import fingerprint
from tvm_lut.frontend import from_onnx
from tvm_lut.pq.calibration_fit import (DenseLayer, FitSettings, fit_layer, learn_from_onnx, learn_from_pt2,
                                        onnx_layers)
from tvm_lut.pq.config import PQConfig
from tvm_lut.pq.reference import pq_forward


class Small(nn.Module):
    """Every layer form: a 3x3 conv, a 1x1 conv, a 2-D linear (ONNX Gemm), a batched linear (ONNX MatMul + Add)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.point = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 32)
        self.tokens = nn.Linear(8, 16)

    def forward(self, x):
        y = torch.relu(self.point(torch.relu(self.conv(x))))
        return torch.relu(self.fc(y.flatten(1))).reshape(-1, 4, 8), self.tokens(y.flatten(2).transpose(1, 2))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    model = Small().eval()
    folder = tmp_path_factory.mktemp("fit")
    x = torch.randn(4, 2, 4, 4)
    torch.onnx.export(model, (x,), str(folder / "small.onnx"), input_names=["x"], opset_version=17, dynamo=False)
    torch.export.save(torch.export.export(model, (x,)), folder / "small.pt2")
    batches = [{"x": np.random.default_rng(i).standard_normal((4, 2, 4, 4)).astype(np.float32)} for i in range(16)]
    return model, folder, batches


def test_onnx_layers_are_found_in_torch_layout(small):
    import onnx

    model, folder, _ = small
    layers, kept = onnx_layers(onnx.load(str(folder / "small.onnx")))
    by_weight = {fingerprint(layer.weight)["sha256"]: layer for layer in layers}
    for name in ("conv", "point", "fc", "tokens"):
        module = getattr(model, name)
        layer = by_weight[fingerprint(module.weight.detach())["sha256"]]
        np.testing.assert_array_equal(layer.bias, module.bias.detach().numpy())
        assert (layer.conv is not None) == isinstance(module, nn.Conv2d), name
    assert len(layers) == 4 and kept == {}


def test_the_fit_reconstructs_the_output_better_than_kmeans():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(2048, 32, generator=generator) @ torch.randn(32, 32, generator=generator)
    weight = torch.randn(24, 32, generator=generator).numpy()
    for settings in (FitSettings(refine_steps=0), FitSettings(refine_steps=30)):
        centroids, table, errors = fit_layer(rows, weight, K=16, V=4, settings=settings)
        assert centroids.shape == (8, 16, 4) and table.shape == (8, 16, 24)
        assert errors["fitted"] < 0.8 * errors["kmeans"], errors
    with pytest.raises(ValueError, match="V=5 does not divide the input length 32"):
        fit_layer(rows, weight, K=16, V=5)


def _pq_output(x: np.ndarray, centroids: np.ndarray, table: np.ndarray) -> np.ndarray:
    C, K, V = centroids.shape
    subs = x.reshape(len(x), C, 1, V)
    codes = ((subs - centroids[None]) ** 2).sum(-1).argmin(-1)  # (N, C)
    return table[np.arange(C), codes].sum(1)


def test_the_ridge_chosen_on_held_out_rows_generalizes_where_a_weak_prior_overfits():
    generator = torch.Generator().manual_seed(1)
    mix = torch.randn(64, 64, generator=generator)
    rows, fresh = torch.randn(320, 64, generator=generator) @ mix, torch.randn(4096, 64, generator=generator) @ mix
    weight = torch.randn(8, 64, generator=generator).numpy()  # 16 codebooks x 16 codes = 256 features, 320 rows
    tables, errors = {}, {}
    for ridge in (None, 1.0):
        centroids, tables[ridge], errors[ridge] = fit_layer(rows, weight, K=16, V=4,
                                                            settings=FitSettings(refine_steps=0, ridge=ridge))
    assert errors[None]["ridge"] > 1.0 and 0 < errors[None]["held_out"] < 1, errors[None]
    assert "held_out" not in errors[1.0]
    target = fresh.numpy() @ weight.T
    fresh_error = {ridge: ((_pq_output(fresh.numpy(), centroids, table) - target) ** 2).sum() / (target ** 2).sum()
                   for ridge, table in tables.items()}
    assert fresh_error[None] < 0.9 * fresh_error[1.0], fresh_error
    with pytest.raises(ValueError, match="holdout must be in"):
        FitSettings(holdout=1.0)


def _compiled_matches_reference(model, bundle, x, mod, unserved=()):
    """Every entry but `unserved` replaces its layer, and the library equals the PyTorch PQ reference."""
    executable = tvm_lut.compile(mod, bundle)
    (dense,) = [p for p in executable.lut_report.passes if p["pass"] == "LUTDense"]
    assert {entry["entry"] for entry in dense["replaced"]} == set(bundle) - set(unserved)
    assert {entry["entry"] for entry in dense["unused"]} == set(unserved)
    for name, entry in bundle.items():
        if name in unserved:
            continue  # the PyTorch PQ model: each layer by the reference of its table
        model.get_submodule(name).forward = lambda inputs, entry=entry: pq_forward(inputs, entry)
    with torch.no_grad():
        want = [w.numpy() for w in model(x)]
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-4)


def test_onnx_model_with_no_training_code_compiles_with_every_table(small):
    model, folder, batches = small
    bundle, report = learn_from_onnx(folder / "small.onnx", batches, PQConfig(V=4), FitSettings(refine_steps=10),
                                     progress=False)
    assert set(bundle) == {"conv.Conv", "point.Conv", "fc.Gemm", "tokens.MatMul"}, str(report)
    assert all(e["fitted"] <= e["kmeans"] for e in report.errors.values()), report.errors
    x = torch.from_numpy(batches[0]["x"])
    renamed = tvm_lut.Bundle({name.split(".")[0]: entry for name, entry in bundle.items()})
    fresh = Small().eval()
    fresh.load_state_dict(model.state_dict())
    _compiled_matches_reference(fresh, renamed, x, from_onnx(folder / "small.onnx"))


def test_pt2_program_with_no_training_code(small):
    model, folder, batches = small
    bundle, report = learn_from_pt2(folder / "small.pt2", batches, PQConfig(V=4),
                                    FitSettings(refine_steps=0), progress=False)
    assert set(bundle) == {"conv", "point", "fc", "tokens"}, str(report)
    from tvm_lut.model_spec import import_pt2

    fresh = Small().eval()
    fresh.load_state_dict(model.state_dict())
    # Known gap (patterns/dense.py): the torch.export form of a linear over a transposed 3-D input is not matched,
    # so `tokens` stays exact there and is reported unused (its ONNX form is served, above).
    _compiled_matches_reference(fresh, bundle, torch.from_numpy(batches[0]["x"]), import_pt2(folder / "small.pt2"),
                                unserved=("tokens",))


def _run_onnx(model, batch):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, batch)


def test_tables_spliced_into_onnx_run_as_the_pq_reference(small):
    import onnx

    from tvm_lut.pq.onnx_splice import splice_bundle

    model, folder, batches = small
    bundle, _ = learn_from_onnx(folder / "small.onnx", batches, PQConfig(V=4), FitSettings(refine_steps=0),
                                progress=False)
    got = _run_onnx(splice_bundle(onnx.load(str(folder / "small.onnx")), bundle), batches[1])
    fresh = Small().eval()
    fresh.load_state_dict(model.state_dict())
    for name in ("fc.Gemm", "tokens.MatMul"):  # the convs are not spliced: they stay exact in the ONNX model
        fresh.get_submodule(name.split(".")[0]).forward = lambda x, entry=bundle[name]: pq_forward(x, entry)
    with torch.no_grad():
        want = fresh(torch.from_numpy(batches[1]["x"]))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)


class Chain(nn.Module):
    """Four dense layers in a row: each one's PQ error reaches the next one's input."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(4))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.parametrize("form", ["onnx", "pt2"])
def test_the_sequential_fit_reduces_the_propagated_output_error(tmp_path, form):
    """Fitted on what the fitted upstream layers feed it (sequential), the PQ model's output is closer to the exact
    model's on held-out inputs than when every layer is fitted on exact activations (measured: 0.58 -> 0.45 of the
    output's energy; the same on three seeds and on both paths)."""
    import onnx

    from tvm_lut.pq.onnx_splice import splice_bundle

    torch.manual_seed(0)
    model = Chain().eval()
    x = torch.randn(64, 32)
    torch.onnx.export(model, (x,), str(tmp_path / "chain.onnx"), input_names=["x"], opset_version=17, dynamo=False)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "chain.pt2")
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((64, 32)).astype(np.float32)} for _ in range(33)]
    held_out = batches.pop()
    with torch.no_grad():
        exact = model(torch.from_numpy(held_out["x"])).numpy()
    errors = {}
    for sequential in (False, True):
        settings = FitSettings(refine_steps=0, sequential=sequential)
        if form == "onnx":
            bundle, report = learn_from_onnx(tmp_path / "chain.onnx", batches, PQConfig(V=8), settings, progress=False)
            (got,) = _run_onnx(splice_bundle(onnx.load(str(tmp_path / "chain.onnx")), bundle), held_out)
        else:
            bundle, report = learn_from_pt2(tmp_path / "chain.pt2", batches, PQConfig(V=8), settings, progress=False)
            for index, layer in enumerate(model.layers):
                layer.forward = lambda inputs, entry=bundle[f"layers.{index}"]: pq_forward(inputs, entry)
            with torch.no_grad():
                got = model(torch.from_numpy(held_out["x"])).numpy()
            for layer in model.layers:
                del layer.forward
        assert len(bundle) == 4, str(report)
        errors[sequential] = float(np.sum((got - exact) ** 2) / np.sum(exact ** 2))
    assert errors[True] < 0.85 * errors[False], errors


def test_the_token_mask_leaves_padding_rows_out(small):
    """With a token mask, a linear layer's rows are those of the tokens it marks; other inputs keep every row."""
    layer = DenseLayer("dense", "x", np.zeros((3, 4), np.float32), None)
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(layer.rows(x, mask).numpy(), x[mask != 0])
    assert layer.rows(x, mask[:, :2]).shape == (6, 4)  # not one row per token: all of them
    _, folder, batches = small
    with pytest.raises(ValueError, match="the token mask 'attention_mask' is not an input of the calibration"):
        learn_from_onnx(folder / "small.onnx", batches, PQConfig(V=4), FitSettings(token_mask="attention_mask"),
                        progress=False)
