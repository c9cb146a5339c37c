"""The torch weights of a model exported to ONNX (the model of a `tvm-lut learn` artifact), checked against the file.

An artifact stores its model as ONNX at fixed input shapes (the TorchScript exporter bakes the batch into its
reshapes), so a benchmark that runs other batch sizes rebuilds the torch module and loads the learned weights into
it. The exporter renames what it folds: a Linear's weight becomes a transposed `onnx::MatMul_N` initializer (found
through the Add of its named bias), and MiniLM's position and token-type embeddings become the constants added to
the word embeddings (position rows `[:L]` and token-type row 0; the rows the model cannot read at L tokens keep
the module's own values). Anything else that stays unfound raises (also equal tensors, e.g. untrained LayerNorm
weights, which the exporter stores once under one of their names), and the loaded module must reproduce ONNX
Runtime's output on the file, so a misread weight fails loudly instead of benchmarking another model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_POSITIONS = "embeddings.position_embeddings.weight"
_TOKEN_TYPES = "embeddings.token_type_embeddings.weight"


def _folded_linear_weights(graph, initializers: dict, names: set) -> dict:
    """`<layer>.weight` -> array for every MatMul by an unnamed initializer whose output an Add of `<layer>.bias`
    reads (the exporter's folded transpose of a Linear weight)."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in initializers or node.input[1] in names:
            continue
        for add in readers.get(node.output[0], []):
            biases = [name for name in add.input if name.endswith(".bias") and name in names]
            if add.op_type == "Add" and biases:
                found[biases[0][: -len(".bias")] + ".weight"] = initializers[node.input[1]].T
    return found


def _folded_embeddings(graph, initializers: dict, state: dict) -> dict:
    """MiniLM's position rows and token-type row 0: the constants added to the word-embedding Gather's output."""
    if _POSITIONS not in state or _TOKEN_TYPES not in state:
        return {}
    gathers = [node for node in graph.node if node.op_type == "Gather" and "embeddings.word_embeddings.weight"
               in node.input]
    if len(gathers) != 1:
        return {}
    found, value = {}, gathers[0].output[0]
    for node in graph.node:  # the chain word + positions + token type, in graph order
        if node.op_type == "Add" and value in node.input:
            constant = next((initializers[name] for name in node.input if name in initializers), None)
            if constant is None:
                break
            hidden = state[_POSITIONS].shape[1]
            if constant.ndim >= 2 and constant.shape[-1] == hidden and constant.size == np.prod(constant.shape[-2:]):
                positions = state[_POSITIONS].copy()
                positions[: constant.shape[-2]] = constant.reshape(-1, hidden)
                found[_POSITIONS] = positions
            elif constant.shape == (hidden,):
                token_types = state[_TOKEN_TYPES].copy()
                token_types[0] = constant
                found[_TOKEN_TYPES] = token_types
            value = node.output[0]
    return found


def load_onnx_weights(model, onnx_path: Path, inputs: list, atol: float = 1e-4):
    """Load into `model` (a torch module of the architecture `onnx_path` was exported from, in eval mode) the
    file's weights, then check that it reproduces ONNX Runtime on seeded inputs of `inputs` (InputSpecs: int inputs
    get token ids in [0, 1000), masks ones, floats normals) within `atol`. Returns the model; ValueError names what
    is missing or differs."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    graph = onnx.load(os.fspath(onnx_path)).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    found = {name: initializers[name] for name in state if name in initializers}
    found.update(_folded_linear_weights(graph, initializers, set(state)))
    found.update(_folded_embeddings(graph, initializers, state))
    missing = sorted(set(state) - set(found))
    if missing:
        raise ValueError(f"{os.fspath(onnx_path)!r}: no weights found for {', '.join(missing)} (not a "
                         f"{type(model).__name__} exported by torch.onnx?)")
    wrong = [name for name in state if found[name].shape != state[name].shape]
    if wrong:
        raise ValueError(f"{os.fspath(onnx_path)!r}: {', '.join(wrong)} have other shapes than the "
                         f"{type(model).__name__}'s")
    model.load_state_dict({name: torch.from_numpy(np.array(array)) for name, array in found.items()})
    model.eval()

    rng = np.random.default_rng(0)
    arrays = [np.ones(spec.shape, spec.dtype) if "mask" in spec.name
              else rng.integers(0, 1000, spec.shape).astype(spec.dtype) if np.dtype(spec.dtype).kind in "iu"
              else rng.standard_normal(spec.shape).astype(spec.dtype) for spec in inputs]
    session = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {spec.name: array for spec, array in zip(inputs, arrays)})[0]
    with torch.no_grad():
        got = model(*[torch.from_numpy(array) for array in arrays])
    got = (got[0] if isinstance(got, (tuple, list)) else got).numpy()
    error = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not error <= atol:
        raise ValueError(f"{os.fspath(onnx_path)!r}: the {type(model).__name__} with the file's weights differs "
                         f"from ONNX Runtime on the file by {error:.3g} (> {atol:g}); its weights were misread")
    return model
