"""`ApplyCPUSchedules`: schedule every PrimFunc of a module with the CPU rules, and say which ones it could not.

Runs after legalization and fusion (every Relax op is a PrimFunc by then) and before TIR lowering. Functions that
carry `tirx.is_scheduled` (hand-scheduled kernels, tuned functions) keep their schedule; only their float32 exp
and erf become vector arithmetic and their table lookups get the target's registers, as in every rule
(`rules.common.for_target`). A function no rule fits
stays naive; it is named in a warning and in `report.unscheduled`, never dropped silently.
"""

import dataclasses
import logging
import warnings

import tvm
from tvm import tirx
from tvm.target import Target

from .rules import default_rules
from .rules.common import for_target

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ScheduleReport:
    """What one run of `ApplyCPUSchedules` did: function name -> rule name, and the names no rule fitted."""

    scheduled: dict[str, str] = dataclasses.field(default_factory=dict)
    already_scheduled: list[str] = dataclasses.field(default_factory=list)
    unscheduled: list[str] = dataclasses.field(default_factory=list)


class UnscheduledWarning(UserWarning):
    """Some PrimFuncs kept their naive (single-threaded, scalar) loops."""


def is_scheduled(func: tirx.PrimFunc) -> bool:
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))


@tvm.transform.module_pass(opt_level=0, name="ApplyCPUSchedules")
class ApplyCPUSchedules:
    """Schedule every not-yet-scheduled PrimFunc with the first rule that fits; fill `self.report`.

    `target` defaults to the function's own `target` attribute, then to the current target scope.
    """

    def __init__(self, rules=None, target: Target | None = None):
        self.rules = tuple(default_rules() if rules is None else rules)
        self.target = target
        self.report = ScheduleReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report = ScheduleReport()
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            name = gvar.name_hint
            target = self._target_of(func)
            if is_scheduled(func):
                self.report.already_scheduled.append(name)
                # A tuning record replays its schedule on the function as legalized (libm exp and erf, unbound
                # table lookups included).
                rewritten = for_target(func, target)
                if not rewritten.same_as(func):
                    updates[gvar] = rewritten
                continue
            for rule in self.rules:
                sch = rule.apply(func, target, False)
                if sch is not None:
                    updates[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    self.report.scheduled[name] = type(rule).__name__
                    break
            else:
                self.report.unscheduled.append(name)
        for gvar, func in updates.items():
            mod[gvar] = func
        if self.report.unscheduled:
            names = ", ".join(self.report.unscheduled)
            warnings.warn(f"no CPU schedule rule fits, left naive: {names}", UnscheduledWarning, stacklevel=2)
        return mod

    def _target_of(self, func: tirx.PrimFunc) -> Target:
        if self.target is not None:
            return self.target
        target = func.attrs.get("target") if func.attrs is not None else None
        target = target if target is not None else Target.current(allow_none=True)
        if target is None:
            raise ValueError("ApplyCPUSchedules needs a target: pass target=..., or run it inside `with target:`")
        return target
