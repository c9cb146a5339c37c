"""NN-LUT training: fit a one-hidden-layer ReLU net to a function and convert it exactly into a `PWLTable`.

The net is `y = sum_i m_i * relu(n_i * x + b_i) + c` with `entries - 1` hidden units. It converts exactly:
breakpoints `d_i = -b_i / n_i`; on each segment the slope is the sum of `m_i * n_i` and the intercept
`c + sum m_i * b_i` over the neurons active there (n > 0: right of d_i; n < 0: left of d_i).

Training reparameterizes the same net by its knots and knot values (`n_i = 1`, `b_i = -t_i`, `m_i` = the slope
change at `t_i`), which makes the constraints hold exactly instead of approximately: the outer knots sit at `lo`
and `hi`, the outer segments are the function's asymptotes, and the knots stay ordered. It starts from the linear
interpolation on knots that equidistribute sqrt(|f''| * weight) (the asymptotically optimal placement), then
minimizes a p-norm of the weighted error with p rising towards the max (so the result is nearly minimax),
with Adam and then LBFGS. Nothing is random, and the fit runs in float64 on one thread, so it repeats bit for
bit on one platform. The minimax landscape is flat (many knot placements are within a few percent of the best),
so another platform's last-bit rounding can end on a different, equally accurate table.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import numpy as np
import torch

from tvm_lut.functions import LUTFunction, get_function
from tvm_lut.pwl import PWLTable

_DTYPE = torch.float64


class PWLNet(torch.nn.Module):
    """`y = sum_i m_i * relu(n_i * x + b_i) + c` (float64); `to_table` is its exact piecewise-linear form."""

    def __init__(self, n, b, m, c):
        super().__init__()
        for name, value in (("n", n), ("b", b), ("m", m), ("c", c)):
            self.register_buffer(name, torch.as_tensor(value, dtype=_DTYPE).detach().clone())
        if not (self.n.ndim == 1 and self.n.shape == self.b.shape == self.m.shape and self.c.ndim == 0):
            raise ValueError(f"n, b, m must be 1-D of one length and c a scalar, got shapes "
                             f"{tuple(self.n.shape)}, {tuple(self.b.shape)}, {tuple(self.m.shape)}, {tuple(self.c.shape)}")
        if not bool((self.n != 0).all()):
            raise ValueError("every hidden unit needs n_i != 0 (a unit with n_i = 0 has no breakpoint)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _relu_net(x, self.n, self.b, self.m, self.c)

    def to_table(self, name: str, scaling: str = "none") -> PWLTable:
        """The table computing this net; breakpoints in float32 must stay distinct (else ValueError)."""
        n, b, m, c = (t.numpy() for t in (self.n, self.b, self.m, self.c))
        knots = -b / n
        order = np.argsort(knots, kind="stable")
        breakpoints = knots[order]
        # Segment s lies between breakpoints[s-1] and breakpoints[s]; unit i (in sorted position p) is active on
        # segment s when n > 0 and p < s (right of its breakpoint) or n < 0 and p >= s (left of it).
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        segments = np.arange(len(knots) + 1)[:, None]
        active = np.where(n > 0, position < segments, position >= segments)
        slopes = active @ (m * n)
        intercepts = c + active @ (m * b)
        if np.any(np.diff(breakpoints.astype(np.float32)) <= 0):
            raise ValueError(f"{name}: two breakpoints coincide in float32; the net cannot be stored as a table")
        return PWLTable(name, breakpoints, slopes, intercepts, scaling)


def _relu_net(x, n, b, m, c):
    return torch.relu(x[..., None] * n + b) @ m + c


def fit_pwl_net(fn: str | LUTFunction | Callable, entries: int = 16, input_range=None, *, steps: int = 400,
                samples: int = 2048) -> PWLNet:
    """Train the NN-LUT ReLU net for `fn` (a registered name, a `LUTFunction`, or a callable on float64 torch
    tensors, which then needs `input_range` and is held constant beyond it). See the module docstring."""
    spec = _spec(fn, input_range)
    lo, hi = (float(v) for v in (input_range if input_range is not None else spec.default_range))
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{spec.name}: input_range must be finite with lo < hi, got {(lo, hi)}")
    if int(entries) != entries or entries < 4:
        raise ValueError(f"{spec.name}: entries must be an integer >= 4 (two asymptotes and two segments inside "
                         f"the range), got {entries}")
    with _one_thread():
        return _Fit(spec, int(entries), lo, hi, samples).train(steps)


def fit_pwl(fn: str | LUTFunction | Callable, entries: int = 16, input_range=None, **options) -> PWLTable:
    """A piecewise-linear table of `entries` segments for `fn` over `input_range` (default: the function's own
    range): NN-LUT training, then the exact conversion. `options` go to `fit_pwl_net`."""
    spec = _spec(fn, input_range)
    return fit_pwl_net(spec, entries, input_range, **options).to_table(spec.name, spec.scaling)


def _spec(fn, input_range) -> LUTFunction:
    if callable(fn) and not isinstance(fn, LUTFunction):
        if input_range is None:
            raise ValueError("fitting a callable needs input_range=(lo, hi)")
        return LUTFunction(getattr(fn, "__name__", "custom"), fn, tuple(input_range), "value", "value",
                           "absolute", threshold=math.inf)
    return get_function(fn)


@contextlib.contextmanager
def _one_thread():
    """Float reductions then run in one order, so fits repeat bit for bit (the fit uses no randomness)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Fit:
    """The knot/value parameterization of the net and its training loop."""

    def __init__(self, spec: LUTFunction, entries: int, lo: float, hi: float, samples: int):
        self.spec, self.lo, self.hi = spec, lo, hi
        self.left = spec.asymptote_line("left", lo)
        self.right = spec.asymptote_line("right", hi)
        if self.left is not None and self.left[0] != 0:
            raise ValueError(f"{spec.name}: a left asymptote must be constant (all hidden units face right)")
        self.x = torch.linspace(lo, hi, samples, dtype=_DTYPE)
        self.y = spec.exact(self.x)
        if not bool(torch.isfinite(self.y).all()):
            raise ValueError(f"{spec.name} is not finite everywhere on [{lo}, {hi}]")
        self.weight = 1 / self.y.abs().clamp_min(1e-30) if spec.measure == "relative" else torch.ones_like(self.y)
        knots = self._initial_knots(entries - 1)
        gaps = torch.diff(knots) / (hi - lo)
        self.log_gaps = torch.nn.Parameter(gaps.log())
        self.offsets = torch.nn.Parameter(torch.zeros(entries - 1, dtype=_DTYPE))  # knot values minus f(knot)

    def _initial_knots(self, count: int) -> torch.Tensor:
        """Knots equidistributing sqrt(|f''| * weight), plus a floor so flat stretches still get some."""
        fine = torch.linspace(self.lo, self.hi, 8193, dtype=_DTYPE)
        h = fine[1] - fine[0]
        values = self.spec.exact(fine)
        curvature = torch.zeros_like(fine)
        curvature[1:-1] = (values[2:] - 2 * values[1:-1] + values[:-2]).abs() / h ** 2
        if self.spec.measure == "relative":
            curvature = curvature / values.abs().clamp_min(1e-30)
        density = curvature.sqrt()
        density = density + 0.05 * density.max().clamp_min(1e-12)
        cumulative = torch.cat([torch.zeros(1, dtype=_DTYPE), torch.cumsum((density[1:] + density[:-1]) / 2, 0)])
        targets = torch.linspace(0, float(cumulative[-1]), count, dtype=_DTYPE)
        knots = torch.from_numpy(np.interp(targets.numpy(), cumulative.numpy(), fine.numpy()))
        knots[0], knots[-1] = self.lo, self.hi
        return knots

    def net_parameters(self):
        """(n, b, m, c) of the net, differentiable in the knot/value parameters."""
        gaps = torch.softmax(self.log_gaps, 0) * (self.hi - self.lo)
        knots = torch.cat([torch.tensor([self.lo], dtype=_DTYPE), self.lo + torch.cumsum(gaps, 0)])
        knots = torch.cat([knots[:-1], torch.tensor([self.hi], dtype=_DTYPE)])  # pin hi exactly
        values = self.spec.exact(knots) + self.offsets
        if self.left is not None:
            values = torch.cat([torch.tensor([self.left[1]], dtype=_DTYPE), values[1:]])
        if self.right is not None:
            values = torch.cat([values[:-1], torch.tensor([self.right[0] * self.hi + self.right[1]], dtype=_DTYPE)])
        inner = torch.diff(values) / torch.diff(knots)
        right_slope = torch.tensor([self.right[0] if self.right is not None else 0.0], dtype=_DTYPE)
        slopes = torch.cat([torch.zeros(1, dtype=_DTYPE), inner, right_slope])  # left asymptote is constant
        m = torch.diff(slopes)
        return torch.ones_like(knots), -knots, m, values[0]

    def loss(self, power: float) -> torch.Tensor:
        """The p-norm of the weighted error (normalized by its max so that high powers do not underflow)."""
        error = (_relu_net(self.x, *self.net_parameters()) - self.y) * self.weight
        scale = error.abs().max().detach().clamp_min(1e-300)
        if power == math.inf:
            return error.abs().max()
        return scale * ((error.abs() / scale) ** power).mean() ** (1 / power)

    def train(self, steps: int) -> PWLNet:
        params = [self.log_gaps, self.offsets]
        with torch.no_grad():  # value steps on the scale of the initial error, knot steps of ~1% of a gap
            value_lr = 0.05 * float(self.loss(math.inf))
        adam = torch.optim.Adam([{"params": [self.log_gaps], "lr": 1e-2}, {"params": [self.offsets], "lr": value_lr}])
        for step in range(steps):
            power = 2 + 30 * step / max(steps - 1, 1)
            adam.zero_grad()
            self.loss(power).backward()
            adam.step()
        lbfgs = torch.optim.LBFGS(params, lr=1, max_iter=150, tolerance_grad=1e-14, tolerance_change=1e-16,
                                  history_size=20, line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad()
            loss = self.loss(64.0)
            loss.backward()
            return loss

        lbfgs.step(closure)
        with torch.no_grad():
            return PWLNet(*self.net_parameters())
