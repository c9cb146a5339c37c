"""The learned artifact: one directory that holds everything a compile needs (`tvm-lut learn -o OUT_DIR`).

    OUT_DIR/manifest.json        format, version, the model's inputs, provenance, a sha256 of every file
    OUT_DIR/model.onnx | .pt2    the model the tables belong to (its weights carry the bundle's fingerprints)
    OUT_DIR/bundle.safetensors   the tables (`tvm_lut.Bundle`: PQ and/or NN-LUT entries)
    OUT_DIR/<name>.json          extra documents, e.g. autotune's plan.json

A torch module is stored as ONNX (opset `tvm_lut.frontend.DEFAULT_ONNX_OPSET`, the TorchScript exporter): a
protobuf, loaded without pickle, which both TVM and ONNX Runtime read. A model given as a file (.onnx, .pt2) is
copied as it is. `tvm-lut compile OUT_DIR` builds it with no other flag; `load_artifact` checks the format, the
version and every file's hash, and names what is wrong. Saving never overwrites a directory of another format
or version, or a non-empty directory that is not an artifact.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tvm_lut.bundle import Bundle, BundleError
from tvm_lut.model_spec import InputSpec

FORMAT = "tvm-lut-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUNDLE = "bundle.safetensors"
_MODEL_FILES = {"onnx": "model.onnx", "torch.export": "model.pt2"}

__all__ = ["FORMAT", "FORMAT_VERSION", "Artifact", "ArtifactError", "InputSpec", "load_artifact", "save_artifact"]


class ArtifactError(ValueError):
    """A directory that is not a readable artifact of this format, or one that may not be overwritten."""


@dataclass
class Artifact:
    """A loaded artifact: `manifest` as read, the validated `bundle`, the model's `inputs`."""

    path: Path
    manifest: dict
    bundle: Bundle
    inputs: list[InputSpec]

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model"]["file"]

    @property
    def model_format(self) -> str:
        return self.manifest["model"]["format"]

    def import_module(self):
        """The Relax module of the stored model at the stored input shapes, weights as constants."""
        if self.model_format == "onnx":
            from tvm_lut.frontend import from_onnx

            return from_onnx(self.model_path, {spec.name: spec.shape for spec in self.inputs})
        from tvm_lut.model_spec import import_pt2

        return import_pt2(self.model_path)

    def read_json(self, name: str) -> dict | None:
        """The extra document `name` (e.g. "plan.json"), or None if the artifact has none."""
        if name not in self.manifest.get("documents", []):
            return None
        return json.loads((self.path / name).read_text())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_writable(out_dir: Path) -> None:
    """Refuse (before writing anything) a file, a non-empty non-artifact directory, or another format/version."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"{os.fspath(out_dir)!r} exists and is not a directory; nothing was overwritten")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(f"{os.fspath(out_dir)!r} is not empty and is not a tvm-lut artifact (no {MANIFEST}); "
                            "choose another directory or empty it; nothing was overwritten")
    found = _read_manifest(out_dir, check_version=False)
    if found.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{os.fspath(out_dir)!r} holds a {FORMAT} of format version "
                            f"{found.get('format_version')!r}, this tvm-lut writes version {FORMAT_VERSION}; "
                            "choose another directory or delete it; nothing was overwritten")


def _read_manifest(path: Path, check_version: bool = True) -> dict:
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{os.fspath(manifest_path)!r} is not readable JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ArtifactError(f"{os.fspath(path)!r} is not a {FORMAT} directory ({MANIFEST} says format {found!r})")
    if check_version and manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{os.fspath(path)!r} has {FORMAT} format version {manifest.get('format_version')!r}; "
                            f"this tvm-lut reads version {FORMAT_VERSION} (learn it again with this version)")
    return manifest


def _write_model(model, inputs: list[InputSpec], staging: Path) -> tuple[str, str]:
    """Write `model` into `staging`; returns (file name, format)."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        formats = {".onnx": "onnx", ".pt2": "torch.export"}
        if path.suffix not in formats or not path.is_file():
            raise ArtifactError(f"model {os.fspath(path)!r}: expected an existing .onnx or .pt2 file")
        name = _MODEL_FILES[formats[path.suffix]]
        shutil.copyfile(path, staging / name)
        return name, formats[path.suffix]
    import onnx

    if isinstance(model, onnx.ModelProto):
        onnx.save(model, os.fspath(staging / _MODEL_FILES["onnx"]))
        return _MODEL_FILES["onnx"], "onnx"
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"save_artifact: model must be a torch.nn.Module, an onnx.ModelProto or a path to an .onnx "
                        f"/ .pt2 file, got {type(model).__name__}")
    from tvm_lut.frontend import DEFAULT_ONNX_OPSET
    from tvm_lut.model_spec import example_inputs

    with torch.no_grad():
        torch.onnx.export(model.eval(), example_inputs(inputs), os.fspath(staging / _MODEL_FILES["onnx"]),
                          input_names=[spec.name for spec in inputs], opset_version=DEFAULT_ONNX_OPSET,
                          dynamo=False)
    return _MODEL_FILES["onnx"], "onnx"


def save_artifact(out_dir, model, inputs: list[InputSpec], bundle: Bundle, *, source: str,
                  provenance: dict | None = None, extra_json: dict[str, dict] | None = None) -> Path:
    """Write the artifact (module docstring) to `out_dir` and return its path.

    model: a `torch.nn.Module` (exported to ONNX at `inputs`), an `onnx.ModelProto`, or a path to an .onnx / .pt2.
    source: what the model was made from (a built-in name or a file), recorded in the manifest.
    extra_json: documents to store beside the model, e.g. `{"plan.json": {...}}` (names end in .json).
    """
    import tvm_lut

    out_dir = Path(out_dir)
    inputs = [spec if isinstance(spec, InputSpec) else InputSpec.parse(spec) for spec in inputs]
    if not inputs:
        raise ValueError("save_artifact needs the model's inputs (their shapes fix what compile builds)")
    if not isinstance(bundle, Bundle):
        raise TypeError(f"save_artifact: bundle must be a tvm_lut.Bundle, got {type(bundle).__name__}")
    extra_json = dict(extra_json or {})
    for name in extra_json:
        if not name.endswith(".json") or Path(name).name != name or name == MANIFEST:
            raise ValueError(f"extra_json names are plain file names ending in .json (not {MANIFEST}), got {name!r}")
    _check_writable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        model_file, model_format = _write_model(model, inputs, staging)
        bundle.save(staging / BUNDLE)
        for name, document in extra_json.items():
            (staging / name).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        kinds: dict[str, list[str]] = {}
        for name, entry in bundle.items():
            kinds.setdefault(entry.kind, []).append(name)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tvm_lut_version": tvm_lut.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": source,
            "model": {"file": model_file, "format": model_format, "sha256": _sha256(staging / model_file)},
            "bundle": {"file": BUNDLE, "sha256": _sha256(staging / BUNDLE), "entries": kinds},
            "inputs": [spec.to_dict() for spec in inputs],
            "documents": sorted(extra_json),
            "provenance": provenance or {},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)  # checked above: empty, or an artifact of this format and version
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def load_artifact(path) -> Artifact:
    """Read and check an artifact directory; `ArtifactError` names what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"no artifact at {os.fspath(path)!r}")
    if not path.is_dir():
        kind = "a bundle file" if path.suffix == ".safetensors" else "a file"
        raise ArtifactError(f"{os.fspath(path)!r} is {kind}, not an artifact directory (tvm-lut learn -o OUT_DIR)")
    if not (path / MANIFEST).is_file():
        raise ArtifactError(f"{os.fspath(path)!r} is not a tvm-lut artifact: it has no {MANIFEST}")
    manifest = _read_manifest(path)
    try:
        files = {"model": manifest["model"], "bundle": manifest["bundle"]}
        inputs = [InputSpec.from_dict(spec) for spec in manifest["inputs"]]
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{os.fspath(path / MANIFEST)!r} is incomplete ({err!r})") from None
    for role, record in files.items():
        file = path / record["file"]
        if not file.is_file():
            raise ArtifactError(f"{os.fspath(path)!r}: the {role} file {record['file']!r} is missing")
        if _sha256(file) != record.get("sha256"):
            raise ArtifactError(f"{os.fspath(path)!r}: the {role} file {record['file']!r} was changed after it was "
                                "written (its sha256 differs from the manifest's)")
    if files["model"].get("format") not in _MODEL_FILES:
        raise ArtifactError(f"{os.fspath(path)!r}: unknown model format {files['model'].get('format')!r}")
    for name in manifest.get("documents", []):
        if not (path / name).is_file():
            raise ArtifactError(f"{os.fspath(path)!r}: the document {name!r} listed in the manifest is missing")
    try:
        bundle = Bundle.load(path / files["bundle"]["file"])
    except BundleError as err:
        raise ArtifactError(f"{os.fspath(path)!r}: {err}") from None
    return Artifact(path, manifest, bundle, inputs)
