"""The `tvm_lut` Relax pipeline: LUT rewrites, legalize + fuse, CPU schedules (tuned records first), lowering.

    tvm.compile(mod, target=host_target(), relax_pipeline="tvm_lut")        # exact model, fast schedules
    tvm.compile(mod, target, relax_pipeline=relax.get_pipeline("tvm_lut", bundle=bundle, database=db_dir))

Phases, in order:
1. Rewrites on high-level Relax: `LUTNonlinear` (when the bundle holds `pwl` tables or `nonlinear=True`, which
   fills in the shipped default tables) and `LUTDense` (when the bundle holds `pq` entries); then, for the convs
   that stay exact, `FoldPadIntoConv` (an explicit zero padding into the conv's own), `FoldBatchNorm` (a batch
   norm after a conv into its weight and bias) and `WinogradConv2d`
   (3x3 stride 1; `winograd=False` keeps every conv direct); `FuseLayoutIntoMatmul` (attention's head reshapes and
   transposes grouped with its matmuls, which then read and write the heads' layout themselves).
2. Legalize and fuse: TVM's CPU library dispatch (sort, scan, top-k, sampling), then every op becomes a PrimFunc;
   constant weights are folded (transposes of weights vanish).
3. Schedules: records of a tuning database when one is given (only read, never written here), then the CPU rules
   (`schedules.ApplyCPUSchedules`) for every function still unscheduled; what no rule fits is reported. Weight
   repacking a schedule marked as layout-rewrite preprocessing becomes its own function, folded on constants.
4. Lowering to the VM (as TVM's CPU pipeline does; for a target of several cores without the static memory plan,
   see `lowering_passes`).

Every parameter has a default, so the registered name alone works. The pipeline keeps no state: the reports of a
run ride on the module it returns, `report_of(mod)` reads them (`tvm_lut.compile` does, and drops them before code
generation).
"""

from __future__ import annotations

import logging
from pathlib import Path

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from schedules import ApplyCPUSchedules, ScheduleReport
from schedules.apply import REPORT_ATTR
from schedules.rules.common import WEIGHT_PREPACK
from schedules.target import num_cores

from .fold_batch_norm import FoldBatchNorm
from .fold_pad_into_conv import FoldPadIntoConv
from .fuse_layout_into_matmul import FuseLayoutIntoMatmul
from .lut_nonlinear import LUTNonlinear
from .report import PassReport
from .report import without_reports as without_pass_reports
from .winograd_conv2d import WinogradConv2d

logger = logging.getLogger(__name__)


def lut_passes(bundle=None, nonlinear: bool = False) -> list:
    """Phase 1: the LUT rewrites that apply. NN-LUT (`LUTNonlinear`) when the bundle has `pwl` tables or
    `nonlinear=True`, which adds the shipped tables for every function the bundle lacks; PQ (`LUTDense`) when the
    bundle has `pq` entries. One bundle may hold both kinds; a PQ-only bundle with `nonlinear=True` gives both."""
    kinds = {entry.kind for _, entry in bundle.items()} if bundle is not None else set()
    passes = []
    if nonlinear or "pwl" in kinds:
        passes.append(LUTNonlinear(_with_default_tables(bundle) if nonlinear else bundle))
    if "pq" in kinds:
        from .lut_dense import LUTDense

        passes.append(LUTDense(bundle))
    return passes


def _with_default_tables(bundle):
    """`bundle`'s NN-LUT tables plus the shipped ones for the functions it has no table for."""
    from tvm_lut.defaults import default_bundle

    defaults = default_bundle()
    if bundle is None:
        return defaults
    missing = {name: table for name, table in defaults.items() if bundle.pwl(table.name) is None and name not in bundle}
    return bundle.merged(type(bundle)(missing)) if missing else bundle


_OPAQUE = 8  # relax op_pattern kOpaque: FuseOps leaves the call alone


@tvm.transform.module_pass(opt_level=0, name="KeepInt32KernelsUnfused")
def keep_int32_kernels_unfused(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Mark PrimFuncs whose buffer shapes are int32 opaque to fusion.

    Legalized ops index with int64; FuseTIR cannot merge a function with int32 shapes into them ("Inconsistent
    buffers ... mapped to the same relax var"). Such a kernel then runs as its own call instead of failing the build.
    """
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc) and any(
            str(dim.ty) != "int64" for param in func.params for dim in getattr(param, "shape", ())
        ):
            mod[gvar] = func.with_attr("op_pattern", _OPAQUE)
    return mod


def exact_passes(winograd: bool = True) -> list:
    """Phase 1, after the LUT rewrites: for the convs that stay exact, explicit paddings and batch norms folded into
    them, then algorithm choices (3x3 convs to Winograd); for attention, the heads' reshapes and transposes grouped
    with its matmuls."""
    return [FoldPadIntoConv(), FoldBatchNorm()] + ([WinogradConv2d()] if winograd else []) + [FuseLayoutIntoMatmul()]


def legalize_passes(target) -> list:
    """Phase 2: every op to a PrimFunc, constants folded, producer/consumer chains fused into one function.

    First TVM's CPU library dispatch (`DispatchSampling`, `DispatchSortScan`, as its CPU pipeline runs them): sort,
    argsort, top-k, cumsum and sampling have no legalization of their own and would reach the VM as Relax
    operators it cannot emit (ONNX CumSum, TopK, an Unsqueeze of run-time axes).
    """
    return cpu_generic.library_dispatch_passes(target) + [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        keep_int32_kernels_unfused,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


@tvm.transform.module_pass(opt_level=0, name="SplitWeightPrepack")
def split_weight_prepack(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """TVM's `SplitLayoutRewritePreproc` on the functions it can split: those whose weight-prepack blocks (marked
    `WEIGHT_PREPACK` by a schedule rule) read only the function's parameters. It fails on every other function
    (one without such a block but with loops outside any block: a dispatched sort or scan, a slice of run-time
    bounds; one whose prepack block reads an intermediate: a transposed conv's flipped kernel), so those sit out,
    their prepack block (if any) still computed in place at every call."""
    splittable = {gv: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and _splittable(f)}
    if not splittable:
        return mod
    apart = {gv: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and gv not in splittable}
    readable = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv not in apart}, attrs=mod.attrs)
    split = relax.transform.SplitLayoutRewritePreproc()(readable)
    for gv, func in apart.items():
        split[gv] = func
    return split


def _splittable(func: tvm.tirx.PrimFunc) -> bool:
    """Whether the function has weight-prepack blocks and each reads only parameters (no buffer it allocates)."""
    blocks = []
    tvm_ffi.structural_map(func, (tvm.s_tir.SBlock, lambda block: blocks.append(block) or block), order="post")
    allocated = [buffer for block in blocks for buffer in block.alloc_buffers]
    prepack = [block for block in blocks if WEIGHT_PREPACK in (block.annotations or {})]
    return bool(prepack) and not any(read.source.same_as(buffer) for block in prepack for read in block.reads
                                     for buffer in allocated)


def weight_prepack_passes() -> list:
    """Phase 3's end: repacking of weights (a conv's channel blocks) split out and computed once on constants."""
    return [split_weight_prepack, relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]


def lowering_passes(target) -> list:
    """Phase 4: dataflow to VM instructions, memory planning (TVM's CPU pipeline). `RewriteDataflowReshape` turns
    calls of reshape-only PrimFuncs into views and leaves the PrimFuncs behind (MiniLM: four, one of them a
    512 x 1536 copy), so dead functions are dropped before they are compiled.

    For a target of several cores, no static memory plan: `StaticPlanBlockMemory` gives one storage to tensors
    that kernels split differently between threads (a lookup's rows, then attention's heads), so a thread writes
    lines another core's cache holds, at every call; each such line then moves between the cores, or between dies
    where the host puts the cores on two. Allocated at run time from the VM's pool, a tensor keeps its address
    from call to call and is written by the same thread each time. MiniLM with NN-LUT + PQ at two threads (AMD
    EPYC znver4, interleaved in one process): 1x64 1.849 -> 1.557 ms and 8x64 17.55 -> 14.22 ms with the vCPUs on
    two dies, 1x64 1.150 -> 1.162 ms on one L3; at one thread the plan stays (1x64 1.801 against 1.853 ms).
    """
    finalize = cpu_generic.finalize_passes(target)
    if num_cores(target) > 1:
        finalize = [p for p in finalize if p.info.name != "StaticPlanBlockMemory"]
    return cpu_generic.dataflow_lower_passes(target) + [relax.transform.DeadCodeElimination()] + finalize


def prepare(mod: tvm.IRModule, target, bundle=None, nonlinear: bool = False, lut: list | None = None,
            winograd: bool = True) -> tvm.IRModule:
    """Phases 1 and 2: the module whose PrimFuncs get scheduled (and tuned: `tvm-lut tune` starts from here)."""
    passes = lut_passes(bundle, nonlinear) + exact_passes(winograd) if lut is None else lut
    with target:
        return tvm.transform.Sequential(passes + legalize_passes(target))(mod)


@tvm.transform.module_pass(opt_level=0, name="tvm_lut")
class LUTPipeline:
    """The four phases above as one pass. It keeps no state: the reports of its run ride on the module it returns
    (`report_of`)."""

    def __init__(self, bundle=None, nonlinear: bool = False, database=None, target=None, rules=None,
                 winograd: bool = True):
        self.lut = lut_passes(bundle, nonlinear)
        self.exact = exact_passes(winograd)
        if database is not None and target is not None:  # fail here, not inside the pass (TVM rewraps errors)
            database = _open_database(database, target)
        self.database = database
        self.target = target
        self.scheduler = ApplyCPUSchedules(rules=rules, target=target)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = self.target or tvm.target.Target.current(allow_none=True)
        if target is None:
            raise ValueError("the tvm_lut pipeline needs a target: tvm.compile(mod, target=...) or target=...")
        mod = prepare(mod, target, lut=self.lut + self.exact)
        with target:
            if self.database is not None:
                with _open_database(self.database, target):
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            mod = self.scheduler(mod)
            return tvm.transform.Sequential(weight_prepack_passes() + lowering_passes(target))(mod)


def report_of(mod: tvm.IRModule) -> dict:
    """JSON-ready report of the pipeline run that produced `mod`: each LUT pass's report, the exact-algorithm passes'
    ones, the rule that scheduled each function, what stayed unscheduled, and the rules that raised on a function
    (tried the next rule instead)."""
    exact = {type(p).__name__ for p in exact_passes()}
    reports = [report.to_dict() for report in PassReport.all_of(mod)]
    schedules = ScheduleReport.of(mod)
    return {
        "passes": [r for r in reports if r["pass"] not in exact],
        "exact_passes": [r for r in reports if r["pass"] in exact],
        "scheduled": dict(schedules.scheduled),
        "already_scheduled": list(schedules.already_scheduled),
        "kernels": dict(schedules.kernels),
        "unscheduled": list(schedules.unscheduled),
        "why_unscheduled": dict(schedules.why_unscheduled),
        "rule_failures": {name: list(failures) for name, failures in schedules.rule_failures.items()},
    }


def without_reports(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` without the reports its passes attached (read them first with `report_of`)."""
    mod = without_pass_reports(mod)
    return mod.without_attr(REPORT_ATTR) if mod.attrs is not None and REPORT_ATTR in mod.attrs else mod


def _open_database(database, target):
    """A MetaSchedule database object, or the one stored for `target` under a tuning directory."""
    from schedules.tuning import open_database

    if isinstance(database, (str, Path)):
        return open_database(database, target, create=False)
    return database


@relax.register_pipeline("tvm_lut")
def tvm_lut_pipeline(bundle=None, nonlinear: bool = False, database=None, target=None, rules=None,
                     winograd: bool = True) -> LUTPipeline:
    """The `tvm_lut` pipeline (see the module docstring); every argument is optional."""
    return LUTPipeline(bundle=bundle, nonlinear=nonlinear, database=database, target=target, rules=rules,
                       winograd=winograd)
