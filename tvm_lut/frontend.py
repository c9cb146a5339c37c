"""Import a model into a Relax `IRModule`, from PyTorch (torch.export) or from ONNX.

Both importers bind the weights as constants, so the LUT passes can see them (LUTDense matches a weight by its
fingerprint) and the module's only parameters are the model's inputs. A model with one output returns that
tensor (not a 1-tuple) from either importer, so both give the same `main` signature.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

# The opset used when exporting a torch module to ONNX: 17 is the first with LayerNormalization.
DEFAULT_ONNX_OPSET = 17


def from_torch(model, example_args: Sequence) -> "tvm.IRModule":
    """Export `model` with torch.export (eval mode, no grad) and import it with TVM's ExportedProgram frontend.

    `example_args` fixes the input shapes and dtypes (static shapes only). The module is put in eval mode.
    """
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(model).__name__}")
    args = _as_tuple(example_args)
    with torch.no_grad():
        exported = torch.export.export(model.eval(), args)
        return from_exported_program(exported, unwrap_unit_return_tuple=True)


def from_onnx(
    model_or_path,
    shape_dict: Mapping[str, Sequence[int]] | None = None,
    opset: int | None = None,
    *,
    example_args: Sequence | None = None,
) -> "tvm.IRModule":
    """Import an ONNX model (an `onnx.ModelProto`, or a path to a `.onnx` file) with TVM's ONNX frontend.

    A `torch.nn.Module` is first exported to ONNX in memory (`torch.onnx.export(..., dynamo=False)`, eval mode);
    it then needs `example_args`, and `opset` is the export opset (default `DEFAULT_ONNX_OPSET`). For an ONNX model,
    `opset` overrides the opset the importer detects. `shape_dict` maps input names to static shapes; it is
    needed only when the model's inputs have symbolic dimensions.
    """
    import onnx
    from tvm.relax.frontend.onnx import from_onnx as relax_from_onnx

    if isinstance(model_or_path, (str, os.PathLike)):
        model = onnx.load(os.fspath(model_or_path))
    elif isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        model = _torch_to_onnx(model_or_path, example_args, opset or DEFAULT_ONNX_OPSET)
        opset = None
    if example_args is not None and model is model_or_path:
        raise ValueError("example_args is only used when exporting a torch.nn.Module; this model is already ONNX")
    shapes = None if shape_dict is None else {name: list(shape) for name, shape in shape_dict.items()}
    return relax_from_onnx(model, shape_dict=shapes, opset=opset)


def _torch_to_onnx(model, example_args, opset: int):
    """Export a torch module to an in-memory `onnx.ModelProto` with the TorchScript exporter."""
    import onnx
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            "from_onnx expects an onnx.ModelProto, a path to a .onnx file, or a torch.nn.Module; "
            f"got {type(model).__name__}"
        )
    if example_args is None:
        raise ValueError("from_onnx needs example_args to export a torch.nn.Module to ONNX")
    args = _as_tuple(example_args)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model.eval(), args, buffer, opset_version=opset, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def _as_tuple(example_args) -> tuple:
    import torch

    if isinstance(example_args, torch.Tensor):
        return (example_args,)
    return tuple(example_args)

