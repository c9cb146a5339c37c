"""The functions NN-LUT approximates, with what a table of each must know and must achieve.

Each `LUTFunction` gives the exact function (float64 torch, the fitting target and the error reference); the
default range a generic table covers (beyond it the asymptotes are exact to float32 rounding or, for scaled
functions, never evaluated, so calibrated ranges only ever narrow it); what the table does outside its range
(the asymptotes); the error that matters downstream; and the quality a 16-entry table must reach over the
default range (asserted in tests):

- `gelu`, `gelu_tanh`: absolute error (the residual stream adds it); left asymptote 0, right asymptote x.
- `exp`: on (-inf, 0], for softmax after max-subtraction. Absolute error: every probability is e_i / sum(e)
  with sum(e) >= 1, so an absolute error in e bounds the absolute error of each probability. Left asymptote 0;
  right of hi (0) the constant exp(hi) = 1, so the row maximum maps to exactly 1.
- `reciprocal` (softmax's 1/sum): relative error; the table covers [1, 2] and "pow2" scaling reaches every
  magnitude, so the error is the same in every binade.
- `rsqrt` (LayerNorm's 1/sqrt(var + eps)): relative error; table on [1, 4], "pow4" scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

# What a table does beyond one end of its range:
#   "zero"     -> y = 0              "identity" -> y = x
#   "value"    -> y = f(end), held   "free"     -> y = the fitted end value, held (only where the
#                                                  outside is never evaluated, as with input scaling)
ASYMPTOTES = ("zero", "identity", "value", "free")
MEASURES = ("absolute", "relative")


@dataclass(frozen=True)
class LUTFunction:
    """One approximable function (see the module docstring)."""

    name: str
    exact: Callable  # float64 torch tensor -> tensor
    default_range: tuple[float, float]
    left: str
    right: str
    measure: str
    threshold: float  # max error (in `measure`) of a 16-entry table over `default_range`
    scaling: str = "none"
    report_relative: bool = False  # also report relative error (where it means something to a user)

    def __post_init__(self):
        if self.left not in ASYMPTOTES or self.right not in ASYMPTOTES:
            raise ValueError(f"{self.name}: asymptotes must be in {ASYMPTOTES}, got {self.left!r}, {self.right!r}")
        if self.measure not in MEASURES:
            raise ValueError(f"{self.name}: measure must be in {MEASURES}, got {self.measure!r}")

    def asymptote_line(self, side: str, end: float) -> tuple[float, float] | None:
        """(slope, intercept) of the line beyond `end` on `side` ("left"/"right"); None for a "free" end."""
        asymptote = self.left if side == "left" else self.right
        if asymptote == "zero":
            return 0.0, 0.0
        if asymptote == "identity":
            return 1.0, 0.0
        if asymptote == "value":
            import torch

            return 0.0, float(self.exact(torch.tensor(float(end), dtype=torch.float64)))
        return None


    def pinned_reach(self) -> tuple[float | None, float | None]:
        """How far a table's range must at least reach on each side (None: no requirement). A table is
        continuous, so where an asymptote is pinned ("zero", "identity") the range must reach the point beyond
        which that asymptote stays within half the error budget: GELU about +-3.2, exp about -6.5."""
        import torch

        lo, hi = self.default_range
        x = torch.linspace(lo, hi, 4097, dtype=torch.float64)
        y = self.exact(x)
        reach: list[float | None] = [None, None]
        for index, (side, asymptote) in enumerate((("left", self.left), ("right", self.right))):
            if asymptote not in ("zero", "identity"):
                continue
            slope, intercept = self.asymptote_line(side, lo if side == "left" else hi)
            close = (y - (slope * x + intercept)).abs() <= 0.5 * self.threshold
            if side == "right":
                close = close.flip(0)
            run = int(torch.cumprod(close.long(), 0).sum())  # close points counted from this end
            reach[index] = float(x[max(run - 1, 0)] if side == "left" else x[len(x) - max(run, 1)])
        return reach[0], reach[1]


def _gelu(x):
    return 0.5 * x * (1.0 + _torch().erf(x / math.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + _torch().tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _torch():
    import torch

    return torch


FUNCTIONS: dict[str, LUTFunction] = {
    f.name: f
    for f in (
        LUTFunction("gelu", _gelu, (-5.0, 5.0), "zero", "identity", "absolute", threshold=4e-3,
),
        LUTFunction("gelu_tanh", _gelu_tanh, (-5.0, 5.0), "zero", "identity", "absolute", threshold=4e-3,
),
        LUTFunction("exp", lambda x: _torch().exp(x), (-16.0, 0.0), "zero", "value", "absolute", threshold=3e-3,
                    report_relative=True),
        LUTFunction("reciprocal", lambda x: 1.0 / x, (1.0, 2.0), "free", "free", "relative", threshold=5e-4,
                    scaling="pow2", report_relative=True),
        LUTFunction("rsqrt", lambda x: _torch().rsqrt(x), (1.0, 4.0), "free", "free", "relative", threshold=8e-4,
                    scaling="pow4", report_relative=True),
    )
}


def get_function(fn: str | LUTFunction) -> LUTFunction:
    """The registered function named `fn` (or `fn` itself); a clear error names the known ones."""
    if isinstance(fn, LUTFunction):
        return fn
    try:
        return FUNCTIONS[fn]
    except (KeyError, TypeError):
        raise ValueError(f"unknown NN-LUT function {fn!r}; known: {sorted(FUNCTIONS)} "
                         "(or pass a callable to fit_pwl)") from None


@dataclass(frozen=True)
class ErrorReport:
    """How far a table is from its function over a range, in float32 evaluation (what the kernels compute)."""

    name: str
    entries: int
    input_range: tuple[float, float]
    measure: str
    max_abs: float
    mean_abs: float
    max_rel: float | None
    mean_rel: float | None
    threshold: float

    @property
    def max_error(self) -> float:
        """The max error in the measure that matters for this function."""
        return self.max_rel if self.measure == "relative" else self.max_abs

    @property
    def passed(self) -> bool:
        return self.max_error <= self.threshold

    def __str__(self) -> str:
        lo, hi = self.input_range
        text = (f"{self.name:<10} {self.entries:>3} entries on [{lo:g}, {hi:g}]: "
                f"max abs {self.max_abs:.2e}, mean abs {self.mean_abs:.2e}")
        if self.max_rel is not None:
            text += f", max rel {self.max_rel:.2e}, mean rel {self.mean_rel:.2e}"
        verdict = "ok" if self.passed else "FAILS"
        return text + f" ({self.measure} threshold {self.threshold:.1e}: {verdict})"


def measure_error(table, fn: str | LUTFunction | None = None, input_range=None, samples: int = 100_001) -> ErrorReport:
    """Error of `table` (a PWLTable) against `fn` (default: the function the table is named after) on
    `samples` evenly spaced points of `input_range` (default: the table's fitted range)."""
    import numpy as np
    import torch

    spec = get_function(table.name if fn is None else fn)
    lo, hi = table.input_range if input_range is None else (float(v) for v in input_range)
    x = np.linspace(lo, hi, samples).astype(np.float32)
    exact = spec.exact(torch.from_numpy(x.astype(np.float64))).numpy()
    error = np.abs(table(x).astype(np.float64) - exact)
    relative = error / np.abs(exact) if spec.report_relative else None
    return ErrorReport(spec.name, table.entries, (lo, hi), spec.measure, float(error.max()), float(error.mean()),
                       None if relative is None else float(relative.max()),
                       None if relative is None else float(relative.mean()), spec.threshold)
