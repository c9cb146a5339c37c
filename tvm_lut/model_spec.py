"""The vocabulary every `tvm-lut` command shares: which model, its input shapes, its calibration data, and the
common options (`-o`, `--db`, `--threads`, `--no-progress`).

A MODEL is one of the built-in names (`BUILTIN_MODELS`), an ONNX file (`.onnx`), a torch.export program (`.pt2`),
or a learned-artifact directory (`tvm-lut learn -o OUT_DIR`, see `tvm_lut.artifact`). Input shapes are given as
`--input NAME:SHAPE[:DTYPE]` (`input_ids:8x64:int64`; the dtype defaults to float32); a built-in model also takes
the shorthands `--batch` / `--length`. Calibration data (`--calib FILE`) is an `.npz` or `.safetensors` file with
one array per model input, samples along the first axis.

Everything here raises `UsageError` with a message naming what is wrong; the CLI prints it and exits 2. Options
that do not apply to the model given are errors too, never silently ignored. Commands add their arguments with the
helpers below, so that a new common option (e.g. `--target`) is added in one place.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

# name -> (what it is, its inputs as (name, shape with "B" for the batch and "L" for the length, dtype))
BUILTIN_MODELS = {
    "fashion-cnn": ("the Fashion-MNIST CNN (tvm_lut.models.cnn)", (("x", ("B", 1, 28, 28), "float32"),)),
    "minilm-l6": ("MiniLM-L6 sentence encoder (tvm_lut.models.minilm)",
                  (("input_ids", ("B", "L"), "int64"), ("attention_mask", ("B", "L"), "int64"))),
}
DEFAULT_BATCH = 8
DEFAULT_LENGTH = 64
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
MODEL_FILE_SUFFIXES = (".onnx", ".pt2")
CALIB_SUFFIXES = (".npz", ".safetensors")


class UsageError(ValueError):
    """Bad command-line input (a model, a shape, a file, an option that does not apply); the message says which."""


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, static shape and dtype. `InputSpec.parse("input_ids:8x64:int64")`."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if not self.name:
            raise UsageError("an input needs a name")
        if any(d < 1 for d in self.shape):
            raise UsageError(f"input {self.name!r}: every dimension must be >= 1, got {self.shape}")
        if self.dtype not in DTYPES:
            raise UsageError(f"input {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")

    @classmethod
    def parse(cls, text: str) -> "InputSpec":
        """`NAME:SHAPE[:DTYPE]` with SHAPE like `8x64` (a scalar input is not supported)."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise UsageError(f"--input {text!r}: expected NAME:SHAPE[:DTYPE], e.g. input_ids:8x64:int64")
        try:
            shape = tuple(int(d) for d in parts[1].lower().split("x"))
        except ValueError:
            raise UsageError(f"--input {text!r}: SHAPE must be integers joined by 'x', e.g. 8x64") from None
        return cls(parts[0], shape, parts[2] if len(parts) == 3 else "float32")

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        return cls(data["name"], tuple(data["shape"]), data.get("dtype", "float32"))

    def __str__(self) -> str:
        return f"{self.name}:{'x'.join(map(str, self.shape))}:{self.dtype}"


def builtin_inputs(name: str, batch: int | None = None, length: int | None = None) -> list[InputSpec]:
    """The inputs of built-in model `name` at `batch` x `length` (defaults 8 x 64)."""
    sizes = {"B": batch or DEFAULT_BATCH, "L": length or DEFAULT_LENGTH}
    return [InputSpec(input_name, tuple(sizes.get(d, d) for d in shape), dtype)
            for input_name, shape, dtype in BUILTIN_MODELS[name][1]]


@dataclass
class ModelSource:
    """A resolved MODEL argument: `kind` is "builtin", "onnx", "pt2" or "artifact"; `inputs` fixes the shapes."""

    spec: str
    kind: str
    inputs: list[InputSpec]
    path: Path | None = None
    artifact: object | None = None  # the loaded `tvm_lut.artifact.Artifact` when kind == "artifact"

    def import_module(self):
        """The Relax module (weights as constants). A built-in CNN has fresh random weights: its functions, not its
        values, are what tuning and shape-only compiles need."""
        if self.kind == "artifact":
            return self.artifact.import_module()
        if self.kind == "onnx":
            from tvm_lut.frontend import from_onnx

            return from_onnx(self.path, {spec.name: spec.shape for spec in self.inputs})
        if self.kind == "pt2":
            return import_pt2(self.path)
        from tvm_lut.frontend import from_torch

        return from_torch(builtin_model(self.spec), example_inputs(self.inputs))


def builtin_model(name: str):
    """A fresh torch module of a built-in model (MiniLM with its shipped weights, the CNN untrained)."""
    if name == "fashion-cnn":
        from tvm_lut.models.cnn import FashionCNN

        return FashionCNN().eval()
    from tvm_lut.models.minilm import load_minilm

    return load_minilm()


def example_inputs(inputs: list[InputSpec]) -> tuple:
    """Torch tensors of the given specs (zeros; ones for an attention mask), for tracing and export."""
    import numpy as np
    import torch

    return tuple(torch.from_numpy((np.ones if "mask" in spec.name else np.zeros)(spec.shape, dtype=spec.dtype))
                 for spec in inputs)


def resolve_model(spec: str, inputs: list[InputSpec] | None = None, batch: int | None = None,
                  length: int | None = None) -> ModelSource:
    """Check a MODEL argument and its input options together; `UsageError` names what is wrong."""
    inputs = list(inputs or [])
    if spec in BUILTIN_MODELS:
        return ModelSource(spec, "builtin", _builtin_with_inputs(spec, inputs, batch, length))
    path = Path(spec)
    looks_like_file = path.suffix in MODEL_FILE_SUFFIXES or os.sep in spec or path.exists()
    if not looks_like_file:
        raise UsageError(f"unknown model {spec!r}: give a built-in model ({', '.join(BUILTIN_MODELS)}), an .onnx or "
                         ".pt2 file, or a directory written by `tvm-lut learn`")
    if not path.exists():
        raise UsageError(f"model file {spec!r} does not exist")
    for option, value in (("--batch", batch), ("--length", length)):
        if value is not None:
            raise UsageError(f"{option} applies to the built-in models; give the shapes of {spec!r} with "
                             "--input NAME:SHAPE[:DTYPE]")
    if path.is_dir():
        from tvm_lut.artifact import ArtifactError, load_artifact

        if inputs:
            raise UsageError(f"{spec!r} is a learned artifact, which fixes its input shapes; --input does not apply")
        try:
            artifact = load_artifact(path)
        except ArtifactError as err:
            raise UsageError(str(err)) from None
        return ModelSource(spec, "artifact", artifact.inputs, path, artifact)
    if path.suffix == ".onnx":
        return ModelSource(spec, "onnx", _onnx_inputs(path, inputs), path)
    if path.suffix == ".pt2":
        return ModelSource(spec, "pt2", _pt2_inputs(path, inputs), path)
    raise UsageError(f"model file {spec!r}: expected a {' or '.join(MODEL_FILE_SUFFIXES)} file or an artifact "
                     "directory")


def _builtin_with_inputs(name, inputs, batch, length) -> list[InputSpec]:
    if not inputs:
        return builtin_inputs(name, batch, length)
    if batch is not None or length is not None:
        raise UsageError("give the shapes either with --input or with --batch/--length, not both")
    return _checked_against(name, builtin_inputs(name), inputs, rank_only=True)


def _checked_against(model: str, declared: list[InputSpec], given: list[InputSpec], rank_only: bool,
                     dynamic: set[str] = frozenset()) -> list[InputSpec]:
    """`given` checked against the model's `declared` inputs: same names, ranks, dtypes; static dims equal unless
    `rank_only`. Inputs not given keep their declared spec, which must then be static (no name in `dynamic`)."""
    by_name = {spec.name: spec for spec in given}
    if len(by_name) != len(given):
        raise UsageError("an input is given twice with --input")
    names = [spec.name for spec in declared]
    unknown = sorted(set(by_name) - set(names))
    if unknown:
        raise UsageError(f"{model} has no input {unknown[0]!r}; its inputs are {', '.join(names)}")
    out = []
    for want in declared:
        got = by_name.get(want.name)
        if got is None:
            if want.name in dynamic:
                raise UsageError(f"{model}: input {want.name!r} has dynamic dimensions; give its shape with "
                                 f"--input {want.name}:SHAPE:{want.dtype}")
            out.append(want)
            continue
        if len(got.shape) != len(want.shape):
            raise UsageError(f"--input {got}: {model}'s input {want.name!r} has rank {len(want.shape)}, the shape "
                             f"given has rank {len(got.shape)}")
        if got.dtype != want.dtype:
            raise UsageError(f"--input {got}: {model}'s input {want.name!r} is {want.dtype}, not {got.dtype}")
        if not rank_only and want.name not in dynamic and got.shape != want.shape:
            raise UsageError(f"--input {got}: {model}'s input {want.name!r} has the fixed shape "
                             f"{'x'.join(map(str, want.shape))}")
        out.append(got)
    return out


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8",
                9: "bool"}


def _onnx_inputs(path: Path, given: list[InputSpec]) -> list[InputSpec]:
    import onnx

    try:
        graph = onnx.load(os.fspath(path), load_external_data=False).graph
    except Exception as err:  # onnx raises DecodeError and others for a foreign file
        raise UsageError(f"{os.fspath(path)!r} is not a readable ONNX model ({err})") from None
    initializers = {init.name for init in graph.initializer}
    declared, dynamic = [], set()
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 0 for d in tensor.shape.dim]
        if 0 in dims:
            dynamic.add(value.name)
        dtype = _ONNX_DTYPES.get(tensor.elem_type)
        if dtype is None:
            raise UsageError(f"{os.fspath(path)!r}: input {value.name!r} has ONNX element type {tensor.elem_type}, "
                             f"not one of {', '.join(DTYPES)}")
        declared.append(InputSpec(value.name, tuple(d or 1 for d in dims), dtype))
    return _checked_against(os.fspath(path), declared, given, rank_only=False, dynamic=dynamic)


def load_pt2(path: Path):
    """The `torch.export.ExportedProgram` stored in a `.pt2` file."""
    import torch

    try:
        return torch.export.load(os.fspath(path))
    except Exception as err:  # torch raises several types for a foreign or corrupt archive
        raise UsageError(f"{os.fspath(path)!r} is not a readable torch.export program ({err})") from None


def import_pt2(path: Path):
    from tvm.relax.frontend.torch import from_exported_program

    return from_exported_program(load_pt2(path), unwrap_unit_return_tuple=True)


def _pt2_inputs(path: Path, given: list[InputSpec]) -> list[InputSpec]:
    program = load_pt2(path)
    declared = []
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            if value is None or not all(isinstance(d, int) for d in value.shape):
                raise UsageError(f"{os.fspath(path)!r}: input {node.name!r} has dynamic dimensions; export it with "
                                 "static shapes")
            declared.append(InputSpec(node.name, tuple(value.shape), str(value.dtype).removeprefix("torch.")))
    return _checked_against(os.fspath(path), declared, given, rank_only=False)


def load_calibration(path: str | os.PathLike, inputs: list[InputSpec]) -> list[dict]:
    """Batches `{input name: array}` of `inputs`' shapes from an `.npz` / `.safetensors` file holding one array per
    input (samples along the first axis, cut into batches of the input's first dimension; a remainder smaller
    than a batch is dropped)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"calibration file {os.fspath(path)!r} does not exist")
    if path.suffix not in CALIB_SUFFIXES:
        raise UsageError(f"calibration file {os.fspath(path)!r}: expected {' or '.join(CALIB_SUFFIXES)}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        else:
            from safetensors.numpy import load_file

            arrays = load_file(os.fspath(path))
    except Exception as err:  # numpy / safetensors raise several types for a foreign file
        raise UsageError(f"calibration file {os.fspath(path)!r} is not readable ({err})") from None
    names = [spec.name for spec in inputs]
    missing, extra = sorted(set(names) - set(arrays)), sorted(set(arrays) - set(names))
    if missing or extra:
        raise UsageError(f"calibration file {os.fspath(path)!r} holds {sorted(arrays)}; the model's inputs are "
                         f"{names}" + (f" (missing {missing})" if missing else "") + (f" (not inputs: {extra})" if extra else ""))
    samples = {len(arrays[name]) for name in names}
    if len(samples) != 1:
        raise UsageError(f"calibration file {os.fspath(path)!r}: the arrays hold different sample counts {sorted(samples)}")
    count = samples.pop()
    batch = inputs[0].shape[0]
    for spec in inputs:
        array = arrays[spec.name]
        if array.shape[1:] != spec.shape[1:] or spec.shape[0] != batch:
            raise UsageError(f"calibration array {spec.name!r} is {array.shape}: samples of shape "
                             f"{spec.shape[1:]} expected for --input {spec}")
        if np.dtype(array.dtype).kind != np.dtype(spec.dtype).kind:
            raise UsageError(f"calibration array {spec.name!r} is {array.dtype}, the input is {spec.dtype}")
    if count < batch:
        raise UsageError(f"calibration file {os.fspath(path)!r} holds {count} samples, less than one batch of {batch}")
    return [{spec.name: np.ascontiguousarray(arrays[spec.name][start:start + batch], dtype=spec.dtype)
             for spec in inputs} for start in range(0, count - batch + 1, batch)]


# -- argparse helpers: every command builds its options from these -------------------------------------------------
def add_model_argument(parser: argparse.ArgumentParser, *, artifacts: bool = True) -> None:
    """MODEL, `--input`, and the built-in shorthands `--batch` / `--length`."""
    kinds = f"a built-in model ({', '.join(BUILTIN_MODELS)}), an .onnx or .pt2 file"
    parser.add_argument("model", metavar="MODEL", help=kinds + (", or a directory written by `tvm-lut learn`"
                                                                 if artifacts else ""))
    parser.add_argument("--input", dest="inputs", metavar="NAME:SHAPE[:DTYPE]", action="append", default=[],
                        type=_parse_input, help="shape of one model input, e.g. input_ids:8x64:int64 (repeat per input)")
    parser.add_argument("--batch", type=int, help=f"built-in models: batch size ({DEFAULT_BATCH})")
    parser.add_argument("--length", type=int, help=f"minilm-l6: tokens per sequence ({DEFAULT_LENGTH})")


def _parse_input(text: str) -> InputSpec:
    try:
        return InputSpec.parse(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def model_from_args(args: argparse.Namespace) -> ModelSource:
    if args.length is not None and args.model != "minilm-l6":
        raise UsageError("--length applies to minilm-l6 only")
    return resolve_model(args.model, args.inputs, args.batch, args.length)


def add_output_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="PATH", help=help_text)


def add_db_argument(parser: argparse.ArgumentParser, help_text: str, required: bool = False) -> None:
    parser.add_argument("--db", type=Path, required=required, metavar="DIR", help=help_text)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, help="threads (default: every core this process may use)")


def threads_from_args(args: argparse.Namespace) -> int:
    """`--threads`, or every core this process may use."""
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    return args.threads or len(os.sched_getaffinity(0))


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress output (default: a bar on a terminal, a line per tenth of each step in "
                        "a log)")


def progress_from_args(args: argparse.Namespace) -> bool:
    """Progress unless `--no-progress`: a bar on a terminal, a line per tenth of each step in a log
    (`tvm_lut.progress`)."""
    return args.progress is not False


def add_lut_arguments(parser: argparse.ArgumentParser) -> None:
    """The tables a build uses: `--bundle`, `--nonlinear`, `--no-winograd`."""
    parser.add_argument("--bundle", type=Path, help="a LUT bundle (.safetensors) whose tables to compile with "
                        "(an artifact directory holds its own)")
    parser.add_argument("--nonlinear", action="store_true", help="NN-LUT for GELU/Softmax/LayerNorm: the shipped "
                        "tables for every function the bundle has no table for")
    parser.add_argument("--no-winograd", dest="winograd", action="store_false",
                        help="keep 3x3 convs direct (default: Winograd F(2x2, 3x3), relay_passes.WinogradConv2d)")


def add_build_arguments(parser: argparse.ArgumentParser, db_help: str, *, db_required: bool = False,
                        rpc: bool = False) -> None:
    """What every command that builds a model takes: MODEL and its inputs, the tables, `--target` (and with `rpc`
    the tracker), `--db`, `--threads`."""
    from tvm_lut.target_args import add_target_arguments

    add_model_argument(parser)
    add_lut_arguments(parser)
    add_target_arguments(parser, rpc=rpc)
    add_db_argument(parser, db_help, required=db_required)
    add_threads_argument(parser)


def build_from_args(args: argparse.Namespace):
    """(model source, bundle or None, target) of `add_build_arguments`' options, each checked."""
    from tvm_lut.target_args import resolve_target

    source = model_from_args(args)
    bundle = bundle_from_args(args, source)
    threads_from_args(args)  # validates --threads
    return source, bundle, resolve_target(args)


def bundle_from_args(args: argparse.Namespace, source: ModelSource):
    """The bundle to build with: the artifact's, or `--bundle` (not both)."""
    from tvm_lut.bundle import Bundle, BundleError

    if source.kind == "artifact":
        if args.bundle is not None:
            raise UsageError(f"{source.spec!r} is a learned artifact and holds its own bundle; --bundle does not apply")
        return source.artifact.bundle
    if args.bundle is None:
        return None
    try:
        return Bundle.load(args.bundle)
    except BundleError as err:
        raise UsageError(str(err)) from None
