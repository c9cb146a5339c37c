"""Input ranges of the NN-LUT functions, measured on real activations of a torch model.

A `torch.overrides.TorchFunctionMode` sees every call of `F.gelu` (-> `gelu` / `gelu_tanh`), softmax
(`torch.softmax`, `F.softmax`, `Tensor.softmax`; -> `exp` of `x - max(x)`, and `reciprocal` of the row sums)
and `F.layer_norm` (-> `rsqrt` of `var + eps`), whether made by a module (`nn.GELU`, `nn.LayerNorm`) or a
functional call. Ops computed another way (a hand-written erf GELU, `scaled_dot_product_attention`) are not
seen; the latter is logged.

Robustness: one stray activation should not stretch a table over a range it then serves badly, so the range is
the [0.01 %, 99.99 %] percentile interval (`percentile=99.99`), widened by `margin` (10 %) of its width on both
sides for inputs the calibration batches did not show, then clipped to the function's default range: beyond
that the asymptotes are already exact to float32 rounding (and the scaled reciprocal and rsqrt tables have
fixed ranges), so calibration can only narrow a table to where the model's inputs really are, buying
resolution there; the rare inputs beyond it get the asymptotes. Masked attention scores (x - max(x) near
-1e4) therefore cannot stretch the exp table. A table is continuous and its outer segments are pinned to the
asymptotes, so the range still reaches where those are accurate (`LUTFunction.pinned_reach`: GELU +-3.2,
exp -6.5); narrower would put a jump of |gelu(lo)| at the range's end.
Percentiles come from at most `_SAMPLES_PER_CALL` evenly strided values of each call (deterministic).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tvm_lut.batches import split_batch
from tvm_lut.functions import get_function

log = logging.getLogger(__name__)

_SAMPLES_PER_CALL = 1 << 16
_MIN_WIDTH = 0.05  # of the default range; a narrower calibrated range falls back to the default
SOFTMAX_FUNCTIONS = {torch.softmax, F.softmax, torch.Tensor.softmax, torch.special.softmax}


@dataclass(frozen=True)
class ObservedRange:
    """What calibration saw of one function's inputs: the exact extremes and the robust range for its table."""

    name: str
    count: int  # input values seen
    minimum: float
    maximum: float
    low: float  # the robust range (see the module docstring)
    high: float

    @property
    def range(self) -> tuple[float, float]:
        return self.low, self.high


def softmax_dim(x: torch.Tensor, dim: int | None) -> int:
    """The dim a softmax call reduces over (torch's legacy rule when `dim` is None)."""
    if dim is None:
        return 0 if x.dim() in (0, 1, 3) else 1
    return dim


def normalized_dims(normalized_shape) -> tuple[int, ...]:
    """The trailing dims a layer_norm call normalizes over."""
    return tuple(range(-len(tuple(normalized_shape)), 0))


class _Recorder(TorchFunctionMode):
    """Records the inputs each LUT function would see; the calls themselves run unchanged."""

    def __init__(self):
        super().__init__()
        self.samples: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.counts: dict[str, int] = defaultdict(int)
        self.extremes: dict[str, list[float]] = {}
        self.unseen: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch.no_grad():
            if func is F.gelu:
                approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
                self._record("gelu_tanh" if approximate == "tanh" else "gelu", args[0])
            elif func in SOFTMAX_FUNCTIONS:
                self._softmax(args[0], kwargs.get("dim", args[1] if len(args) > 1 else None))
            elif func is F.layer_norm:
                x, shape = args[0], kwargs.get("normalized_shape", args[1] if len(args) > 1 else None)
                eps = kwargs.get("eps", args[4] if len(args) > 4 else 1e-5)
                self._record("rsqrt", x.float().var(normalized_dims(shape), unbiased=False) + eps)
            elif func is F.scaled_dot_product_attention:
                self.unseen.add("scaled_dot_product_attention (its softmax)")
        return func(*args, **kwargs)

    def _softmax(self, x: torch.Tensor, dim):
        dim = softmax_dim(x, dim)
        shifted = x.float() - x.float().amax(dim, keepdim=True)
        self._record("exp", shifted)
        self._record("reciprocal", torch.exp(shifted).sum(dim))

    def _record(self, name: str, x: torch.Tensor):
        values = x.detach().float().reshape(-1)
        values = values[torch.isfinite(values)]  # -inf scores are masks: exp gives exactly 0 there
        if values.numel() == 0:
            return
        self.counts[name] += values.numel()
        low, high = float(values.min()), float(values.max())
        seen = self.extremes.get(name, [low, high])
        self.extremes[name] = [min(seen[0], low), max(seen[1], high)]
        stride = max(1, math.ceil(values.numel() / _SAMPLES_PER_CALL))
        self.samples[name].append(values[::stride].cpu())


def observe_ranges(model: torch.nn.Module, calib_batches, percentile: float = 99.99, margin: float = 0.1,
                   progress: bool = True) -> dict[str, ObservedRange]:
    """Run `model` on every batch (a tensor, or `(inputs, labels)` with inputs a tensor or tuple) in eval
    mode without gradients and return what each LUT function saw, keyed by function name."""
    from tvm_lut.progress import progress_bar

    if not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    recorder, batches = _Recorder(), 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            for batch in progress_bar(calib_batches, desc="calibrating ranges", unit="batch", progress=progress,
                                      leave=False):
                model(*split_batch(batch)[0])
                batches += 1
    finally:
        model.train(was_training)
    if batches == 0:
        raise ValueError("no calibration batches: ranges come from real activations")
    for op in sorted(recorder.unseen):
        log.warning("calibration cannot see inside %s; its inputs are not in the ranges", op)

    observed = {}
    for name, chunks in recorder.samples.items():
        values = torch.cat(chunks).double()
        tail = (100 - percentile) / 100
        low, high = (float(torch.quantile(values, q)) for q in (tail, 1 - tail))
        width = high - low
        observed[name] = _robust_range(name, low - margin * width, high + margin * width, recorder)
    return observed


def _robust_range(name: str, low: float, high: float, recorder: _Recorder) -> ObservedRange:
    """Clip to the default range, then reach as far as pinned asymptotes need (module docstring)."""
    spec = get_function(name)
    default_low, default_high = spec.default_range
    low, high = max(low, default_low), min(high, default_high)
    if spec.scaling != "none" or high - low < _MIN_WIDTH * (default_high - default_low):
        low, high = default_low, default_high  # scaled tables have fixed ranges; no inputs inside: default
    reach_low, reach_high = spec.pinned_reach()
    low = low if reach_low is None else min(low, reach_low)
    high = high if reach_high is None else max(high, reach_high)
    minimum, maximum = recorder.extremes[name]
    return ObservedRange(name, recorder.counts[name], minimum, maximum, low, high)


def calibrate_ranges(model: torch.nn.Module, calib_batches, percentile: float = 99.99, margin: float = 0.1,
                     progress: bool = True) -> dict[str, tuple[float, float]]:
    """The robust input range `(lo, hi)` of every LUT function `model` calls on `calib_batches`."""
    return {name: seen.range for name, seen in observe_ranges(model, calib_batches, percentile, margin,
                                                                progress).items()}
