"""LayerNorm in the forms the importers produce, served by `schedules.layer_norm_func` with the `rsqrt` table.

- `R.nn.layer_norm(x, gamma, beta)`: torch.export (`nn.LayerNorm`, `F.layer_norm`), ONNX LayerNormalization
  (opset >= 17).
- decomposed: `d = x - mean(x)`; variance `mean(d^2)` (ONNX opset < 17: `Pow(d, 2)`; hand-written: `d * d`) or
  `R.variance(x)` (`torch.var(unbiased=False)`); `d / sqrt(var + eps)` or `d * rsqrt(var + eps)`; then the affine
  map `* gamma + beta`, `* gamma`, `+ beta` or none. gamma and beta must broadcast as the normalized shape (trailing
  axes; a constant with leading unit dims is reshaped); otherwise the normalization alone is replaced and the
  affine map stays as it was.

Each form also comes with the residual add of a transformer block fused in, `layer_norm(a + b)` with a and b of the
same shape (torch.export's and ONNX's `Add` before every BERT LayerNorm): one kernel reads both, instead of an add
that writes the sum for LayerNorm to read back. Served when the kernel's row form applies (trailing axes, gamma
and beta); otherwise the add stays and the LayerNorm alone is replaced.
"""

from __future__ import annotations

from tvm import ir, relax
from tvm.relax.dpl import is_const, is_op, wildcard

from . import Constants, Form, LUTCall, constant_scalar, normalized_axes, static_shape

_add, _mul, _div = is_op("relax.add"), is_op("relax.multiply"), is_op("relax.divide")


class _Input:
    """LayerNorm's input pattern: any tensor, or with `residual` the sum `a + b` of two tensors of its shape."""

    def __init__(self, residual: bool):
        self.a, self.b = wildcard(), wildcard()
        self.pattern = _add(self.a, self.b) if residual else wildcard()
        self.residual = residual

    def call(self, matchings: dict, axes, eps, has_gamma, has_beta, params) -> LUTCall | None:
        x = matchings[self.pattern]
        if not self.residual:
            return _call(x, axes, eps, has_gamma, has_beta, params)
        a, b = matchings[self.a], matchings[self.b]
        shape = static_shape(x)
        if shape is None or static_shape(a) != shape or static_shape(b) != shape or a.ty.dtype != b.ty.dtype:
            return None  # a broadcasting add (a bias): not a residual
        trailing = axes == tuple(range(len(shape) - len(axes), len(shape)))
        if not (trailing and has_gamma and has_beta and 0 not in shape):
            return None
        return _call(a, axes, eps, has_gamma, has_beta, (b, *params), residual=True)

    def name(self, name: str) -> str:
        return f"{name}, residual add" if self.residual else name


def fused(residual: bool = False) -> Form:
    source, gamma, beta = _Input(residual), wildcard(), wildcard()
    x = source.pattern
    layer_norm = is_op("relax.nn.layer_norm")(x, gamma, beta)

    def extract(matchings: dict) -> LUTCall | str:
        attrs = matchings[layer_norm].attrs
        axes = normalized_axes(list(attrs.axes), matchings[x].ty.ndim)
        if axes is None:
            return f"axes {list(attrs.axes)} do not fit a tensor of rank {matchings[x].ty.ndim}"
        params = [matchings[gamma]] * bool(attrs.scale) + [matchings[beta]] * bool(attrs.center)
        return source.call(matchings, axes, float(attrs.epsilon), bool(attrs.scale), bool(attrs.center), params)

    return Form("layer_norm", source.name("R.nn.layer_norm"), layer_norm, extract)


def decomposed(affine: str, residual: bool = False) -> Form:
    """The decomposed normalization followed by `affine`: "gamma+beta", "gamma", "beta" or "none"."""
    source, eps, c = _Input(residual), is_const(), Constants()
    x = source.pattern
    mean = is_op("relax.mean")(x)
    centered = is_op("relax.subtract")(x, mean)
    mean_of_squares = is_op("relax.mean")(is_op("relax.power")(centered, c(2.0)) | _mul(centered, centered))
    variance = is_op("relax.variance")(x)
    shifted = _add(mean_of_squares | variance, eps)
    normalized = _div(centered, is_op("relax.sqrt")(shifted)) | _mul(centered, is_op("relax.rsqrt")(shifted))
    gamma, beta = wildcard(), wildcard()
    pattern = {
        "gamma+beta": _add(_mul(normalized, gamma), beta),
        "gamma": _mul(normalized, gamma),
        "beta": _add(normalized, beta),
        "none": normalized,
    }[affine]

    def extract(matchings: dict) -> LUTCall | None:
        ndim = matchings[x].ty.ndim
        reductions = [matchings[p] for p in (mean, mean_of_squares, variance) if p in matchings]
        axes = {normalized_axes(list(r.attrs.axis), ndim) for r in reductions}
        if len(axes) != 1 or None in axes or not all(r.attrs.keepdims for r in reductions) or not c.hold(matchings):
            return None
        (axes,) = axes
        epsilon = constant_scalar(matchings[eps])
        if epsilon is None:
            return None
        params = [_as_normalized_shape(matchings[p], matchings[x], axes) for p in (gamma, beta) if p in matchings]
        if None in params:
            return None
        return source.call(matchings, axes, epsilon, gamma in matchings, beta in matchings, params)

    name = "decomposed" if affine == "none" else f"decomposed, {affine}"
    return Form("layer_norm", source.name(name), pattern, extract)


def _call(x, axes, eps, has_gamma, has_beta, args, residual: bool = False) -> LUTCall:
    kernel_params = (("axes", axes), ("eps", eps), ("has_gamma", has_gamma), ("has_beta", has_beta)) + (
        (("residual", True),) if residual else ())
    return LUTCall(x, "layer_norm_func", ("rsqrt",), kernel_params, tuple(args))


def _as_normalized_shape(param: relax.Expr, x: relax.Expr, axes: tuple[int, ...]) -> relax.Expr | None:
    """`param` as a tensor of the normalized shape (what the kernel takes), or None when it does not broadcast so.

    Only trailing axes qualify (then broadcasting lines the parameter up with them); a constant with leading unit
    dims is reshaped.
    """
    x_shape, shape = static_shape(x), static_shape(param)
    if x_shape is None or shape is None or param.ty.dtype != x.ty.dtype:
        return None
    if axes != tuple(range(len(x_shape) - len(axes), len(x_shape))):
        return None
    wanted = tuple(x_shape[a] for a in axes)
    if shape == wanted:
        return param
    if len(shape) > len(wanted) and shape[-len(wanted):] == wanted and set(shape[:-len(wanted)]) == {1}:
        if isinstance(param, ir.Constant):
            return relax.const(param.value.numpy().reshape(wanted))
    return None


def forms() -> list[Form]:
    """Residual forms first: a LayerNorm takes its add along when it can, else is replaced alone."""
    return [form for residual in (True, False)
            for form in [fused(residual)] + [decomposed(affine, residual) for affine in ("gamma+beta", "gamma", "beta",
                                                                                      "none")]]
