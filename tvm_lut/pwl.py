"""`PWLTable`: the NN-LUT piecewise-linear table and its NumPy evaluation (the reference every kernel matches).

A table of S segments has S-1 ascending breakpoints; segment `i = count(breakpoints <= x)` evaluates
`slopes[i] * x + intercepts[i]` in float32. The fitted range is `[breakpoints[0], breakpoints[-1]]`; the two
outer segments are the function's asymptotes. Reciprocal and rsqrt tables cover one binade (`[1, 2]`) or two
(`[1, 4]`) and reach every magnitude through exact power-of-two input scaling (see `scaling`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterator

import numpy as np

from tvm_lut.bundle import BundleError, register_kind

SCALINGS = ("none", "pow2", "pow4")
_SCALED_RANGE = {"pow2": (1.0, 2.0), "pow4": (1.0, 4.0)}


class InvalidTable(ValueError):
    """A table whose arrays break the contract; `field` names the bad one."""

    def __init__(self, name, field: str, message: str):
        super().__init__(f"PWLTable {name!r}: {field}: {message}")
        self.field, self.message = field, message


@register_kind
@dataclasses.dataclass(frozen=True, eq=False)
class PWLTable:
    """A piecewise-linear function table (see the module docstring for the evaluation rule).

    `scaling`: "none"; "pow2" (x = m * 2^e, m in [1, 2): 1/x = T(m) * 2^-e, sign kept, 0 -> +-inf,
    +-inf -> +-0); "pow4" (x = m * 4^k, m in [1, 4): rsqrt(x) = T(m) * 2^-k, x < 0 -> NaN, +-0 -> inf,
    inf -> 0). NaN stays NaN; an infinite x takes the limit of its outer segment's line (0 * inf reads as the
    intercept). Subnormal inputs are scaled exactly like normal ones.
    """

    name: str
    breakpoints: np.ndarray
    slopes: np.ndarray
    intercepts: np.ndarray
    scaling: str = "none"
    kind: ClassVar[str] = "pwl"

    def __post_init__(self):
        for field in ("breakpoints", "slopes", "intercepts"):
            array = np.array(getattr(self, field), dtype=np.float32)  # a private copy, frozen
            array.setflags(write=False)
            object.__setattr__(self, field, array)
        for field, message in _problems(self):
            raise InvalidTable(self.name, field, message)

    @property
    def entries(self) -> int:
        """Number of segments S (the table size the kernels store)."""
        return int(self.slopes.shape[0])

    @property
    def input_range(self) -> tuple[float, float]:
        """The fitted range `(lo, hi)`: the first and last breakpoints."""
        return float(self.breakpoints[0]), float(self.breakpoints[-1])

    def __call__(self, x) -> np.ndarray:
        """Evaluate on `x` (any shape, computed in float32) exactly as the kernels must."""
        x = np.asarray(x, dtype=np.float32)
        with np.errstate(all="ignore"):
            if self.scaling == "none":
                return self._segments(x)
            if self.scaling == "pow2":
                return self._reciprocal(x)
            return self._rsqrt(x)

    def _segments(self, x: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.breakpoints, x, side="right")  # count(breakpoints <= x); NaN -> last
        slope, intercept = self.slopes[index], self.intercepts[index]
        y = slope * x + intercept
        return np.where(np.isinf(x) & (slope == 0), intercept, y).astype(np.float32)

    def _reciprocal(self, x: np.ndarray) -> np.ndarray:
        fraction, exponent = np.frexp(np.abs(x))  # |x| = fraction * 2^exponent, fraction in [0.5, 1)
        y = np.ldexp(self._segments(2 * fraction), 1 - exponent)
        y = np.copysign(y, x)
        y = np.where(x == 0, np.copysign(np.float32(np.inf), x), y)
        y = np.where(np.isinf(x), np.copysign(np.float32(0), x), y)
        return np.where(np.isnan(x), x, y).astype(np.float32)

    def _rsqrt(self, x: np.ndarray) -> np.ndarray:
        fraction, exponent = np.frexp(x)
        e = exponent - 1  # x = (2 * fraction) * 2^e with 2 * fraction in [1, 2)
        half = np.floor_divide(e, 2)  # x = m * 4^half with m in [1, 4)
        mantissa = np.ldexp(2 * fraction, e - 2 * half)
        y = np.ldexp(self._segments(mantissa), -half)
        y = np.where(x == 0, np.float32(np.inf), y)
        y = np.where(x == np.inf, np.float32(0), y)
        return np.where((x < 0) | np.isnan(x), np.float32(np.nan), y).astype(np.float32)

    def to_record(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"name": self.name, "scaling": self.scaling, "input_range": list(self.input_range)}
        return meta, {"breakpoints": self.breakpoints, "slopes": self.slopes, "intercepts": self.intercepts}

    @classmethod
    def from_record(cls, name: str, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> "PWLTable":
        for field in ("breakpoints", "slopes", "intercepts"):
            if tensors[field].dtype != np.float32:
                raise BundleError(f"expected float32, got {tensors[field].dtype}", entry=name, field=field)
        try:
            table = cls(meta.get("name"), tensors["breakpoints"], tensors["slopes"], tensors["intercepts"],
                        meta.get("scaling"))
        except KeyError as err:
            raise BundleError("tensor missing", entry=name, field=err.args[0]) from None
        except InvalidTable as err:
            raise BundleError(err.message, entry=name, field=err.field) from None
        if list(table.input_range) != meta.get("input_range"):
            raise BundleError(f"manifest says {meta.get('input_range')}, breakpoints span {list(table.input_range)}",
                              entry=name, field="input_range")
        return table

    def __eq__(self, other) -> bool:
        if not isinstance(other, PWLTable):
            return NotImplemented
        return (self.name, self.scaling) == (other.name, other.scaling) and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in ("breakpoints", "slopes", "intercepts"))

    __hash__ = None

    def __repr__(self) -> str:
        lo, hi = self.input_range
        return f"PWLTable({self.name!r}, entries={self.entries}, range=[{lo:g}, {hi:g}], scaling={self.scaling!r})"


def _problems(table: PWLTable) -> Iterator[tuple[str, str]]:
    """(field, message) for everything wrong with a table; shared by the constructor and the bundle loader."""
    if not isinstance(table.name, str) or not table.name:
        yield "name", f"a non-empty string is required, got {table.name!r}"
    if table.scaling not in SCALINGS:
        yield "scaling", f"must be one of {SCALINGS}, got {table.scaling!r}"
    breakpoints, slopes, intercepts = table.breakpoints, table.slopes, table.intercepts
    if slopes.ndim != 1 or slopes.shape[0] < 2:
        yield "slopes", f"a 1-D array of at least 2 segments is required, got shape {slopes.shape}"
        return
    if intercepts.shape != slopes.shape:
        yield "intercepts", f"shape {intercepts.shape} does not match slopes {slopes.shape}"
    if breakpoints.shape != (slopes.shape[0] - 1,):
        yield "breakpoints", f"shape {breakpoints.shape} must be (S-1,) = ({slopes.shape[0] - 1},)"
        return
    for field, array in (("breakpoints", breakpoints), ("slopes", slopes), ("intercepts", intercepts)):
        if not np.all(np.isfinite(array)):
            yield field, "holds NaN or infinite values"
    if np.any(np.diff(breakpoints) <= 0):
        yield "breakpoints", "must be strictly ascending"
    scaled = _SCALED_RANGE.get(table.scaling)
    if scaled is not None and (breakpoints[0] > scaled[0] or breakpoints[-1] < scaled[1]):
        yield "breakpoints", f"a {table.scaling!r} table must cover [{scaled[0]:g}, {scaled[1]:g}]"
