"""`PassReport`: what a LUT pass replaced, and what it kept exact and why.

Every LUT pass (LUTNonlinear, LUTDense) fills one report per run and never rewrites silently: an op it matched
but cannot serve (dtype, dynamic shape, no table, an attribute the kernel does not support) stays exact and gets a
`KeptExact` entry with the reason. The report is plain data (`to_dict()` is JSON-ready) and logs one summary line.

The passes keep no state: each run appends its report to the module it returns (the `REPORTS_ATTR` attribute, a
JSON list), so one pass object run on two modules leaves each its own report. `PassReport.of(mod, name)` reads the
last report of pass `name`, `PassReport.all_of(mod)` every one in the order the passes ran.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter

import tvm

REPORTS_ATTR = "tvm_lut.pass_reports"


@dataclasses.dataclass(frozen=True)
class Replaced:
    """One op rewritten to a LUT kernel: `function` is the name of the PrimFunc the call now goes to, `entry` the
    bundle entry whose table it uses (PQ layers; None for NN-LUT ops, which share tables by function)."""

    op: str
    form: str
    shape: tuple[int, ...] | None
    dtype: str
    function: str
    entry: str | None = None


@dataclasses.dataclass(frozen=True)
class KeptExact:
    """One matched op left exact; `reason` says why in words a user can act on."""

    op: str
    form: str
    shape: tuple[int, ...] | None
    dtype: str
    reason: str


@dataclasses.dataclass(frozen=True)
class UnusedEntry:
    """A bundle entry no op of the module used, and why (e.g. its weight fingerprint matches no weight)."""

    entry: str
    reason: str


@dataclasses.dataclass
class PassReport:
    """The entries of one pass run, in the order the ops were visited, and the bundle entries left unused."""

    pass_name: str
    replaced: list[Replaced] = dataclasses.field(default_factory=list)
    kept: list[KeptExact] = dataclasses.field(default_factory=list)
    unused: list[UnusedEntry] = dataclasses.field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Replaced ops per op name, e.g. `{"gelu": 6, "softmax": 6, "layer_norm": 13}`."""
        return dict(Counter(entry.op for entry in self.replaced))

    def kept_counts(self) -> dict[str, int]:
        """Ops kept exact per op name."""
        return dict(Counter(entry.op for entry in self.kept))

    def summary(self) -> str:
        """One line: how many of each op were replaced and kept exact."""
        replaced = ", ".join(f"{n} {op}" for op, n in self.counts().items()) or "nothing"
        line = f"{self.pass_name}: replaced {replaced}"
        if self.kept:
            line += "; kept exact " + ", ".join(f"{n} {op}" for op, n in self.kept_counts().items())
        if self.unused:
            line += f"; {len(self.unused)} bundle entries matched no op"
        return line

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  replaced {e.op} ({e.form}) {_shape(e.shape)} {e.dtype} -> {e.function}" for e in self.replaced]
        lines += [f"  kept exact {e.op} ({e.form}) {_shape(e.shape)} {e.dtype}: {e.reason}" for e in self.kept]
        lines += [f"  unused entry {e.entry!r}: {e.reason}" for e in self.unused]
        return "\n".join(lines)

    def log(self, logger: logging.Logger) -> None:
        """The summary at INFO; every kept-exact op with its reason at WARNING (a partial rewrite is never silent)."""
        logger.info("%s", self.summary())
        for entry in self.kept:
            logger.warning("%s kept %s (%s) %s exact: %s", self.pass_name, entry.op, entry.form,
                           _shape(entry.shape), entry.reason)
        for entry in self.unused:
            logger.warning("%s: bundle entry %r unused: %s", self.pass_name, entry.entry, entry.reason)

    def attach(self, mod: tvm.IRModule) -> tvm.IRModule:
        """`mod` with this report appended to the reports it carries."""
        return mod.with_attr(REPORTS_ATTR, json.dumps(_reports_json(mod) + [self.to_dict()]))

    @classmethod
    def all_of(cls, mod: tvm.IRModule) -> list[PassReport]:
        """The reports of every LUT pass run that produced `mod`, in order."""
        return [cls.from_dict(entry) for entry in _reports_json(mod)]

    @classmethod
    def of(cls, mod: tvm.IRModule, pass_name: str) -> PassReport:
        """The report of the last run of pass `pass_name` on (an ancestor of) `mod`."""
        reports = [report for report in cls.all_of(mod) if report.pass_name == pass_name]
        if not reports:
            ran = sorted({report.pass_name for report in cls.all_of(mod)})
            raise LookupError(f"no {pass_name} report on this module (reports of: {', '.join(ran) or 'no pass'})")
        return reports[-1]

    @classmethod
    def from_dict(cls, data: dict) -> PassReport:
        """The inverse of `to_dict`."""

        def entries(kind, key):
            return [kind(**{**e, "shape": None if e.get("shape") is None else tuple(e["shape"])})
                    if "shape" in e else kind(**e) for e in data.get(key, [])]

        return cls(data["pass"], entries(Replaced, "replaced"), entries(KeptExact, "kept"),
                   entries(UnusedEntry, "unused"))

    def to_dict(self) -> dict:
        """JSON-ready form (for `--json` outputs and the compile report)."""
        return {
            "pass": self.pass_name,
            "replaced": [dataclasses.asdict(e) for e in self.replaced],
            "kept": [dataclasses.asdict(e) for e in self.kept],
            "unused": [dataclasses.asdict(e) for e in self.unused],
        }


def _reports_json(mod: tvm.IRModule) -> list[dict]:
    text = mod.attrs.get(REPORTS_ATTR) if mod.attrs is not None else None
    return json.loads(str(text)) if text is not None else []


def without_reports(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` without the pass reports it carries (once read)."""
    return mod.without_attr(REPORTS_ATTR) if mod.attrs is not None and REPORTS_ATTR in mod.attrs else mod


def _shape(shape) -> str:
    return "(dynamic)" if shape is None else "x".join(map(str, shape)) or "scalar"
