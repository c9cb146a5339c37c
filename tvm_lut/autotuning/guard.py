"""The whole-model guard: a plan is kept only as far as its PQ layers make the compiled model measurably faster.

Per-layer latencies are measured on each layer compiled alone; in the whole graph the exact layer fuses its bias
and activation into the matmul or conv while a PQ layer runs encode, lookup and a separate elementwise function,
and a gain of a few percent is within the noise of two separate measurements (the Fashion-MNIST CNN's PQ fc1 saved
about 2 us of a 115 us model). So before the result is written, the chosen plan, the exact model, and the plan
with each group of its PQ layers restored to exact are compiled as whole models and timed taking turns in one
process. A group (the PQ layers of one shape and choice: they pay or not alike) whose restoring does not slow the
model by at least `MIN_GAIN` is restored, the most useless first, and the rest measured again; a plan left no
faster than the exact model by `MIN_GAIN` keeps nothing. The two whole-model medians go into the plan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

MIN_GAIN = 0.01  # a group of PQ layers stays only if restoring it slows the whole model by at least 1 %
EXACT = "exact"
PLAN = "plan"


@dataclass(frozen=True)
class GuardOutcome:
    """The PQ layers kept and restored, and the last whole-model medians (us) of the exact model and the plan."""

    kept: tuple[str, ...]
    restored: tuple[str, ...]
    exact_us: float
    plan_us: float


def restore_unpaid(groups: dict[str, list[str]], time_models: Callable[[dict[str, frozenset]], dict[str, float]],
                   min_gain: float = MIN_GAIN) -> GuardOutcome:
    """Restore to exact the groups of PQ layers whose PQ form does not pay for itself in the whole model.

    groups: group label -> the PQ layers in it. time_models(variants): variant label -> the set of layers that are
    PQ in it -> microseconds per call of each variant, timed together (`EXACT` has none, `PLAN` all kept ones).
    """
    kept = {label: list(layers) for label, layers in groups.items() if layers}
    restored: list[str] = []
    while True:
        current = frozenset(name for layers in kept.values() for name in layers)
        variants = {EXACT: frozenset(), PLAN: current}
        if len(kept) > 1:
            variants.update({label: current - set(layers) for label, layers in kept.items()})
        times = time_models(variants)
        exact_us, plan_us = times[EXACT], times[PLAN]
        if not kept:
            return GuardOutcome((), tuple(restored), exact_us, plan_us)
        # what restoring each group alone would cost (> 1: the group pays); one group's "without" is the exact model
        costs = {label: times[label if len(kept) > 1 else EXACT] / plan_us for label in kept}
        unpaid = [label for label, cost in costs.items() if cost < 1 + min_gain]
        if not unpaid and exact_us < plan_us * (1 + min_gain):  # each group pays, the whole plan does not
            unpaid = list(kept)
        if not unpaid:
            return GuardOutcome(tuple(sorted(current)), tuple(restored), exact_us, plan_us)
        worst = min(unpaid, key=costs.get)
        log.info("whole-model guard: restoring %s to exact (the model without it runs %.3fx the plan's time)",
                 worst, costs[worst])
        restored += kept.pop(worst)
