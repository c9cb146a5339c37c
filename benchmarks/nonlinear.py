"""NN-LUT non-linear kernels against the exact op, TVM's FastMath and PyTorch, on BERT-sized shapes.

    python -m benchmarks.nonlinear [--repeat N] [--json PATH] [--check]

Every TVM variant goes through the same compilation (legalize, fuse, `schedules.ApplyCPUSchedules`, lowering):
the exact op is scheduled by our rules; the LUT GELU too, the LUT Softmax and LayerNorm rows come hand-scheduled
(`schedules.kernels.row_passes`: the rules' per-row combine gathers; the exact ops stay with the rules):
- exact: the Relax op (`nn.gelu`, `nn.softmax`, `nn.layer_norm`) legalized by TVM;
- fastmath: `relax.transform.FastMathTransform` first (GELU written with `erf`, the only form it rewrites;
  it has no LayerNorm rewrite, so that row stays empty);
- lut: the `schedules` kernel with tables from `tvm_lut.fit_pwl`;
- torch: the PyTorch op with the same thread count (timed first, before TVM's thread pool exists).
TVM variants are timed with repetitions interleaved, so the load of a shared machine hits them alike.
`--check` adds the max absolute error of the LUT (and FastMath) output against the exact op on the same input, and
of the LUT kernel against its NumPy reference (the table's own evaluation: what the kernel must match).
At several threads, `fork_join_us` is TVM's pool starting and joining right after each case's timings
(`tvm_lut.timing.fork_join_seconds`): where the host ran the threads (about twice as long on two dies as on one L3).
"""

import argparse
import functools
import math
import sys

import numpy as np

from .timing import add_common_arguments, format_table, median_seconds, median_seconds_interleaved, write_json

CASES = [
    ("gelu", (8, 64, 1536)),
    ("gelu", (128, 3072)),
    ("softmax", (8, 12, 64, 64)),
    ("layer_norm", (8, 64, 384)),
    ("layer_norm", (128, 768)),
]
TABLES = {"gelu": ("gelu",), "softmax": ("exp", "reciprocal"), "layer_norm": ("rsqrt",)}
LAYER_NORM_EPS = 1e-5
VARIANTS = ("exact", "fastmath", "lut")


def inputs(op: str, shape, rng: np.random.Generator) -> list[np.ndarray]:
    """Benchmark inputs with realistic magnitudes (BERT activations, attention scores, residual streams)."""
    scale = {"gelu": 2.0, "softmax": 3.0, "layer_norm": 1.0}[op]
    arrays = [(rng.standard_normal(shape) * scale).astype("float32")]
    if op == "layer_norm":
        arrays += [rng.uniform(0.5, 1.5, shape[-1:]).astype("float32"),
                   rng.standard_normal(shape[-1:]).astype("float32") * np.float32(0.1)]
    return arrays


def relax_module(op: str, shape, variant: str, tables: dict):
    """`main` computing `op` the `variant` way, as a Relax module."""
    from tvm import relax
    from schedules import layer_norm_func, pwl_func, softmax_func

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    params = [x]
    if op == "layer_norm":
        params += [relax.Var(n, relax.TensorType(shape[-1:], "float32")) for n in ("gamma", "beta")]
    with bb.function("main", params):
        with bb.dataflow():
            if variant == "lut":
                kernel = {
                    "gelu": lambda: pwl_func(tables["gelu"], shape),
                    "softmax": lambda: softmax_func(tables["exp"], tables["reciprocal"], shape, -1),
                    "layer_norm": lambda: layer_norm_func(tables["rsqrt"], shape, [-1], LAYER_NORM_EPS),
                }[op]()
                gvar = bb.add_func(kernel, f"lut_{op}")
                y = bb.emit(relax.call_tir(gvar, params, relax.TensorType(shape, "float32")))
            elif op == "gelu" and variant == "fastmath":
                erf = relax.op.erf(relax.op.multiply(x, relax.const(1 / math.sqrt(2), "float32")))
                half_x = relax.op.multiply(x, relax.const(0.5, "float32"))
                y = bb.emit(relax.op.multiply(half_x, relax.op.add(erf, relax.const(1.0, "float32"))))
            elif op == "gelu":
                y = bb.emit(relax.op.nn.gelu(x))
            elif op == "softmax":
                y = bb.emit(relax.op.nn.softmax(x, axis=-1))
            else:
                y = bb.emit(relax.op.nn.layer_norm(*params, axes=[-1], epsilon=LAYER_NORM_EPS))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    return relax.transform.FastMathTransform()(mod) if variant == "fastmath" else mod


def compile_vm(mod, target):
    """Legalize + fuse as TVM's CPU pipeline does, schedule every PrimFunc with the `schedules` rules, lower."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from schedules import ApplyCPUSchedules

    passes = (cpu.legalize_passes(target) + [ApplyCPUSchedules(target=target)]
              + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
    with target:
        mod = tvm.transform.Sequential(passes)(mod)
    return relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=None), tvm.cpu())


def torch_op(op: str):
    import torch
    import torch.nn.functional as F

    return {
        "gelu": lambda x: F.gelu(x),
        "softmax": lambda x: torch.softmax(x, dim=-1),
        "layer_norm": lambda x, g, b: F.layer_norm(x, x.shape[-1:], g, b, LAYER_NORM_EPS),
    }[op]


def fit_tables() -> dict:
    from tvm_lut.progress import progress_bar
    from tvm_lut import fit_pwl

    names = sorted({name for names in TABLES.values() for name in names})
    return {name: fit_pwl(name)
            for name in progress_bar(names, desc="fitting NN-LUT tables", leave=False, progress=True)}


def time_torch(op: str, shape, repeat: int, rng) -> float:
    """PyTorch's time for one case, in seconds (taken before TVM starts its thread pool: the two pools' idle
    threads spin, and on a small machine each steals the other's cores)."""
    import torch

    with torch.no_grad():
        return median_seconds(functools.partial(torch_op(op), *map(torch.from_numpy, inputs(op, shape, rng))), repeat)


def run_case(op: str, shape, tables: dict, target, repeat: int, check: bool, rng) -> dict:
    """Time the TVM variants of one case, repetitions interleaved; with `check`, their errors against exact."""
    import tvm

    from schedules.target import num_cores
    from tvm_lut.timing import fork_join_seconds

    arrays = inputs(op, shape, rng)
    args = [tvm.runtime.tensor(a) for a in arrays]
    fns = {}
    for variant in VARIANTS:
        if not (variant == "fastmath" and op == "layer_norm"):
            vm = compile_vm(relax_module(op, shape, variant, tables), target)
            fns[variant] = functools.partial(vm["main"], *args)
    seconds = median_seconds_interleaved(fns, repeat)
    row = {"op": op, "shape": "x".join(map(str, shape))}
    row.update({f"{variant}_ms": 1e3 * s for variant, s in seconds.items()})
    if num_cores(target) > 1:
        row["fork_join_us"] = 1e6 * fork_join_seconds()
    if check:
        exact = fns["exact"]().numpy()
        for variant in ("lut", "fastmath"):
            if variant in fns:
                row[f"{variant}_max_err"] = _max_error(fns[variant]().numpy(), exact)
        row["lut_vs_reference_err"] = _max_error(fns["lut"]().numpy(), reference(op, tables, arrays))
    return row


def reference(op: str, tables: dict, arrays: list[np.ndarray]) -> np.ndarray:
    """The NumPy reference of the LUT kernel (what it must compute exactly, table error included)."""
    from schedules.kernels import reference as ref

    if op == "gelu":
        return ref.pwl_reference(tables["gelu"], arrays[0])
    if op == "softmax":
        return ref.softmax_reference(tables["exp"], tables["reciprocal"], arrays[0], -1)
    return ref.layer_norm_reference(tables["rsqrt"], arrays[0], [-1], LAYER_NORM_EPS, *arrays[1:])


def _max_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want), initial=0.0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nonlinear", description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--check", action="store_true", help="also print max |error| against the exact op")
    parser.add_argument("--threads", type=int, help="threads for TVM and PyTorch (default: the cores this process may use)")
    args = parser.parse_args(argv)

    import torch
    from tvm_lut.progress import progress_bar
    from schedules import host_target
    from schedules.target import num_cores, use_runtime_threads

    target = host_target(args.threads)
    torch.set_num_threads(num_cores(target))
    use_runtime_threads(target)  # TVM's own default is half the logical CPUs
    tables = fit_tables()
    torch_ms = [1e3 * time_torch(op, shape, args.repeat, np.random.default_rng(0))
                for op, shape in progress_bar(CASES, desc="timing PyTorch", leave=False, progress=True)]
    rows = []
    for (op, shape), torch_time in zip(progress_bar(CASES, desc="timing TVM", leave=False, progress=True), torch_ms):
        row = run_case(op, shape, tables, target, args.repeat, args.check, np.random.default_rng(0))
        row["torch_ms"] = torch_time
        for variant in ("exact", "fastmath", "torch"):
            if f"{variant}_ms" in row:
                row[f"lut_vs_{variant}"] = row[f"{variant}_ms"] / row["lut_ms"]
        rows.append(row)
    columns = ["op", "shape", "exact_ms", "fastmath_ms", "lut_ms", "torch_ms", "lut_vs_exact", "lut_vs_fastmath",
               "lut_vs_torch"]
    if args.check:
        columns += ["lut_max_err", "fastmath_max_err", "lut_vs_reference_err"]
    if num_cores(target) > 1:
        columns.append("fork_join_us")
    print(f"target: {target.attrs['mcpu']}, {num_cores(target)} threads (torch too); median of {args.repeat}; "
          "lut_vs_X = X time / LUT time (> 1: LUT faster)"
          + ("; fork_join_us: TVM's pool starting and joining after the case (~2x on two dies)"
             if num_cores(target) > 1 else ""))
    print(format_table(rows, columns))
    write_json(args.json, {"target": str(target), "repeat": args.repeat, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
