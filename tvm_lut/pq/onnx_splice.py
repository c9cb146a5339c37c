"""PQ layers spliced into an ONNX graph, so that ONNX Runtime runs a model with some dense layers product-quantized.

The calibration fit (`tvm_lut.pq.calibration_fit`) needs it twice: to capture a layer's input from the model with
the already-fitted upstream layers quantized (sequential calibration), and to measure the PQ model on real data
without compiling it. Each replaced MatMul / Gemm node becomes standard ONNX ops with the semantics of `PQTable`
(`tvm_lut.pq.reference`): nearest centroid per sub-vector (ArgMin of `|c|^2 - 2 x.c`, ties to the lowest k), then
the sum over codebooks of the table rows (`int8 * scale`, in float32) as the product of the one-hot codes
(N, C*K) and the table (C*K, M). A MatMul's bias is a separate `Add` that stays in the graph; a Gemm's bias input
is added after the sum. Conv nodes are not spliced (their patches would need an im2col in ONNX ops): they stay
exact here.
"""

from __future__ import annotations

import numpy as np

from tvm_lut.pq.table import PQTable


def _splice_node(node, entry: PQTable, prefix: str) -> tuple[list, list]:
    """The nodes and initializers that compute `node`'s output from its input with `entry`'s table."""
    from onnx import helper, numpy_helper

    C, K, V = entry.centroids.shape
    M = entry.table.shape[-1]
    x, y = node.input[0], node.output[0]
    const = {
        "centroids": -2.0 * entry.centroids.transpose(0, 2, 1),  # (C, V, K)
        "norms": (entry.centroids.astype(np.float64) ** 2).sum(-1)[:, None, :].astype(np.float32),  # (C, 1, K)
        "table": (entry.table.astype(np.float32) * entry.scale).reshape(C * K, M),
        "rows": np.array([-1, C, V], dtype=np.int64),
        "one_hot_rows": np.array([-1, C * K], dtype=np.int64),
        "depth": np.array(K, dtype=np.int64),
        "off_on": np.array([0.0, 1.0], dtype=np.float32),
        "out_dim": np.array([M], dtype=np.int64),
        "zero": np.array([0], dtype=np.int64),
        "minus_one": np.array([-1], dtype=np.int64),
    }
    inits = [numpy_helper.from_array(np.ascontiguousarray(v), f"{prefix}/{k}") for k, v in const.items()]
    c = {k: f"{prefix}/{k}" for k in const}
    t = lambda name: f"{prefix}/{name}"  # noqa: E731 (a name in this splice's namespace)
    summed = t("sum") if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else y
    nodes = [
        helper.make_node("Reshape", [x, c["rows"]], [t("subs")]),
        helper.make_node("Transpose", [t("subs")], [t("by_codebook")], perm=[1, 0, 2]),  # (C, N, V)
        helper.make_node("MatMul", [t("by_codebook"), c["centroids"]], [t("dots")]),  # (C, N, K): -2 x.c
        helper.make_node("Add", [t("dots"), c["norms"]], [t("distances")]),
        helper.make_node("ArgMin", [t("distances")], [t("codes")], axis=2, keepdims=0),  # (C, N)
        helper.make_node("OneHot", [t("codes"), c["depth"], c["off_on"]], [t("one_hot")], axis=-1),  # (C, N, K)
        helper.make_node("Transpose", [t("one_hot")], [t("by_row")], perm=[1, 0, 2]),
        helper.make_node("Reshape", [t("by_row"), c["one_hot_rows"]], [t("codes_flat")]),  # (N, C*K)
        helper.make_node("MatMul", [t("codes_flat"), c["table"]], [t("flat")]),  # the sum of the table rows
        helper.make_node("Shape", [x], [t("in_shape")]),
        helper.make_node("Slice", [t("in_shape"), c["zero"], c["minus_one"]], [t("lead_shape")]),  # all but D
        helper.make_node("Concat", [t("lead_shape"), c["out_dim"]], [t("out_shape")], axis=0),
        helper.make_node("Reshape", [t("flat"), t("out_shape")], [summed]),
    ]
    if summed != y:
        nodes.append(helper.make_node("Add", [summed, node.input[2]], [y]))
    return nodes, inits


def splice(model, entries: dict[str, PQTable], node_names: dict[str, str]):
    """A copy of the `onnx.ModelProto` with the nodes `node_names[layer]` computed by `entries[layer]`.

    `node_names` maps a layer name to its ONNX node name (`DenseLayer.node`); layers that are conv entries, or
    whose node is not a MatMul / Gemm, raise: the caller keeps them out.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_node = {node_names[layer]: (layer, entry) for layer, entry in entries.items()}
    graph = out.graph
    new_nodes = []
    for index, node in enumerate(graph.node):
        if node.name not in by_node:
            new_nodes.append(node)
            continue
        layer, entry = by_node.pop(node.name)
        if node.op_type not in ("MatMul", "Gemm") or entry.layer != "linear":
            raise ValueError(f"layer {layer!r}: only MatMul / Gemm nodes are spliced, not a {node.op_type} "
                             f"({entry.layer} table)")
        nodes, inits = _splice_node(node, entry, f"pq_splice/{index}")
        new_nodes += nodes
        graph.initializer.extend(inits)
    if by_node:
        raise ValueError(f"no node named {sorted(by_node)} in the graph")
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]  # the replaced weights
    for init in unused:
        graph.initializer.remove(init)
    return out


def splice_bundle(model, bundle):
    """`model` with every linear PQ table of `bundle` spliced in, matched to its layer by name (as
    `tvm_lut.pq.calibration_fit.onnx_layers` names them): the PQ model, for ONNX Runtime."""
    from tvm_lut.pq.calibration_fit import onnx_layers

    nodes = {layer.name: layer.node for layer in onnx_layers(model)[0] if layer.conv is None}
    entries = {name: entry for name, entry in bundle.items()
               if getattr(entry, "kind", None) == "pq" and entry.layer == "linear" and name in nodes}
    return splice(model, entries, nodes)
