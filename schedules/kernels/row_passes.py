"""What the hand-scheduled row kernels (softmax and LayerNorm along contiguous trailing axes) share: rows in
parallel, `ROWS_AT_ONCE` at a time with their passes interleaved (one row's chain of reductions and its table lookup
is latency-bound), each row's partial maxima or sums kept in `LANES` lanes and folded once (`fold`).

The schedule rules' reduction combines a row's lanes with gathers and sequential scalar steps (benchmarks.nonlinear:
softmax 8x12x64x64 at 1.15x the exact op through the rule, 1.38x here).
"""

from tvm.script import tirx as T

# Relax's op_pattern kOpaque: fusion leaves these kernels alone (its pattern analysis reads only block-structured
# TIR, and they are complete row kernels already).
OPAQUE = 8
LANES = 16  # partial results per row: one AVX-512 register, two AVX2 ones, four NEON ones
ROWS_AT_ONCE = 8


def rows_at_once(rows: int) -> int:
    """The largest of ROWS_AT_ONCE, 2, 1 that divides `rows`."""
    return next(g for g in (ROWS_AT_ONCE, 2, 1) if rows % g == 0)


def fold(combine, vector, lanes: int = LANES):
    """`vector` (float32 x lanes, a power of two) reduced by `combine` in halves: log2(lanes) shuffles and vector
    ops instead of lanes - 1 dependent scalar ones (a sum so rounds pairwise)."""
    while lanes > 1:
        lanes //= 2
        vector = combine(T.Shuffle([vector], list(range(lanes))), T.Shuffle([vector], list(range(lanes, 2 * lanes))))
    return T.Shuffle([vector], [0])
