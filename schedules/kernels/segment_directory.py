"""A uniform directory over a table's breakpoints: the segment of x from one lookup and one compare.

A 16-entry table with learned breakpoints needs no log2(S)-round search. Cut the line into N equal cells,
`cell(x) = clamp(floor(x * scale + offset), 0, N - 1)`, and store per cell the segment of the lowest x that can land
in it (`first[c]`); when no cell holds two breakpoints, the segment of x is `first[c] + (x >= breakpoints[first[c]])`,
exactly `count(breakpoints <= x)`: the same segment as the search, so the same output bit for bit.

"Can land in": `x * scale + offset` is rounded (once with an FMA, twice without), so each cell is widened by a
bound on that rounding before it is checked, and the plan holds whichever form the compiler emits. Outside the
cells' span x clamps into the first or the last cell (NaN into the first: TVM's float max is a compare + select, so
max(NaN, 0) is 0); `first[0]` is 0, the segment of -inf.

N is the smallest directory size a register lookup can serve (`SIZES`: 16, 32, 64, 128 entries) for which some
cell width and phase keep every cell to one breakpoint; a table whose breakpoints crowd closer than its span / 128
gets no directory (`plan` returns None) and keeps the search.
"""

import dataclasses
import functools

import numpy as np

SIZES = (16, 32, 64, 128)  # one or two registers of int32 (16, 32) or bytes (64, 128)
_PHASES = 64  # cell phases tried per size
_WIDTHS = (1.0, 1.0 + 2**-6, 1.0 + 2**-4)  # cell widths tried, in units of span / (size - 1)


@dataclasses.dataclass(frozen=True)
class Directory:
    """`cell(x) = clamp(floor(x * scale + offset), 0, cells - 1)`; `first` padded with zeros to a size in SIZES."""

    scale: float  # float32 values
    offset: float
    cells: int
    first: tuple[int, ...]

    def segment(self, breakpoints: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The segment the kernel computes for float32 `x` (the multiply and add rounded apart): a NumPy model."""
        x = np.asarray(x, dtype=np.float32)
        with np.errstate(all="ignore"):
            f = x * np.float32(self.scale) + np.float32(self.offset)
        f = np.where(f > 0, f, np.float32(0))
        cell = np.where(f < self.cells - 1, f, np.float32(self.cells - 1)).astype(np.int32)
        first = np.asarray(self.first, dtype=np.int32)[cell]
        probes = np.append(np.asarray(breakpoints, np.float32), np.float32(np.nan))
        return first + (x >= probes[first])


def plan(breakpoints, max_size: int) -> Directory | None:
    """The smallest directory of at most `max_size` entries in which no cell holds two breakpoints, else None."""
    key = tuple(float(b) for b in np.asarray(breakpoints, dtype=np.float32).reshape(-1))
    return _plan(key, max_size)


@functools.lru_cache(maxsize=256)
def _plan(breakpoints: tuple[float, ...], max_size: int) -> Directory | None:
    b = np.asarray(breakpoints, dtype=np.float64)
    if b.size < 2:
        return None
    span = b[-1] - b[0]
    for size in (s for s in SIZES if s <= max_size):
        for width in (span / (size - 1) * w for w in _WIDTHS):
            for phase in np.arange(_PHASES) / _PHASES:
                directory = _try(b, size, width, b[0] - phase * width)
                if directory is not None:
                    return directory
    return None


def _try(b: np.ndarray, size: int, width: float, start: float) -> Directory | None:
    """The directory of cells `[start + c * width, start + (c + 1) * width)`, if each holds at most one breakpoint."""
    cells = int(np.floor((b[-1] - start) / width)) + 1
    if cells > size:
        return None
    scale = np.float32(1 / width)
    offset = np.float32(-start / width)
    # bound on |rounded - exact| of x * scale + offset, in cells, for any x that does not clamp
    reach = (abs(start) + (cells + 1) * width) * float(scale)
    slack = 2.0**-20 * (reach + abs(float(offset)) + 1)
    c = np.arange(cells, dtype=np.float64)
    lower = np.where(c == 0, -np.inf, (c - slack - float(offset)) / float(scale))
    upper = np.where(c == cells - 1, np.inf, (c + 1 + slack - float(offset)) / float(scale))
    first = np.searchsorted(b, lower, side="right")
    last = np.searchsorted(b, upper, side="right")
    if np.any(last > first + 1):
        return None
    return Directory(float(scale), float(offset), cells, tuple(int(v) for v in first) + (0,) * (size - cells))
