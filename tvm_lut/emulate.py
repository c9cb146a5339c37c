"""Run a torch model with GELU, softmax and LayerNorm computed from NN-LUT tables, to judge a bundle's accuracy
in seconds, before compiling anything.

`with LUTMode(bundle): model(...)` intercepts the same calls calibration sees (`tvm_lut.calibrate`) and computes
them the way the LUT kernels do, in float32:
  gelu(x)        = T_gelu(x)                       (T_gelu_tanh for approximate="tanh")
  softmax(x)     = e * T_reciprocal(sum(e)),  e = T_exp(x - max(x))
  layer_norm(x)  = (x - mean) * T_rsqrt(var + eps) * weight + bias
An op whose table the bundle lacks runs exactly and is listed in `mode.kept`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tvm_lut.calibrate import SOFTMAX_FUNCTIONS, normalized_dims, softmax_dim


def evaluate_table(table, x: torch.Tensor) -> torch.Tensor:
    """`table(x)` in torch (float32), with the semantics of `PWLTable.__call__` (the NumPy reference)."""
    x = x.to(torch.float32)
    if table.scaling == "pow2":
        mantissa, exponent = torch.frexp(x.abs())
        y = torch.ldexp(_segments(table, 2 * mantissa), 1 - exponent).copysign(x)
        y = torch.where(x == 0, torch.full_like(x, float("inf")).copysign(x), y)
        y = torch.where(x.isinf(), torch.zeros_like(x).copysign(x), y)
        return torch.where(x.isnan(), x, y)
    if table.scaling == "pow4":
        mantissa, exponent = torch.frexp(x)
        e = exponent - 1
        half = torch.div(e, 2, rounding_mode="floor")
        y = torch.ldexp(_segments(table, torch.ldexp(2 * mantissa, e - 2 * half)), -half)
        y = torch.where(x == 0, torch.full_like(x, float("inf")), y)
        y = torch.where(x == float("inf"), torch.zeros_like(x), y)
        return torch.where((x < 0) | x.isnan(), torch.full_like(x, float("nan")), y)
    return _segments(table, x)


def _segments(table, x: torch.Tensor) -> torch.Tensor:
    breakpoints = torch.tensor(table.breakpoints)
    index = torch.searchsorted(breakpoints, x.contiguous(), right=True)
    index = torch.where(x.isnan(), len(breakpoints), index)
    slope, intercept = torch.tensor(table.slopes)[index], torch.tensor(table.intercepts)[index]
    return torch.where(x.isinf() & (slope == 0), intercept, slope * x + intercept)


class LUTMode(TorchFunctionMode):
    """Computes the intercepted ops from the bundle's tables (see the module docstring)."""

    def __init__(self, bundle, ops=("gelu", "softmax", "layer_norm")):
        super().__init__()
        unknown = sorted(set(ops) - {"gelu", "softmax", "layer_norm"})
        if unknown:
            raise ValueError(f"unknown ops {unknown}; LUTMode serves gelu, softmax and layer_norm")
        self.ops = tuple(ops)
        self.tables = {name: bundle.pwl(name) for name in ("gelu", "gelu_tanh", "exp", "reciprocal", "rsqrt")}
        self.kept: set[str] = set()

    def _table(self, name: str):
        table = self.tables[name]
        if table is None:
            self.kept.add(f"{name}: no table in the bundle")
        return table

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.gelu and "gelu" in self.ops:
            approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
            table = self._table("gelu_tanh" if approximate == "tanh" else "gelu")
            if table is not None:
                return evaluate_table(table, args[0]).to(args[0].dtype)
        elif func in SOFTMAX_FUNCTIONS and "softmax" in self.ops:
            exp, reciprocal = self._table("exp"), self._table("reciprocal")
            if exp is not None and reciprocal is not None:
                x = args[0].float()
                dim = softmax_dim(x, kwargs.get("dim", args[1] if len(args) > 1 else None))
                e = evaluate_table(exp, x - x.amax(dim, keepdim=True))
                return (e * evaluate_table(reciprocal, e.sum(dim, keepdim=True))).to(args[0].dtype)
        elif func is F.layer_norm and "layer_norm" in self.ops:
            table = self._table("rsqrt")
            if table is not None:
                return _layer_norm(table, *args, **kwargs)
        return func(*args, **kwargs)


def _layer_norm(table, x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = normalized_dims(normalized_shape)
    x32 = x.float()
    mean = x32.mean(dims, keepdim=True)
    variance = x32.var(dims, unbiased=False, keepdim=True)
    y = (x32 - mean) * evaluate_table(table, variance + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)
