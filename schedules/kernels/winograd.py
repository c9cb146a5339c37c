"""Winograd F(2x2, 3x3) conv2d: a 3x3 stride-1 convolution in 16 small matrix products instead of 9 per output.

Lavin & Gray (arXiv 1509.09308): each 2x2 output tile is `A^T [(G g G^T) . (B^T d B)] A`, where `d` is the 4x4
input tile under it and `g` a 3x3 filter. With the filter side `U = G g G^T` computed once at compile time
(`winograd_weight`, float64 then float32), the multiply-adds per output pixel fall from 9*C to 4*C (16 per tile):
a 2.25x cut, paid for with two cheap additive transforms. Exact arithmetic (the transforms are additions and
halvings of the filter), with rounding a few ulps from the direct sum; the rewrite is an algorithm choice for exact
convs, not an approximation.

The compute (unscheduled TE, blocks named for the `Winograd` schedule rule):

    winograd_data[n, h, w, c]     the zero-padded input, NHWC (channels contiguous for the vector transforms)
    winograd_input[e, p, c]       B^T d B of tile p = (n, ty, tx), e = 4 * e1 + e2 (4 terms each once unrolled)
    winograd_product[e, p, co]    sum over c of input[e, p, c] * U[e, c, co]: 16 batched matmuls
    winograd_output[n, co, y, x]  A^T m A of tile (n, y // 2, x // 2), picked by (y % 2, x % 2)

The transform coefficients are written as selects on the transform index: once the `Winograd` rule unrolls those
loops they fold to four terms per element, and any other schedule still computes the same values.
Edge semantics: NaN propagates like the direct conv's; an infinite input meets both signs in the transforms, so
outputs in its reach are NaN where the direct sum may give +-inf.
"""

import numpy as np
import tvm
from tvm import te, tirx

TILE = 2  # output tile side (m); the input tile is TILE + 2
_INPUT = TILE + 2
# B^T rows as (first index, second index, sign): (B^T d)[e] = d[first] + sign * d[second].
_B_T = ((0, 2, -1), (1, 2, 1), (2, 1, -1), (1, 3, -1))
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)


def winograd_weight(weight: np.ndarray) -> np.ndarray:
    """`U[e1 * 4 + e2, c, co] = (G g G^T)[e1, e2]` for an OIHW 3x3 float weight: (16, C, CO) float32."""
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"Winograd F(2x2, 3x3) needs an OIHW weight with 3x3 filters, got shape {weight.shape}")
    transformed = np.einsum("ar,ocrs,bs->abco", _G, weight.astype(np.float64), _G)
    return np.ascontiguousarray(transformed.reshape(_INPUT * _INPUT, weight.shape[1], weight.shape[0]), np.float32)


def _int64(*dims: int) -> tuple:
    """int64 extents, as legalized ops have: FuseTIR merges only functions that index alike."""
    return tuple(tirx.IntImm("int64", d) for d in dims)


def _select(index, values):
    """`values[index]` for a loop variable `index` (a select chain that folds once `index` is a constant)."""
    expr = values[-1]
    for position in range(len(values) - 2, -1, -1):
        expr = tirx.Select(index == position, values[position], expr)
    return expr


def _input_row(read, e):
    """(B^T d)[e] for the row `d[r] = read(r)`."""
    first = _select(e, [tirx.const(row[0], "int64") for row in _B_T])
    second = _select(e, [tirx.const(row[1], "int64") for row in _B_T])
    return tirx.Select(e == 1, read(first) + read(second), read(first) - read(second))


def winograd_conv2d_func(input_shape: tuple[int, int, int, int], out_channels: int,
                         padding: tuple[int, int, int, int]) -> tirx.PrimFunc:
    """`(x (N, C, H, W), U (16, C, CO), out (N, CO, OH, OW))`: a 3x3 stride-1 conv of `x` with the filters `U`
    came from (`winograd_weight`), zero padding (top, left, bottom, right), float32."""
    n, channels, height, width = input_shape
    top, left, bottom, right = padding
    out_h, out_w = height + top + bottom - 2, width + left + right - 2
    if min(n, channels, out_channels, out_h, out_w) < 1:
        raise ValueError(f"empty Winograd conv: input {input_shape}, padding {padding}, {out_channels} filters")
    tiles_h, tiles_w = -(-out_h // TILE), -(-out_w // TILE)  # a last, partial tile is computed and cut
    pixels = n * tiles_h * tiles_w
    x = te.placeholder(_int64(n, channels, height, width), "float32", name="x")
    u = te.placeholder(_int64(_INPUT * _INPUT, channels, out_channels), "float32", name="u")

    def padded(b, h, w, c):
        inside = tirx.all(h >= top, h < top + height, w >= left, w < left + width)
        return tirx.if_then_else(inside, x[b, c, h - top, w - left], tirx.const(0, "float32"))

    data = te.compute(_int64(n, TILE * tiles_h + 2, TILE * tiles_w + 2, channels), padded, name="winograd_data")

    def transformed(e, p, c):
        b, ty, tx = p // (tiles_h * tiles_w), p // tiles_w % tiles_h, p % tiles_w
        row = lambda r: _input_row(lambda s: data[b, TILE * ty + r, TILE * tx + s, c], e % _INPUT)  # noqa: E731
        return _input_row(row, e // _INPUT)

    inputs = te.compute(_int64(_INPUT * _INPUT, pixels, channels), transformed, name="winograd_input")
    k = te.reduce_axis(_int64(0, channels), name="k")
    product = te.compute(_int64(_INPUT * _INPUT, pixels, out_channels),
                         lambda e, p, co: te.sum(inputs[e, p, k] * u[e, k, co], axis=k), name="winograd_product")

    def output(b, co, y, x_):
        p = (b * tiles_h + y // TILE) * tiles_w + x_ // TILE

        def column(e1):  # (m A)[e1, x % 2]: A^T rows are (1, 1, 1, 0) and (0, 1, -1, -1)
            m = lambda e2: product[e1 * _INPUT + e2, p, co]  # noqa: E731
            return tirx.Select(x_ % TILE == 0, m(0) + m(1) + m(2), m(1) - m(2) - m(3))

        return tirx.Select(y % TILE == 0, column(0) + column(1) + column(2), column(1) - column(2) - column(3))

    out = te.compute(_int64(n, out_channels, out_h, out_w), output, name="winograd_output")
    return te.create_prim_func([x, u, out])
