"""PQTable: construction from a weight, validation, and the bundle round trip with fingerprints."""

import json

import numpy as np
import pytest

from tvm_lut.bundle import Bundle, BundleError, fingerprint
from tvm_lut.pq.table import PQTable, PQTableError

CONV = {"kernel_size": (3, 3), "stride": (1, 1), "padding": (1, 1), "dilation": (1, 1)}


def linear_entry(rng, out=5, codebooks=3, centroids=4, sub_len=2, bias=True):
    weight = rng.standard_normal((out, codebooks * sub_len)).astype(np.float32)
    cents = rng.standard_normal((codebooks, centroids, sub_len)).astype(np.float32)
    b = rng.standard_normal(out).astype(np.float32) if bias else None
    return PQTable.from_weight(cents, weight, b), weight


def conv_entry(rng):
    weight = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    cents = rng.standard_normal((2, 16, 9)).astype(np.float32)
    return PQTable.from_weight(cents, weight, None, **CONV), weight


def test_from_weight_table_is_centroids_times_weight_slices():
    rng = np.random.default_rng(0)
    entry, weight = linear_entry(rng)
    exact = np.einsum("ckv,mcv->ckm", entry.centroids, weight.reshape(5, 3, 2))
    assert np.all(np.abs(entry.dequantized() - exact) <= entry.scale / 2 + 1e-6)
    assert (entry.C, entry.K, entry.V, entry.D, entry.M) == (3, 4, 2, 6, 5)
    assert entry.weight_fingerprint == fingerprint(weight)
    assert entry.scale.shape == (5,) and entry.scale.dtype == np.float32
    assert (np.abs(entry.table).max(axis=(0, 1)) == 127).all()  # every column uses its full int8 range


@pytest.mark.parametrize("make", [linear_entry, conv_entry])
def test_bundle_round_trip_keeps_every_field_and_finds_the_weight(tmp_path, make):
    entry, weight = make(np.random.default_rng(1))
    Bundle({"layer": entry}).save(tmp_path / "b.safetensors")
    loaded = Bundle.load(tmp_path / "b.safetensors")["layer"]
    for name in ("centroids", "table", "scale"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(entry, name))
    assert loaded.table.dtype == np.int8
    if entry.bias is None:
        assert loaded.bias is None
    else:
        np.testing.assert_array_equal(loaded.bias, entry.bias)
    for name in ("K", "V", "C", "layer", "layout", "weight_fingerprint", "kernel_size", "stride",
                 "padding", "dilation", "in_channels"):
        assert getattr(loaded, name) == getattr(entry, name), name
    bundle = Bundle({"layer": loaded})
    assert bundle.find_pq(weight)[0] == "layer"
    flat = weight.reshape(weight.shape[0], -1)
    assert bundle.find_pq(flat).layout == ("torch" if weight.ndim == 2 else "reshaped")
    if weight.ndim == 2:
        assert bundle.find_pq(weight.T).layout == "transposed"
    assert bundle.find_pq(weight + 1e-3) is None


def _corrupt(tmp_path, entry, edit):
    """Save `entry`, then rewrite its manifest record with `edit(record)`."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    path = tmp_path / "b.safetensors"
    Bundle({"fc": entry}).save(path)
    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    manifest = json.loads(metadata["manifest"])
    edit(manifest["entries"]["fc"], tensors)
    metadata["manifest"] = json.dumps(manifest)
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("edit, field", [
    (lambda rec, t: rec.update(V=3), "centroids"),
    (lambda rec, t: t.update({"fc/scale": -t["fc/scale"]}), "scale"),
    (lambda rec, t: t.update({"fc/scale": t["fc/scale"][:3]}), "scale"),
    (lambda rec, t: rec.update(layout="ckm-v0"), "layout"),
    (lambda rec, t: rec.update(layer="conv3d"), "layer"),
    (lambda rec, t: rec["weight_fingerprint"].update(shape=[7, 6]), "weight_fingerprint"),
    (lambda rec, t: rec.update(in_features=99), "in_features"),
])
def test_corrupt_entry_fails_naming_entry_and_field(tmp_path, edit, field):
    entry, _ = linear_entry(np.random.default_rng(2))
    path = _corrupt(tmp_path, entry, edit)
    with pytest.raises(BundleError, match=f"entry 'fc', field '{field}'"):
        Bundle.load(path)


def test_per_tensor_file_of_an_older_tvm_lut_fails_naming_the_entry(tmp_path):
    """Before per-column scales a bundle held one scale in the manifest and no scale tensor."""
    entry, _ = linear_entry(np.random.default_rng(5))

    def per_tensor(record, tensors):
        record.update(layout="centroids:CKV,table:CKM", scale=0.01)
        del record["tensors"]["scale"], tensors["fc/scale"]

    path = _corrupt(tmp_path, entry, per_tensor)
    with pytest.raises(BundleError, match="entry 'fc', field 'layout'.*older tvm-lut with one per-tensor scale"):
        Bundle.load(path)


def test_an_outlier_column_keeps_the_others_precise():
    """One column 1000x the others: per-column scales keep every column within half its own step."""
    rng = np.random.default_rng(6)
    weight = rng.standard_normal((4, 6)).astype(np.float32)
    weight[0] *= 1000
    entry = PQTable.from_weight(rng.standard_normal((3, 16, 2)).astype(np.float32), weight)
    exact = np.einsum("ckv,mcv->ckm", entry.centroids, weight.reshape(4, 3, 2))
    error = np.abs(entry.dequantized() - exact).max(axis=(0, 1))
    assert (error <= entry.scale / 2 * (1 + 1e-6)).all()
    assert error[1:].max() < 1e-3 * np.abs(exact[..., 0]).max()


def test_scale_must_be_one_positive_value_per_output():
    entry, _ = linear_entry(np.random.default_rng(7))
    for bad, message in ((1.0, r"shape \(5,\)"), (np.ones(4), r"shape \(5,\)"),
                         (np.array([1, 1, 0, 1, 1.0]), "positive and finite"), ("x", "float32 array")):
        with pytest.raises(PQTableError, match=message):
            PQTable(entry.centroids, entry.table, bad, entry.bias, entry.weight_fingerprint)


def test_int8_minus_128_is_rejected():
    entry, _ = linear_entry(np.random.default_rng(3))
    bad = entry.table.copy()
    bad[0, 0, 0] = -128
    with pytest.raises(PQTableError, match="-128"):
        PQTable(entry.centroids, bad, entry.scale, entry.bias, entry.weight_fingerprint)


def test_misuse_is_named():
    rng = np.random.default_rng(4)
    with pytest.raises(PQTableError, match="centroids cover"):
        PQTable.from_weight(np.zeros((3, 4, 2)), np.zeros((5, 7)))
    with pytest.raises(PQTableError, match="int8"):
        PQTable(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)), np.ones(3), None, {"shape": [3, 2], "sha256": ""})
    weight = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    with pytest.raises(PQTableError, match="needs kernel_size"):
        PQTable.from_weight(np.zeros((2, 16, 9)), weight)
    with pytest.raises(ValueError, match="NaN"):
        PQTable.from_weight(np.full((3, 4, 2), np.nan), np.zeros((5, 6)))
