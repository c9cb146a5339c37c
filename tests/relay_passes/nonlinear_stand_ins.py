"""Stand-ins for the tests of LUTNonlinear: interpolated tables, and kernel builders that record their calls.

The tables are chords of the exact function between evenly spaced knots (PWLTables with the contract's
asymptotes), accurate enough that a whole graph can be compared to PyTorch with a tolerance derived from them.
"""

import math

import numpy as np

import schedules
from tvm_lut.bundle import Bundle
from tvm_lut.pwl import PWLTable

BUILDERS = ("pwl_func", "softmax_func", "layer_norm_func")


def _erf_gelu(v):
    return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))


def _tanh_gelu(v):
    return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def interpolated(name, fn, lo, hi, knots, scaling="none", left=(0.0, 0.0), right=None) -> PWLTable:
    """Chords of `fn` on `knots` even knots of [lo, hi]; `left`/`right` are the outer (slope, intercept)."""
    xs = np.linspace(lo, hi, knots)
    ys = np.array([fn(v) for v in xs])
    slopes = np.diff(ys) / np.diff(xs)
    intercepts = ys[:-1] - slopes * xs[:-1]
    right = right or (slopes[-1], intercepts[-1])
    return PWLTable(name, xs, np.r_[left[0], slopes, right[0]], np.r_[left[1], intercepts, right[1]], scaling)


def tables(knots: int = 15) -> dict[str, PWLTable]:
    """Tables of `knots + 1` segments (the kernels take at most 16)."""
    return {
        "gelu": interpolated("gelu", _erf_gelu, -4, 4, knots, right=(1.0, 0.0)),
        "gelu_tanh": interpolated("gelu_tanh", _tanh_gelu, -4, 4, knots, right=(1.0, 0.0)),
        "exp": interpolated("exp", math.exp, -10, 0, knots, right=(0.0, 1.0)),
        "reciprocal": interpolated("reciprocal", lambda v: 1 / v, 1, 2, knots, "pow2", (0.0, 1.0), (0.0, 0.5)),
        "rsqrt": interpolated("rsqrt", lambda v: v**-0.5, 1, 4, knots, "pow4", (0.0, 1.0), (0.0, 0.5)),
    }


def bundle(knots: int = 15, without=()) -> Bundle:
    return Bundle({name: table for name, table in tables(knots).items() if name not in without})


class RecordingBuilders:
    """Kernel builders that return fixed PrimFuncs (`kernels[builder]`) and record every call."""

    def __init__(self, kernels: dict):
        self.kernels = kernels
        self.calls: list[tuple] = []

    def install(self, monkeypatch) -> "RecordingBuilders":
        for name in BUILDERS:
            monkeypatch.setattr(schedules, name, self._builder(name))
        return self

    def _builder(self, name):
        def build(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name not in self.kernels:
                raise AssertionError(f"the test did not expect a call to {name}")
            return self.kernels[name]

        return build


class ExactKernels:
    """Builders with the kernels' signatures that compute the exact op (TOPI), so a graph rewritten with them must
    match PyTorch to float rounding: that checks the rewiring (table choice, operands, axis, eps, gamma and beta)
    apart from any table error. `calls` records the builder names."""

    def __init__(self):
        self.calls: list[str] = []

    def install(self, monkeypatch) -> "ExactKernels":
        for name in BUILDERS:
            monkeypatch.setattr(schedules, name, getattr(self, name))
        return self

    def pwl_func(self, spec, shape, dtype="float32"):
        from tvm import te, tirx

        exact = {
            "gelu": lambda v: v * 0.5 * (1.0 + tirx.erf(v * (0.5**0.5))),
            "gelu_tanh": lambda v: 0.5 * v * (1.0 + tirx.tanh((2 / math.pi) ** 0.5 * (v + 0.044715 * v * v * v))),
        }[spec.name]
        x = te.placeholder(shape, dtype, name="x")
        return self._func("pwl_func", [x, te.compute(shape, lambda *i: exact(x[i]), name="y")])

    def softmax_func(self, exp_spec, recip_spec, shape, axis, scale=None, mask_shape=None):
        from tvm import te, topi

        assert (exp_spec.name, recip_spec.name) == ("exp", "reciprocal")
        x = te.placeholder(shape, "float32", name="x")
        inputs = [x]
        if mask_shape is not None:
            mask = te.placeholder(mask_shape, "float32", name="mask")
            inputs.append(mask)
            op, c = scale if scale is not None else ("multiply", 1.0)
            scaled = topi.divide(x, c) if op == "divide" else topi.multiply(x, c)
            x = topi.add(scaled, mask)
        return self._func("softmax_func", [*inputs, topi.nn.softmax(x, axis)])

    def layer_norm_func(self, rsqrt_spec, shape, axes, eps, has_gamma=True, has_beta=True, residual=False):
        from tvm import te, topi

        assert rsqrt_spec.name == "rsqrt"
        x = te.placeholder(shape, "float32", name="x")
        inputs = [x]
        if residual:
            inputs.append(te.placeholder(shape, "float32", name="residual"))
            x = te.compute(shape, lambda *i: inputs[0][i] + inputs[1][i], name="sum")
        normalized = [shape[a] for a in axes]
        params = [te.placeholder(normalized, "float32", name=n) for n, on in (("g", has_gamma), ("b", has_beta)) if on]
        gamma = params[0] if has_gamma else te.compute(normalized, lambda *i: 1.0, name="one")
        beta = params[-1] if has_beta else te.compute(normalized, lambda *i: 0.0, name="zero")
        return self._func("layer_norm_func", [*inputs, *params, topi.nn.layer_norm(x, gamma, beta, list(axes), eps)])

    def _func(self, name, tensors):
        from tvm import te

        self.calls.append(name)
        return te.create_prim_func(tensors)


def module_of(build, shape=(2, 8), dtype: str = "float32"):
    """A module whose `main(x)` (x: `shape`, `dtype`) returns `build(bb, x)`: build emits its intermediate values
    with `bb.emit` and returns the last expression."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(build(bb, x))
        bb.emit_func_output(y)
    return bb.get()
