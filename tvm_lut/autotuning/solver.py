"""The plan solver: one option per layer, least summed latency, predicted drop within the budget.

A multiple-choice knapsack (HAWQ-V3 solves the same problem for bit widths with an integer program). Solved
exactly by dynamic programming over the drop axis cut into `resolution` steps of `budget / resolution`; each
option's drop is rounded *up* to whole steps, so a returned plan never exceeds the budget in the unrounded drops,
and it is optimal among plans whose rounded drops fit (exactly optimal when the drops are multiples of a step).
Cost: layers x options x resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Option:
    """One choice of one layer: its latency (any unit, summed over layers) and its predicted drop (>= 0)."""

    latency: float
    drop: float

    def __post_init__(self):
        if not math.isfinite(self.latency) or not math.isfinite(self.drop) or self.drop < 0:
            raise ValueError(f"an option needs a finite latency and a finite drop >= 0, got {self}")


def solve(options: list[list[Option]], budget: float, resolution: int = 400) -> list[int]:
    """The index of the chosen option of every layer. Raises ValueError when no plan fits the budget (give every
    layer an option of drop 0, the exact layer, and one always does)."""
    if budget < 0 or not math.isfinite(budget):
        raise ValueError(f"the budget must be finite and >= 0, got {budget}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    if any(not layer for layer in options):
        raise ValueError("every layer needs at least one option")
    step = budget / resolution if budget > 0 else 1.0
    best = np.full(resolution + 1, np.inf)  # best[j]: least latency with rounded drop exactly j steps
    best[0] = 0.0
    picks = []
    for layer in options:
        new = np.full_like(best, np.inf)
        pick = np.full(len(best), -1)
        for index, option in enumerate(layer):
            cost = 0 if option.drop == 0 else (math.ceil(option.drop / step - 1e-9) if budget > 0 else resolution + 1)
            if cost > resolution:
                continue
            shifted = np.full_like(best, np.inf)
            shifted[cost:] = best[:len(best) - cost] + option.latency
            better = shifted < new
            new[better], pick[better] = shifted[better], index
        best = new
        picks.append(pick)
    if not np.isfinite(best).any():
        raise ValueError(f"no plan fits the budget {budget}: some layer has no option within it")
    j = int(np.argmin(best))
    chosen = []
    for layer, pick in zip(reversed(options), reversed(picks)):
        index = int(pick[j])
        chosen.append(index)
        option = layer[index]
        j -= 0 if option.drop == 0 else math.ceil(option.drop / step - 1e-9)
    return chosen[::-1]
