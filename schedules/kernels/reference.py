"""NumPy references of the LUT kernels: the semantics the compiled kernels are tested against.

`pwl_reference` follows docs/architecture.md ("Piecewise-linear tables") and agrees with `tvm_lut.PWLTable.__call__`;
the softmax and layer-norm references compose it the way the kernels do (float32 throughout).
"""

import numpy as np

from .pwl_expr import PWLSpec, Table


def pwl_reference(spec: PWLSpec, x) -> np.ndarray:
    """The table applied elementwise to `x`, with its input scaling."""
    table = spec if isinstance(spec, Table) else Table(spec)
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(all="ignore"):
        if table.scaling == "pow2":
            return _reciprocal(table, x)
        if table.scaling == "pow4":
            return _rsqrt(table, x)
        return _segments(table, x)


def _segments(table: Table, x: np.ndarray) -> np.ndarray:
    index = np.searchsorted(table.breakpoints, x, side="right")
    slope, intercept = table.slopes[index], table.intercepts[index]
    y = slope * x + intercept
    return np.where(np.isinf(x) & (slope == 0), intercept, y).astype(np.float32)


def _reciprocal(table: Table, x: np.ndarray) -> np.ndarray:
    fraction, exponent = np.frexp(np.abs(x))  # |x| = fraction * 2^exponent, fraction in [0.5, 1)
    y = np.copysign(np.ldexp(_segments(table, 2 * fraction), 1 - exponent), x)
    y = np.where(x == 0, np.copysign(np.float32(np.inf), x), y)
    y = np.where(np.isinf(x), np.copysign(np.float32(0), x), y)
    return np.where(np.isnan(x), x, y).astype(np.float32)


def _rsqrt(table: Table, x: np.ndarray) -> np.ndarray:
    fraction, exponent = np.frexp(x)
    e = exponent - 1  # x = (2 * fraction) * 2^e
    half = np.floor_divide(e, 2)  # x = m * 4^half, m in [1, 4)
    y = np.ldexp(_segments(table, np.ldexp(2 * fraction, e - 2 * half)), -half)
    y = np.where(x == 0, np.float32(np.inf), y)
    y = np.where(x == np.inf, np.float32(0), y)
    return np.where((x < 0) | np.isnan(x), np.float32(np.nan), y).astype(np.float32)


def softmax_reference(exp_spec: PWLSpec, recip_spec: PWLSpec, x, axis: int) -> np.ndarray:
    """`exp(x - max) * reciprocal(sum exp(x - max))` along `axis`, both functions read from their tables."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    with np.errstate(all="ignore"):
        e = pwl_reference(exp_spec, x - x.max(axis=axis, keepdims=True))
        return (e * pwl_reference(recip_spec, e.sum(axis=axis, keepdims=True, dtype=np.float32))).astype(np.float32)


def layer_norm_reference(rsqrt_spec: PWLSpec, x, axes, eps: float, gamma=None, beta=None) -> np.ndarray:
    """`(x - mean) * rsqrt(var + eps) * gamma + beta` over `axes` (biased variance), rsqrt read from its table."""
    x = np.asarray(x, dtype=np.float32)
    axes = tuple(int(a) % x.ndim for a in axes)
    if x.size == 0:
        return x.copy()
    with np.errstate(all="ignore"):
        centered = x - x.mean(axis=axes, keepdims=True, dtype=np.float32)
        var = np.mean(centered * centered, axis=axes, keepdims=True, dtype=np.float32)
        y = centered * pwl_reference(rsqrt_spec, var + np.float32(eps))
        if gamma is not None:
            y = y * _along(gamma, x.ndim, axes)
        if beta is not None:
            y = y + _along(beta, x.ndim, axes)
    return y.astype(np.float32)


def _along(param, ndim: int, axes: tuple[int, ...]) -> np.ndarray:
    """A gamma/beta of shape `[x.shape[a] for a in axes]`, reshaped to broadcast against x."""
    param = np.asarray(param, dtype=np.float32)
    shape = [1] * ndim
    for axis, size in zip(sorted(axes), param.shape):
        shape[axis] = size
    return param.reshape(shape)
