"""`PassReport`: what a LUT pass replaced, and what it kept exact and why.

Every LUT pass (LUTNonlinear, LUTDense) fills one report per run and never rewrites silently: an op it matched
but cannot serve (dtype, dynamic shape, no table, an attribute the kernel does not support) stays exact and gets a
`KeptExact` entry with the reason. The report is plain data (`to_dict()` is JSON-ready) and logs one summary line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter


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

    def to_dict(self) -> dict:
        """JSON-ready form (for `--json` outputs and the compile report)."""
        return {
            "pass": self.pass_name,
            "replaced": [dataclasses.asdict(e) for e in self.replaced],
            "kept": [dataclasses.asdict(e) for e in self.kept],
            "unused": [dataclasses.asdict(e) for e in self.unused],
        }


def _shape(shape) -> str:
    return "(dynamic)" if shape is None else "x".join(map(str, shape)) or "scalar"
