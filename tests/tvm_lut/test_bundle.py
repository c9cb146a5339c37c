"""Bundle: round trip, fingerprint lookup in every importer layout, and loud failures on corrupt files."""

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tvm_lut.bundle import Bundle, BundleError, PQMatch, fingerprint, register_kind
from tvm_lut.pwl import PWLTable

RNG = np.random.default_rng(0)


@register_kind
@dataclass(frozen=True, eq=False)
class FakePQ:
    """A stand-in `pq`-like kind (kind "fake_pq"): the real PQTable belongs to tvm_lut.pq.table."""

    kind: ClassVar[str] = "fake_pq"
    codes: np.ndarray
    weight_fingerprint: dict

    def to_record(self):
        return {"weight_fingerprint": self.weight_fingerprint}, {"codes": self.codes}

    @classmethod
    def from_record(cls, name, meta, tensors):
        return cls(tensors["codes"], meta["weight_fingerprint"])


def _table():
    return PWLTable("gelu", [-3.0, 0.0, 3.0], [0.0, -0.1, 1.1, 1.0], [0.0, -0.3, -0.3, 0.0])


def _saved(tmp_path, bundle=None):
    path = tmp_path / "model.safetensors"
    (Bundle({"gelu": _table()}) if bundle is None else bundle).save(path)
    return path


def _rewrite(path, tensors=None, metadata=None, manifest=None):
    """Re-save a bundle file with edited tensors / metadata / manifest (the ways a file goes wrong)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        old_meta = handle.metadata()
    new_tensors = load_file(str(path)) if tensors is None else tensors(load_file(str(path)))
    meta = dict(old_meta, **(metadata or {}))
    if manifest is not None:
        meta["manifest"] = json.dumps(manifest(json.loads(old_meta["manifest"])))
    save_file(new_tensors, str(path), metadata=meta)


def test_round_trip_keeps_every_table_bit_for_bit(tmp_path):
    weight = RNG.normal(size=(8, 4)).astype(np.float32)
    bundle = Bundle({"gelu": _table(), "layer0": FakePQ(np.arange(6, dtype=np.int8), fingerprint(weight))})
    loaded = Bundle.load(_saved(tmp_path, bundle))
    assert list(loaded) == ["gelu", "layer0"] and len(loaded) == 2
    assert loaded.pwl("gelu") == _table() and loaded.pwl("exp") is None
    np.testing.assert_array_equal(loaded["layer0"].codes, np.arange(6))
    assert "gelu: pwl" in repr(loaded)


def test_provenance_round_trips_and_merges(tmp_path):
    bundle = Bundle({"gelu": _table()}, provenance={"torch": "2.13.0", "config": {"entries": 16}})
    assert Bundle.load(_saved(tmp_path, bundle)).provenance == {"torch": "2.13.0", "config": {"entries": 16}}
    merged = bundle.merged(Bundle(provenance={"pq": "v1"}))
    assert merged.provenance == {"torch": "2.13.0", "config": {"entries": 16}, "pq": "v1"}


def test_empty_bundle_round_trips(tmp_path):
    assert len(Bundle.load(_saved(tmp_path, Bundle()))) == 0


def test_fingerprint_is_layout_and_value_sensitive():
    weight = RNG.normal(size=(6, 4)).astype(np.float32)
    fp = fingerprint(weight)
    assert fp["shape"] == [6, 4] and len(fp["sha256"]) == 64
    assert fingerprint(weight.astype(np.float64)) == fp
    assert fingerprint(np.asfortranarray(weight)) == fp
    assert fingerprint(weight.T)["sha256"] != fp["sha256"]
    nudged = weight.copy()
    nudged[3, 2] = np.nextafter(nudged[3, 2], np.inf)
    assert fingerprint(nudged) != fp


def test_fingerprint_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    weight = torch.randn(3, 5, requires_grad=True)
    assert fingerprint(weight) == fingerprint(weight.detach().numpy())


def _pq_bundle(weight):
    return Bundle({"fc": FakePQ(np.zeros(1, np.int8), fingerprint(weight)),
                   "other": FakePQ(np.zeros(1, np.int8), fingerprint(weight + 1))})


@pytest.mark.parametrize("shape, as_seen, layout", [
    ((8, 3, 3, 3), lambda w: w, "torch"),
    ((8, 3, 3, 3), lambda w: w.reshape(8, -1), "reshaped"),
    ((5, 7), lambda w: w.T, "transposed"),
    ((5, 7), lambda w: np.asfortranarray(w), "torch"),
])
def test_find_pq_matches_importer_layouts(shape, as_seen, layout):
    weight = RNG.normal(size=shape).astype(np.float32)
    match = _pq_bundle(weight).find_pq(as_seen(weight))
    assert isinstance(match, PQMatch) and match.layout == layout
    name, entry = match
    assert name == "fc" and entry.weight_fingerprint == fingerprint(weight)


def test_find_pq_returns_none_for_unknown_weights():
    weight = RNG.normal(size=(4, 4)).astype(np.float32)
    assert _pq_bundle(weight).find_pq(weight + 2) is None
    assert _pq_bundle(weight).find_pq(weight.reshape(2, 8).T) is None  # same bytes transposed: other values order
    assert Bundle({"gelu": _table()}).find_pq(weight) is None


def test_merged_bundles_refuse_duplicate_names():
    merged = Bundle({"gelu": _table()}).merged(Bundle({"gelu2": _table()}))
    assert list(merged) == ["gelu", "gelu2"]
    with pytest.raises(BundleError, match="entry 'gelu': already in the bundle"):
        merged.merged(Bundle({"gelu": _table()}))


def test_add_rejects_unregistered_entries():
    with pytest.raises(BundleError, match="not a registered entry kind"):
        Bundle({"x": object()})
    with pytest.raises(TypeError, match="needs a non-empty string class attribute `kind`"):
        register_kind(type("NoKind", (), {}))


def test_not_a_file_and_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no bundle file"):
        Bundle.load(tmp_path / "missing.safetensors")
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, not a tensor file")
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        Bundle.load(text)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    with pytest.raises(BundleError, match="is not a tvm-lut bundle"):
        Bundle.load(foreign)


def test_truncated_file(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        Bundle.load(path)


def test_wrong_version(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, metadata={"format_version": "99"})
    with pytest.raises(BundleError, match="format version '99'"):
        Bundle.load(path)


def test_unreadable_manifest(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, metadata={"manifest": "{not json"})
    with pytest.raises(BundleError, match="no readable manifest"):
        Bundle.load(path)


def test_wrong_shape_names_entry_and_field(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, tensors=lambda t: dict(t, **{"gelu/slopes": np.zeros(7, np.float32)}))
    with pytest.raises(BundleError, match=r"entry 'gelu', field 'slopes': tensor is float32\[7\]"):
        Bundle.load(path)


def test_wrong_dtype_names_entry_and_field(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, tensors=lambda t: dict(t, **{"gelu/intercepts": t["gelu/intercepts"].astype(np.float64)}))
    with pytest.raises(BundleError, match=r"entry 'gelu', field 'intercepts': tensor is float64"):
        Bundle.load(path)


def test_consistent_but_invalid_table_names_entry_and_field(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, tensors=lambda t: dict(t, **{"gelu/breakpoints": t["gelu/breakpoints"][::-1].copy()}))
    with pytest.raises(BundleError, match="entry 'gelu', field 'breakpoints': must be strictly ascending"):
        Bundle.load(path)


def test_missing_tensor(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, tensors=lambda t: {k: v for k, v in t.items() if k != "gelu/breakpoints"})
    with pytest.raises(BundleError, match="entry 'gelu', field 'breakpoints': tensor missing from the file"):
        Bundle.load(path)


def test_stray_tensor(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, tensors=lambda t: dict(t, **{"ghost/w": np.zeros(1, np.float32)}))
    with pytest.raises(BundleError, match="tensors no manifest entry claims"):
        Bundle.load(path)


def test_unknown_kind(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, manifest=lambda m: {"entries": {"gelu": dict(m["entries"]["gelu"], kind="spline")}})
    with pytest.raises(BundleError, match="entry 'gelu', field 'kind': unknown entry kind 'spline'"):
        Bundle.load(path)


def test_manifest_range_disagreeing_with_breakpoints(tmp_path):
    path = _saved(tmp_path)
    _rewrite(path, manifest=lambda m: {"entries": {"gelu": dict(m["entries"]["gelu"], input_range=[-4, 4])}})
    with pytest.raises(BundleError, match="entry 'gelu', field 'input_range'"):
        Bundle.load(path)
