"""A 16 x 16 float32 transpose in registers: four stages of two-register shuffles (64 per block instead of 256
strided loads or stores). The PQ encode uses it to put 16 rows of x into lanes, the dot-product lookup to turn 16
outputs' accumulators (rows in lanes) back into 16 rows of y.

Stage h exchanges, between rows `lo` and `lo + h` (bit h of lo clear), the entries whose column has bit h opposite
to the row's; after h = 8, 4, 2, 1 every entry (r, j) has moved to (j, r). The block is held as two (8, 16) halves
(rows 0-7 and 8-15): TVM 0.27 puts a "global" buffer below 1 KB on the stack, where LLVM keeps it in registers,
and a larger one (or any "local" one) in a heap workspace, in memory.
"""

from tvm.script import tirx as T

SQUARE = 16
HALF = SQUARE // 2
_ALL = T.ramp(0, 1, SQUARE)


def _swap_indices(h: int) -> tuple[list[int], list[int]]:
    """Shuffle indices of the stage-h exchange: the new lower row and the new upper row."""
    low = [j if j & h == 0 else SQUARE + (j ^ h) for j in range(SQUARE)]
    high = [j | h if j & h == 0 else SQUARE + j for j in range(SQUARE)]
    return low, high


_SWAP = {h: _swap_indices(h) for h in (8, 4, 2, 1)}


def _low(pair, h):
    """The lower row of pair number `pair` at stage h (the rows whose bit h is clear, in order)."""
    return pair // h * 2 * h + pair % h


def _pair(lower, upper, h, which):
    """The lower (which=0) or upper (which=1) row of the stage-h exchange of two rows."""
    return T.Shuffle([lower, upper], _SWAP[h][which])


@T.macro
def transpose_16x16(top, bottom, scratch_top, scratch_bottom, out, row, column):
    """out[row + r, column:column + 16] = block[0:16, r] for r < 16, the block held as `top` (rows 0-7) and `bottom`
    (rows 8-15), both overwritten; `scratch_*` are two more halves: all four (8, 16) "global" buffers."""
    for p in T.unroll(HALF):
        scratch_top[p, _ALL] = _pair(top[p, _ALL], bottom[p, _ALL], 8, 0)
        scratch_bottom[p, _ALL] = _pair(top[p, _ALL], bottom[p, _ALL], 8, 1)
    for p in T.unroll(HALF // 2):
        top[_low(p, 4), _ALL] = _pair(scratch_top[_low(p, 4), _ALL], scratch_top[_low(p, 4) + 4, _ALL], 4, 0)
        top[_low(p, 4) + 4, _ALL] = _pair(scratch_top[_low(p, 4), _ALL], scratch_top[_low(p, 4) + 4, _ALL], 4, 1)
        bottom[_low(p, 4), _ALL] = _pair(scratch_bottom[_low(p, 4), _ALL], scratch_bottom[_low(p, 4) + 4, _ALL], 4, 0)
        bottom[_low(p, 4) + 4, _ALL] = _pair(scratch_bottom[_low(p, 4), _ALL], scratch_bottom[_low(p, 4) + 4, _ALL],
                                             4, 1)
    for p in T.unroll(HALF // 2):
        scratch_top[_low(p, 2), _ALL] = _pair(top[_low(p, 2), _ALL], top[_low(p, 2) + 2, _ALL], 2, 0)
        scratch_top[_low(p, 2) + 2, _ALL] = _pair(top[_low(p, 2), _ALL], top[_low(p, 2) + 2, _ALL], 2, 1)
        scratch_bottom[_low(p, 2), _ALL] = _pair(bottom[_low(p, 2), _ALL], bottom[_low(p, 2) + 2, _ALL], 2, 0)
        scratch_bottom[_low(p, 2) + 2, _ALL] = _pair(bottom[_low(p, 2), _ALL], bottom[_low(p, 2) + 2, _ALL], 2, 1)
    for p in T.unroll(HALF // 2):
        out[row + _low(p, 1), T.ramp(column, 1, SQUARE)] = _pair(
            scratch_top[_low(p, 1), _ALL], scratch_top[_low(p, 1) + 1, _ALL], 1, 0)
        out[row + _low(p, 1) + 1, T.ramp(column, 1, SQUARE)] = _pair(
            scratch_top[_low(p, 1), _ALL], scratch_top[_low(p, 1) + 1, _ALL], 1, 1)
        out[row + HALF + _low(p, 1), T.ramp(column, 1, SQUARE)] = _pair(
            scratch_bottom[_low(p, 1), _ALL], scratch_bottom[_low(p, 1) + 1, _ALL], 1, 0)
        out[row + HALF + _low(p, 1) + 1, T.ramp(column, 1, SQUARE)] = _pair(
            scratch_bottom[_low(p, 1), _ALL], scratch_bottom[_low(p, 1) + 1, _ALL], 1, 1)
