"""GELU in the forms the importers produce, served by `schedules.pwl_func` with the `gelu` or `gelu_tanh` table.

- `R.nn.gelu` / `R.nn.gelu_tanh`: torch.export (`F.gelu`), ONNX Gelu (opset >= 20).
- erf-decomposed `x * 0.5 * (1 + erf(x / sqrt 2))`: ONNX opset < 20 (Div by sqrt 2, Erf, Add 1, Mul x, Mul 0.5),
  hand-written GELUs through torch.export; any association and operand order of the products, `x / sqrt 2` or
  `x * (1 / sqrt 2)`, and the folded `x * (0.5 + 0.5 * erf(...))`.
- tanh-decomposed `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))`: ONNX opset < 20 for
  `approximate="tanh"`, with `x^3` as `pow(x, 3)` or `x * (x * x)`.
- Both decomposed forms as ONNX's own expansion of its Gelu function writes them (the `*_expanded` node tests, a
  model exported with Gelu inlined): every `+` an ONNX `Sum`, which TVM imports as `sum(stack(a, b), axis=0)`
  (operands broadcast first), and `sqrt 2`, `sqrt(2 / pi)` as `Sqrt` of a constant.
"""

from __future__ import annotations

import math

from tvm.relax.dpl import DFPattern, is_op, is_tuple, wildcard

from . import Constants, Form, LUTCall

SQRT_2 = math.sqrt(2.0)
TANH_CUBIC = 0.044715

_mul, _div, _sqrt = is_op("relax.multiply"), is_op("relax.divide"), is_op("relax.sqrt")


def _add(a: DFPattern, b: DFPattern) -> DFPattern:
    """`a + b`: an add, or ONNX's two-input `Sum` as TVM imports it, `sum(stack((a, b)), axis=0)` with each
    operand maybe broadcast to the output shape, in either order."""
    def operand(p):
        return p | is_op("relax.broadcast_to")(p, wildcard())

    def summed(first, second):
        stacked = is_op("relax.stack")(is_tuple([operand(first), operand(second)])).has_attr({"axis": 0})
        return is_op("relax.sum")(stacked).has_attr({"axis": [0], "keepdims": False})

    return is_op("relax.add")(a, b) | summed(a, b) | summed(b, a)


def _sqrt_of(value: float, c: Constants) -> DFPattern:
    """The constant sqrt(value), folded or as `sqrt` of the constant `value`."""
    return c(math.sqrt(value)) | _sqrt(c(value))


def _half_x_times_one_plus(x: DFPattern, term: DFPattern, c: Constants) -> DFPattern:
    """`0.5 * x * (1 + term)` in every association of the products, and folded as `x * (0.5 + 0.5 * term)`."""
    one_plus = _add(term, c(1.0))
    return (
        _mul(_mul(x, c(0.5)), one_plus)
        | _mul(_mul(x, one_plus), c(0.5))
        | _mul(x, _mul(one_plus, c(0.5)))
        | _mul(x, _add(_mul(term, c(0.5)), c(0.5)))
    )


def _pwl(table: str, x: DFPattern, c: Constants | None = None):
    def extract(matchings: dict) -> LUTCall | None:
        if c is not None and not c.hold(matchings):
            return None
        return LUTCall(matchings[x], "pwl_func", (table,), (("dtype", "float32"),))

    return extract


def fused(op_name: str, table: str) -> Form:
    """`R.nn.gelu(x)` or `R.nn.gelu_tanh(x)`."""
    x = wildcard()
    return Form("gelu", f"R.nn.{op_name}", is_op(f"relax.nn.{op_name}")(x), _pwl(table, x))


def erf_decomposed() -> Form:
    x, c = wildcard(), Constants()
    scaled = _div(x, _sqrt_of(2.0, c)) | _mul(x, c(1.0 / SQRT_2))
    pattern = _half_x_times_one_plus(x, is_op("relax.erf")(scaled), c)
    return Form("gelu", "erf-decomposed", pattern, _pwl("gelu", x, c))


def tanh_decomposed() -> Form:
    x, c = wildcard(), Constants()
    cube = is_op("relax.power")(x, c(3.0)) | _mul(x, _mul(x, x))
    inner = _add(x, _mul(cube, c(TANH_CUBIC)))
    pattern = _half_x_times_one_plus(x, is_op("relax.tanh")(_mul(inner, _sqrt_of(2.0 / math.pi, c))), c)
    return Form("gelu", "tanh-decomposed", pattern, _pwl("gelu_tanh", x, c))


def forms() -> list[Form]:
    return [fused("gelu", "gelu"), fused("gelu_tanh", "gelu_tanh"), erf_decomposed(), tanh_decomposed()]
