"""Dense layers in the forms the importers produce, for `LUTDense`.

- torch.export (`nn.Linear`, `F.linear`): `R.matmul(x, R.permute_dims(W))`, bias added as `R.add(b, mm)`;
  a batched input is reshaped to 2-D around the matmul.
- ONNX (MatMul / Gemm): `R.matmul(x, Wt)` with the transposed weight `Wt = W.T` folded into a constant, on batched
  inputs (B x T x D) directly, bias added as `R.add(b, mm)`.
- Either operand order of the bias add, with or without a bias.

`W` must be a constant (bind parameters first, e.g. `relax.transform.BindParams`). The extract returns a
`DenseMatch` with the weight in torch's layout (M, D), the layout bundle fingerprints are taken in.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import ir, relax
from tvm.relax.dpl import DFPattern, is_const, is_op, wildcard

from . import Form


@dataclasses.dataclass(frozen=True)
class DenseMatch:
    """A matched dense layer: `x (..., D) @ weight.T + bias`; `weight` (M, D) float32 in torch's layout."""

    x: relax.Expr
    weight: np.ndarray
    bias: np.ndarray | None


def add_bias(inner: DFPattern, bias: DFPattern) -> DFPattern:
    return is_op("relax.add")(inner, bias) | is_op("relax.add")(bias, inner)


def constant_array(expr: relax.Expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, ir.Constant) else None


def _bias_vector(expr: relax.Expr, out_features: int) -> np.ndarray | None:
    """A bias constant broadcast along the last axis only, as (M,); None when it is anything else."""
    data = constant_array(expr)
    if data is None or data.ndim == 0 or data.shape[-1] != out_features or data.size != out_features:
        return None
    return data.reshape(-1).astype(np.float32)


def _form(name: str, transposed_in_graph: bool, with_bias: bool) -> Form:
    x, weight = wildcard(), is_const()
    rhs = is_op("relax.permute_dims")(weight) if transposed_in_graph else weight
    matmul = is_op("relax.matmul")(x, rhs)
    bias = is_const()
    pattern = add_bias(matmul, bias) if with_bias else matmul

    def extract(matchings: dict) -> DenseMatch | str | None:
        data = constant_array(matchings[weight])
        if data is None or data.ndim != 2:
            return None
        if transposed_in_graph:
            axes = matchings[rhs].attrs.axes
            if axes is not None and [int(a) for a in axes] != [1, 0]:
                return None
        torch_weight = data if transposed_in_graph else data.T
        vector = _bias_vector(matchings[bias], torch_weight.shape[0]) if with_bias else None
        if with_bias and vector is None:
            return None  # not a per-output bias: the bare matmul form serves the matmul alone
        return DenseMatch(matchings[x], np.ascontiguousarray(torch_weight, np.float32), vector)

    suffix = " + bias" if with_bias else ""
    return Form("dense", f"{name}{suffix}", pattern, extract)


def forms() -> list[Form]:
    """Most specific first: a matmul with its bias add before the bare matmul."""
    return [
        _form("matmul(x, permute_dims(W))", True, True),
        _form("matmul(x, W.T const)", False, True),
        _form("matmul(x, permute_dims(W))", True, False),
        _form("matmul(x, W.T const)", False, False),
    ]
