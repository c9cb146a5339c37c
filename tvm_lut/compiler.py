"""`tvm_lut.compile`: one call from an imported Relax module to an executable for `relax.VirtualMachine`.

(The module is `compiler`, not `compile`: a submodule named `compile` would replace the function on the package.)

It runs the `tvm_lut` pipeline (`relay_passes.pipeline`): the LUT passes when a bundle is given (or
`nonlinear=True`, which uses the shipped default tables), the CPU schedule rules for every function, and the
records of a tuning database when one is given (written by `tvm-lut tune`; compiling only reads it). The executable
carries `lut_report`: what each LUT pass replaced and kept exact, which rule or tuning record scheduled each function,
which functions stayed unscheduled and why, and which rules raised on a function (the build goes on without them).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass
class CompileReport:
    """What one `tvm_lut.compile` did; `str()` is a short human summary, `to_dict()` is JSON-ready."""

    target: str
    passes: list[dict]  # LUT passes: what became a table lookup, what stayed exact and why
    scheduled: dict[str, str]  # PrimFunc -> the rule that scheduled it
    tuned: list[str]  # PrimFuncs scheduled from the tuning database
    unscheduled: list[str]  # PrimFuncs no rule fitted: naive loops, named here and in a warning
    exact_passes: list[dict] = dataclasses.field(default_factory=list)  # algorithm choices (Winograd convs)
    # PrimFunc -> [{"rule", "error"}]: rules that raised on it (a bug in the rule); the next rule was tried
    rule_failures: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    why_unscheduled: dict[str, str] = dataclasses.field(default_factory=dict)  # PrimFunc -> what no rule serves
    kernels: dict[str, str] = dataclasses.field(default_factory=dict)  # PrimFunc -> hand-written LUT kernel kind

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def unmatched_pq_entries(self) -> list[dict]:
        """The bundle's PQ entries that replaced no layer, each with the reason (`{"entry", "reason"}`)."""
        return [entry for report in self.passes if report["pass"] == "LUTDense" for entry in report.get("unused", [])]

    def __str__(self) -> str:
        lines = [f"target {self.target}"]
        for report in self.passes:
            counts = {}
            for entry in report["replaced"]:
                counts[entry["op"]] = counts.get(entry["op"], 0) + 1
            lines.append(f"{report['pass']}: replaced {counts or 'nothing'}, kept exact {len(report['kept'])}")
            lines += [f"  kept exact {entry['op']} {entry.get('shape')}: {entry['reason']}" for entry in report['kept']
                      if report["pass"] == "LUTDense"]
            lines += [f"  unused entry {entry['entry']!r}: {entry['reason']}" for entry in report.get("unused", [])]
        for report in self.exact_passes:
            if report["replaced"] or report["kept"]:
                lines.append(f"{report['pass']}: {len(report['replaced'])} rewritten, {len(report['kept'])} not "
                             f"({', '.join(sorted({entry['reason'] for entry in report['kept']})) or 'none'})")
        rules = {}
        for rule in self.scheduled.values():
            rules[rule] = rules.get(rule, 0) + 1
        kernels = f"; LUT kernels {len(self.kernels)}" if self.kernels else ""
        lines.append(f"scheduled by rules {rules}{kernels}; from the tuning database {len(self.tuned)}")
        lines.append(f"unscheduled: {', '.join(self.unscheduled) or 'none'}")
        lines += [f"  {name}: {why}" for name, why in self.why_unscheduled.items()]
        for name, failures in self.rule_failures.items():
            lines.append(f"rule failures on {name}: " + "; ".join(f"{f['rule']} raised {f['error']}" for f in failures))
        return "\n".join(lines)


def compile(mod, bundle=None, target=None, *, nonlinear: bool = False, database: str | os.PathLike | None = None,
            rules=None, winograd: bool = True, exec_mode: str = "compiled"):  # noqa: A001 - the public name is tvm_lut.compile
    """Compile a Relax module for the CPU: LUT passes (with `bundle`), schedules, tuning records.

    mod: a Relax `IRModule` (e.g. from `tvm_lut.frontend.from_torch` / `from_onnx`), weights bound as constants.
    bundle: a `tvm_lut.Bundle`, or a path to one; None means an exact model unless `nonlinear=True`.
    target: "host" (the default: this CPU), a preset ("x86-64-v3", "x86-64-v4", "aarch64"), a TVM target dict or
        its JSON, or a `tvm.target.Target` (`schedules.target.resolve_target`). Rules, lookup intrinsics, Winograd,
        vector widths and thread counts follow it; export a library for another architecture with
        `schedules.target.export_library(executable, path, target)` (its cross compiler).
    database: a directory written by `tvm-lut tune` (records of this target are applied first).
    rules: schedule rules to use instead of `schedules.rules.default_rules()`.
    winograd: exact 3x3 stride-1 convs as Winograd F(2x2, 3x3) kernels (`relay_passes.WinogradConv2d`); False
        keeps every conv direct.
    exec_mode: "compiled" (the VM's instructions as native code, the fastest) or "bytecode" (interpreted; the VM's
        instrumentation sees every kernel call, which `tvm_lut.profile` needs).

    For a target that runs here it also sizes the calling thread's TVM pool to the target's cores, never below what
    an earlier build asked (`schedules.target.use_runtime_threads`: left alone, TVM runs half the logical CPUs of an
    x86 host); if the pool already runs fewer, it warns.
    """
    import warnings

    import tvm
    from tvm import relax

    from relay_passes.pipeline import report_of, tvm_lut_pipeline, without_reports
    from schedules.target import resolve_target, runs_on_host, use_runtime_threads

    if not isinstance(mod, tvm.IRModule):
        raise TypeError(f"mod must be a Relax tvm.IRModule, got {type(mod).__name__}")
    if isinstance(bundle, (str, os.PathLike)):
        from tvm_lut.bundle import Bundle

        bundle = Bundle.load(Path(bundle))
    target = resolve_target(target)
    if runs_on_host(target):
        try:
            use_runtime_threads(target)
        except RuntimeError as error:
            warnings.warn(str(error), RuntimeWarning, stacklevel=2)
    pipeline = tvm_lut_pipeline(bundle=bundle, nonlinear=nonlinear, database=database, target=target, rules=rules,
                                winograd=winograd)
    # "compiled": the VM's instruction sequence becomes native code instead of interpreted bytecode (the CNN's 35
    # instructions: 90.1 -> 88.4 us a call at one thread), the same kernels.
    with target:
        lowered = pipeline(mod)
    report = report_of(lowered)
    executable = relax.build(without_reports(lowered), target=target, relax_pipeline=None, exec_mode=exec_mode)
    executable.lut_report = CompileReport(target=str(target), passes=report["passes"], scheduled=report["scheduled"],
                                          tuned=report["already_scheduled"], unscheduled=report["unscheduled"],
                                          exact_passes=report["exact_passes"], rule_failures=report["rule_failures"],
                                          why_unscheduled=report["why_unscheduled"], kernels=report["kernels"])
    return executable


def add_arguments(parser) -> None:
    """`tvm-lut compile MODEL -o lib.so`: compile with the rules (and tuning records, LUT tables) and print the report."""
    from tvm_lut import model_spec

    model_spec.add_build_arguments(parser, "a tuning database written by `tvm-lut tune` (read only; only the records "
                                   "of --target apply)")
    model_spec.add_output_argument(parser, "the shared library to write (load it with tvm.runtime.load_module and "
                                   "run it with relax.VirtualMachine)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the compile report as JSON")


def run(args) -> int:
    import json

    from schedules.target import export_library
    from tvm_lut import model_spec

    source, bundle, target = model_spec.build_from_args(args)
    try:
        executable = compile(source.import_module(), bundle, target, nonlinear=args.nonlinear, database=args.db,
                             winograd=args.winograd)
    except FileNotFoundError as err:  # a database of other targets only
        raise model_spec.UsageError(str(err)) from None
    report = executable.lut_report
    print(report)
    from relay_passes.lut_dense import NO_MATCHING_WEIGHT

    unmatched = [e for e in report.unmatched_pq_entries() if e["reason"].startswith(NO_MATCHING_WEIGHT)]
    if bundle is not None and unmatched and len(unmatched) == sum(entry.kind == "pq" for _, entry in bundle.items()):
        raise model_spec.UsageError(f"none of the bundle's {len(unmatched)} PQ tables matches a layer of "
                                    f"{source.spec!r}; e.g. entry {unmatched[0]['entry']!r}: {unmatched[0]['reason']}. "
                                    "The bundle was learned for another model (no library written)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    export_library(executable, args.output, target)
    print(f"wrote {args.output}")
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0
