"""The bundle: every learned table of a model in one safetensors file, the hand-off from training to compiling.

Layout: tensors are named `<entry>/<field>`; the safetensors metadata holds `format`, `format_version`,
`tvm_lut_version` and `manifest`, a JSON object `{"entries": {name: {"kind", "tensors", ...fields}}}` where
`tensors` records each field's shape and dtype. No pickle anywhere.

Entry kinds are classes registered with `register_kind`; each has `kind: ClassVar[str]`,
`to_record() -> (meta, tensors)` and `from_record(name, meta, tensors)`, which validates and raises
`BundleError` naming the entry and field. Loading checks the format, the version, every kind, and every
tensor's presence, shape and dtype before any kind sees it, so a corrupt or mismatched file fails loudly.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from typing import Any, ClassVar, Iterator, Mapping, Protocol

import numpy as np

FORMAT = "tvm-lut-bundle"
FORMAT_VERSION = "1"

# Kinds shipped with tvm-lut, imported on demand so that loading a bundle works before their modules are.
_BUILTIN_KIND_MODULES = {"pwl": "tvm_lut.pwl", "pq": "tvm_lut.pq.table"}
_KINDS: dict[str, type] = {}


class BundleError(ValueError):
    """A bundle that cannot be read or used; `entry` and `field` name the culprit when there is one."""

    def __init__(self, message: str, entry: str | None = None, field: str | None = None):
        where = ""
        if entry is not None:
            where = f"entry {entry!r}" + (f", field {field!r}" if field is not None else "") + ": "
        super().__init__(where + message)
        self.entry = entry
        self.field = field


class Entry(Protocol):
    """What a registered entry kind provides."""

    kind: ClassVar[str]

    def to_record(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    @classmethod
    def from_record(cls, name: str, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> "Entry": ...


def register_kind(cls: type) -> type:
    """Class decorator: make `cls` storable in bundles under `cls.kind`."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} needs a non-empty string class attribute `kind` to be a bundle entry kind")
    for method in ("to_record", "from_record"):
        if not callable(getattr(cls, method, None)):
            raise TypeError(f"{cls.__name__} needs `{method}` to be a bundle entry kind")
    registered = _KINDS.get(kind)
    if registered is not None and registered.__qualname__ != cls.__qualname__:
        raise TypeError(f"bundle entry kind {kind!r} is already registered by {registered.__qualname__}")
    _KINDS[kind] = cls
    return cls


def entry_kind(kind: str) -> type | None:
    """The class registered for `kind`, importing tvm-lut's own kinds on first use."""
    if kind not in _KINDS and kind in _BUILTIN_KIND_MODULES:
        importlib.import_module(_BUILTIN_KIND_MODULES[kind])
    return _KINDS.get(kind)


def _as_float32_array(weight) -> np.ndarray:
    if hasattr(weight, "detach"):  # a torch tensor; torch is not imported here
        weight = weight.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(weight, dtype=np.float32))


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def fingerprint(weight) -> dict[str, Any]:
    """Identity of a weight: its shape and the sha256 of its float32 C-contiguous bytes, in torch's layout.

    Pass the weight as the torch module holds it (`nn.Linear`: (out, in); `nn.Conv2d`: (O, I, kh, kw)).
    Any change to any value changes the hash; float64 inputs are rounded to float32 first.
    """
    array = _as_float32_array(weight)
    return {"shape": list(array.shape), "sha256": _sha256(array)}


class PQMatch(tuple):
    """`(name, table)` as returned by `Bundle.find_pq`, plus `layout`: how the graph's weight relates to the
    trained one: "torch" (same array), "transposed" (a 2-D weight stored (in, out), as importers emit for
    matmul), or "reshaped" (same values in another shape, e.g. a conv weight flattened to (O, I*kh*kw))."""

    def __new__(cls, name: str, table: Any, layout: str):
        match = super().__new__(cls, (name, table))
        match.layout = layout
        return match


class Bundle:
    """Named tables (PWL and PQ entries) with a lossless, validated file format.

    `provenance`: JSON-serializable facts about how the tables were made (the training config, the torch
    version and CPU they were fitted on), saved with them and never needed to use them.
    """

    def __init__(self, entries: Mapping[str, Entry] | None = None, provenance: Mapping[str, Any] | None = None):
        self._entries: dict[str, Entry] = {}
        self.provenance: dict[str, Any] = dict(provenance or {})
        for name, entry in (entries or {}).items():
            self.add(name, entry)

    def add(self, name: str, entry: Entry) -> None:
        """Add one entry; names are unique (a second table for the same thing is a bug upstream)."""
        if not isinstance(name, str) or not name:
            raise BundleError(f"entry names are non-empty strings, got {name!r}")
        if name in self._entries:
            raise BundleError("already in the bundle", entry=name)
        kind = getattr(entry, "kind", None)
        if entry_kind(kind) is None:
            raise BundleError(f"{type(entry).__name__} is not a registered entry kind (kind={kind!r})", entry=name)
        self._entries[name] = entry

    def merged(self, *others: "Bundle") -> "Bundle":
        """A new bundle with the entries (and provenance) of `self` and `others`; a repeated entry name raises
        `BundleError`."""
        merged = Bundle(self._entries, self.provenance)
        for other in others:
            merged.provenance.update(other.provenance)
            for name, entry in other.items():
                merged.add(name, entry)
        return merged

    def __getitem__(self, name: str) -> Entry:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def __repr__(self) -> str:
        kinds = ", ".join(f"{name}: {entry.kind}" for name, entry in self._entries.items())
        return f"Bundle({{{kinds}}})"

    def pwl(self, fn_name: str):
        """The piecewise-linear table for function `fn_name` (e.g. "gelu"), or None."""
        for entry in self._entries.values():
            if entry.kind == "pwl" and entry.name == fn_name:
                return entry
        return None

    def find_pq(self, weight) -> PQMatch | None:
        """The PQ entry trained for `weight` (a constant found in a graph), matched by fingerprint in torch's
        layout, transposed (2-D), or reshaped (same values, same order, e.g. (O, I*kh*kw)); None if absent."""
        array = _as_float32_array(weight)
        direct = _sha256(array)
        transposed = _sha256(array.T) if array.ndim == 2 else None
        for name, entry in self._entries.items():
            trained = getattr(entry, "weight_fingerprint", None)  # entries that replace a weight (kind "pq")
            if trained is None:
                continue
            shape = tuple(trained["shape"])
            if trained["sha256"] == direct and int(np.prod(shape)) == array.size:
                return PQMatch(name, entry, "torch" if shape == array.shape else "reshaped")
            if trained["sha256"] == transposed and shape == array.T.shape:
                return PQMatch(name, entry, "transposed")
        return None

    def save(self, path: str | os.PathLike) -> None:
        """Write the bundle to one `.safetensors` file."""
        from safetensors.numpy import save_file

        import tvm_lut

        manifest, tensors = {}, {}
        for name, entry in self._entries.items():
            meta, fields = entry.to_record()
            reserved = {"kind", "tensors"} & set(meta)
            if reserved:
                raise BundleError(f"to_record() may not use the reserved keys {sorted(reserved)}", entry=name)
            specs = {}
            for field, array in fields.items():
                array = np.ascontiguousarray(array)
                tensors[f"{name}/{field}"] = array
                specs[field] = {"shape": list(array.shape), "dtype": array.dtype.name}
            manifest[name] = {"kind": entry.kind, "tensors": specs, **meta}
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tvm_lut_version": tvm_lut.__version__,
            "manifest": json.dumps({"entries": manifest}, sort_keys=True),
            "provenance": json.dumps(self.provenance, sort_keys=True),
        }
        save_file(tensors, os.fspath(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Bundle":
        """Read and validate a bundle file; any defect raises `BundleError` naming the entry and field."""
        metadata, tensors = _read_safetensors(path)
        if metadata.get("format") != FORMAT:
            raise BundleError(f"{os.fspath(path)!r} is not a tvm-lut bundle (metadata format={metadata.get('format')!r})")
        version = metadata.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{os.fspath(path)!r} has bundle format version {version!r}; this tvm-lut reads "
                              f"version {FORMAT_VERSION!r} (regenerate the bundle with this version)")
        try:
            manifest = json.loads(metadata["manifest"])["entries"]
            provenance = json.loads(metadata.get("provenance", "{}"))
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise BundleError(f"{os.fspath(path)!r} has no readable manifest ({err})") from None
        if not isinstance(manifest, dict) or not isinstance(provenance, dict):
            raise BundleError(f"{os.fspath(path)!r}: manifest entries and provenance must be JSON objects")

        bundle, claimed = cls(provenance=provenance), set()
        for name, record in manifest.items():
            meta = dict(record) if isinstance(record, dict) else {}
            kind = meta.pop("kind", None)
            specs = meta.pop("tensors", None)
            kind_cls = entry_kind(kind) if isinstance(kind, str) else None
            if kind_cls is None:
                raise BundleError(f"unknown entry kind {kind!r} (known: {sorted(set(_KINDS) | set(_BUILTIN_KIND_MODULES))})",
                                  entry=name, field="kind")
            if not isinstance(specs, dict):
                raise BundleError("manifest lists no tensors", entry=name, field="tensors")
            fields = {}
            for field, spec in specs.items():
                key = f"{name}/{field}"
                if key not in tensors:
                    raise BundleError("tensor missing from the file", entry=name, field=field)
                array = tensors[key]
                if list(array.shape) != spec.get("shape") or array.dtype.name != spec.get("dtype"):
                    raise BundleError(f"tensor is {array.dtype.name}{list(array.shape)}, manifest says "
                                      f"{spec.get('dtype')}{spec.get('shape')}", entry=name, field=field)
                fields[field] = array
                claimed.add(key)
            bundle.add(name, kind_cls.from_record(name, meta, fields))
        stray = sorted(set(tensors) - claimed)
        if stray:
            raise BundleError(f"{os.fspath(path)!r} holds tensors no manifest entry claims: {stray[:5]}")
        return bundle


def _read_safetensors(path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise BundleError(f"no bundle file at {os.fspath(path)!r}")
    try:
        with safe_open(os.fspath(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise BundleError(f"{os.fspath(path)!r} is not a readable safetensors file ({err})") from None
    return metadata, tensors
