"""`ApplyCPUSchedules`: schedule every PrimFunc of a module with the CPU rules, and say which ones it could not.

Runs after legalization and fusion (every Relax op is a PrimFunc by then) and before TIR lowering. Functions that
carry `tirx.is_scheduled` (tuned functions, and hand-scheduled kernels tagged `KERNEL_ATTR`) keep their schedule; the
report tells the two apart (`already_scheduled`, `kernels`). Only their float32 exp
and erf become vector arithmetic and their table lookups get the target's registers, as in every rule
(`rules.common.for_target`). A function no rule fits stays naive; it is named in a warning and in the report's
`unscheduled`, never dropped silently.

A rule declines what it cannot serve by returning None; one that raises instead (any exception) does not fail the
build: the next rule is tried, the failure is named (function, rule, error) in a warning and in the report's
`rule_failures`.

The pass keeps no state: the report of a run travels with the module it returns, as the module attribute
`REPORT_ATTR`; `ScheduleReport.of(mod)` reads it.
"""

import dataclasses
import json
import logging
import warnings

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.target import Target

from .rules import default_rules
from .rules.common import for_target, serial_unless_parallel_pays

logger = logging.getLogger(__name__)

REPORT_ATTR = "tvm_lut.schedule_report"
KERNEL_ATTR = "tvm_lut.kernel"  # a hand-written kernel's kind ("pq_encode", ...), on the PrimFunc it built


@dataclasses.dataclass
class ScheduleReport:
    """What one run of `ApplyCPUSchedules` did: function name -> rule name, the names no rule fitted, and the
    rules that raised on a function (function name -> [{"rule": ..., "error": ...}], in the order tried).
    Scheduled before the rules ran: `already_scheduled` (tuning records) and `kernels` (name -> kernel kind)."""

    scheduled: dict[str, str] = dataclasses.field(default_factory=dict)
    already_scheduled: list[str] = dataclasses.field(default_factory=list)
    kernels: dict[str, str] = dataclasses.field(default_factory=dict)
    unscheduled: list[str] = dataclasses.field(default_factory=list)
    rule_failures: dict[str, list[dict[str, str]]] = dataclasses.field(default_factory=dict)
    why_unscheduled: dict[str, str] = dataclasses.field(default_factory=dict)  # function -> what no rule serves

    @classmethod
    def of(cls, mod: tvm.IRModule) -> "ScheduleReport":
        """The report `ApplyCPUSchedules` attached to `mod` (an empty one if the pass did not run on it)."""
        text = mod.attrs.get(REPORT_ATTR) if mod.attrs is not None else None
        return cls(**json.loads(text)) if text is not None else cls()


class UnscheduledWarning(UserWarning):
    """Some PrimFuncs kept their naive (single-threaded, scalar) loops."""


class RuleFailureWarning(UserWarning):
    """A schedule rule raised on a function instead of declining it; the function went to the next rule."""


def is_scheduled(func: tirx.PrimFunc) -> bool:
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))


@tvm.transform.module_pass(opt_level=0, name="ApplyCPUSchedules")
class ApplyCPUSchedules:
    """Schedule every not-yet-scheduled PrimFunc with the first rule that fits; attach the `ScheduleReport`.

    `target` defaults to the function's own `target` attribute, then to the current target scope.
    """

    def __init__(self, rules=None, target: Target | None = None):
        self.rules = tuple(default_rules() if rules is None else rules)
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        report = ScheduleReport()
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            name = gvar.name_hint
            target = self._target_of(func)
            if is_scheduled(func):
                kernel = func.attrs.get(KERNEL_ATTR)
                if kernel is not None:
                    report.kernels[name] = str(kernel)
                else:
                    report.already_scheduled.append(name)
                # A tuning record replays its schedule on the function as legalized (libm exp and erf, unbound
                # table lookups included). A kernel's parallel loops run serial where a launch does not pay.
                rewritten = for_target(func, target)
                if kernel is not None:
                    rewritten = serial_unless_parallel_pays(rewritten, target)
                if not rewritten.same_as(func):
                    updates[gvar] = rewritten
                continue
            for rule in self.rules:
                try:
                    sch = rule.apply(func, target, False)
                except Exception as error:  # noqa: BLE001 - a rule's bug must not fail the build
                    report.rule_failures.setdefault(name, []).append(
                        {"rule": type(rule).__name__, "error": f"{type(error).__name__}: {_first_line(error)}"})
                    logger.debug("%s raised on %s", type(rule).__name__, name, exc_info=True)
                    continue
                if sch is not None:
                    updates[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    report.scheduled[name] = type(rule).__name__
                    break
            else:
                report.unscheduled.append(name)
                report.why_unscheduled[name] = why_unscheduled(func)
        for gvar, func in updates.items():
            mod[gvar] = func
        for name, failures in report.rule_failures.items():
            for failure in failures:
                warnings.warn(f"schedule rule {failure['rule']} raised on {name} (tried the next rule): "
                              f"{failure['error']}", RuleFailureWarning, stacklevel=2)
        if report.unscheduled:
            names = ", ".join(f"{name} ({report.why_unscheduled[name]})" for name in report.unscheduled)
            warnings.warn(f"no CPU schedule rule fits, left naive: {names}", UnscheduledWarning, stacklevel=2)
        return mod.with_attr(REPORT_ATTR, json.dumps(dataclasses.asdict(report)))

    def _target_of(self, func: tirx.PrimFunc) -> Target:
        if self.target is not None:
            return self.target
        target = func.attrs.get("target") if func.attrs is not None else None
        target = target if target is not None else Target.current(allow_none=True)
        if target is None:
            raise ValueError("ApplyCPUSchedules needs a target: pass target=..., or run it inside `with target:`")
        return target


def why_unscheduled(func: tirx.PrimFunc) -> str:
    """What in `func` no CPU rule serves, in words: loops outside blocks, a reduction to a single value, or else
    its blocks' iterator kinds (S spatial, R reduction, O other)."""
    sch = s_tir.Schedule(func)
    try:
        blocks = normalize_prim_func(sch)
    except Exception:  # noqa: BLE001 - an analysis that cannot read the function says the same as None
        blocks = None
    if not blocks:
        return "loops outside blocks (a hand-written kernel such as TVM's scan, sort or scatter): the rules read blocks"
    kinds = {sch.get(info.block_rv).name_hint: info.dom_kind() for info in blocks}
    if any(not info.is_injective() and all(isinstance(d, (int, tirx.IntImm)) and int(d) == 1
                                           for d, kind in zip(info.dom(), info.dom_kind()) if kind == "S")
           for info in blocks):
        return "a reduction to a single value (a mean or max over every axis): no rows to run in parallel"
    return "no rule serves blocks " + ", ".join(f"{name} [{kind}]" for name, kind in kinds.items())


def _first_line(error: Exception) -> str:
    """The error's message without TVM's C++ backtrace: its last non-empty line is the check that failed."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else repr(error)
