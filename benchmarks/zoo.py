"""The architectures users bring, each on every engine in one run: where our exact schedules stand.

    python -m benchmarks.zoo [--models resnet-50 vit-base ...] [--threads N] [--repeat N] [--db DIR] [--json PATH]

For each model of `benchmarks.helpers.zoo_models` (ResNet-50, MobileNetV2, MobileNetV3-Small, ConvNeXt-T, ViT-B/16 at
224 px, Swin-T, BERT-base and DistilBERT at 128 tokens with random weights from `transformers` configurations;
MiniLM-L6 at 128 tokens and the Fashion-MNIST CNN; batch 1) on the same inputs and thread count: PyTorch fp32,
ONNX Runtime fp32 and int8 (dynamic quantization), `tvm_lut.compile` with our rules (exact, untuned) and, with
`--db`, with the records of `tvm-lut tune`. Latency is the median of `--repeat` repetitions of >= 0.1 s of calls,
taken in turn over the engines (at several threads each once the engine before has parked its spinning workers:
`benchmarks.helpers.engines.engine_timings`; wall time, or with `--clock cpu` at one thread the process's CPU time,
which a shared machine's other processes do not inflate); `*_vs_ort` is ONNX Runtime fp32 latency / the engine's (> 1 is
faster), and the zoo's median of `rules_vs_ort` closes the table. `*_err` is the largest absolute difference from
PyTorch's output over the largest magnitude of that output (relative to the output's scale, so elements near zero
do not blow it up). A model torch.export refuses is imported from its ONNX file instead, shape computations folded by ONNX
Runtime's basic optimizations (`importer` in the JSON).
`cpu_wait` is the most threads of any engine that stood waiting for a CPU other processes held (median over its
repetitions; 0 on a quiet machine: a row with a high one measured the shared machine); `threads_ran` the most
threads of the process that ran during one engine's repetition (at N threads, N: no other engine's worker ran
beside it).
`unscheduled` counts the functions no rule fitted (named in the JSON with the whole compile
report). A model or engine that fails (import, export, compile) is recorded with its error and the zoo goes on.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

from .helpers.engines import aligned, engine_timings, export_onnx, ort_runner, torch_runner, \
    tvm_runner
from .timing import add_common_arguments, format_table, load_average, write_json
from .helpers.zoo_models import MODELS

COLUMNS = ["model", "pytorch_ms", "ort_fp32_ms", "ort_int8_ms", "rules_ms", "rules_vs_ort", "tuned_ms",
           "tuned_vs_ort", "pytorch_vs_ort", "rules_err", "tuned_err", "ort_fp32_err", "ort_int8_err", "unscheduled",
           "cpu_wait", "threads_ran"]


def max_relative_error(output: np.ndarray, reference: np.ndarray) -> float:
    """max |output - reference| / max |reference| (inf when the shapes differ or the output is not finite where
    the reference is)."""
    output, reference = np.asarray(output, np.float64), np.asarray(reference, np.float64)
    if output.shape != reference.shape:
        return float("inf")
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    difference = np.abs(output - reference)
    if np.isnan(difference).any():
        return float("inf")
    return float(difference.max() / scale) if scale > 0 else float(difference.max(initial=0.0))


def _error_text(error: BaseException) -> str:
    """The error's type and first lines (TVM's messages carry a long C++ trace)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = next((line for line in reversed(lines) if "Error" in line or "Check failed" in line),
                   lines[-1] if lines else "")
    return f"{type(error).__name__}: {message}"[:500]


def constant_folded(path: Path, workdir: Path) -> Path:
    """The ONNX file with its shape computations folded to constants (ONNX Runtime's basic, ONNX-only graph
    optimizations): the TorchScript exporter leaves Swin's window reshapes computed from `Shape` ops at run time,
    which TVM's importer cannot infer statically."""
    import onnxruntime as ort

    folded = workdir / f"{path.stem}.folded.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return folded


def measure(name: str, args, target) -> dict:
    """Every engine on one model: latencies, errors against PyTorch, compile reports, failures."""
    import torch

    import tvm_lut
    from tvm_lut.frontend import from_onnx, from_torch

    record = {"model": name, "importer": "torch.export", "latency_ms": {}, "error": {}, "failures": {}, "reports": {}, "sizes": {}}
    threads = args.threads

    def attempt(stage, fn):
        try:
            return fn()
        except Exception as error:  # one engine's failure is recorded, never the zoo's end
            record["failures"][stage] = _error_text(error)
            print(f"  {name} {stage}: FAILED {record['failures'][stage]}", flush=True)
            if args.verbose:
                traceback.print_exc()
            return None

    built = attempt("model", MODELS[name])
    if built is None:
        return record
    model, example = built
    arrays = [aligned(t.numpy()) for t in example]
    runs = {"pytorch": torch_runner(model)}
    reference = runs["pytorch"](*arrays)
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        paths = attempt("onnx export", lambda: export_onnx(model, example, workdir))
        if paths is not None:
            for engine, path in zip(("ort_fp32", "ort_int8"), paths):
                run = attempt(engine, lambda path=path: ort_runner(path, threads))
                if run is not None:
                    runs[engine] = run
        mod = attempt("import", lambda: from_torch(model, example))
        if mod is None and paths is not None:  # torch.export refused (e.g. data-dependent shapes): the ONNX file
            mod = attempt("import onnx", lambda: from_onnx(constant_folded(paths[0], workdir)))
            record["importer"] = "onnx, shapes folded"
        tvm_engines = {"rules": {}} if mod is not None else {}
        if mod is not None and args.db is not None:
            tvm_engines["tuned"] = {"database": args.db}
        for engine, options in tvm_engines.items():
            executable = attempt(engine, lambda options=options: tvm_lut.compile(mod, target=target, **options))
            if executable is None:
                continue
            record["reports"][engine] = executable.lut_report.to_dict()
            built = attempt(engine, lambda e=executable, n=engine: tvm_runner(e, workdir / f"{n}.so"))
            if built is not None:
                runs[engine], record["sizes"][engine] = built
            print(f"  {name} {engine}: compiled, unscheduled: "
                  f"{', '.join(executable.lut_report.unscheduled) or 'none'}", flush=True)
        for engine, run in list(runs.items()):
            output = attempt(engine, lambda run=run: run(*arrays))
            if output is None:
                del runs[engine]
            elif engine != "pytorch":
                record["error"][engine] = max_relative_error(output, reference)
        torch.set_num_threads(threads)
        calls = {engine: (lambda run=run: run(*arrays)) for engine, run in runs.items()}
        timed = engine_timings(calls, threads, args.repeat, cpu_clock=args.clock == "cpu")
    record["latency_ms"] = {engine: 1e3 * timing.median for engine, timing in timed.items()}
    record["latency_ms_repetitions"] = {engine: [1e3 * s for s in timing.seconds] for engine, timing in timed.items()}
    record["cpu_wait"] = {engine: timing.median_waiting for engine, timing in timed.items()}
    record["threads_ran"] = {engine: timing.most_threads_ran for engine, timing in timed.items()}
    del model, runs, calls
    gc.collect()
    return record


def table_row(record: dict) -> dict:
    latency, error = record["latency_ms"], record["error"]
    row = {"model": record["model"]}
    for engine in ("pytorch", "ort_fp32", "ort_int8", "rules", "tuned"):
        row[f"{engine}_ms"] = latency.get(engine)
    baseline = latency.get("ort_fp32")
    for engine in ("rules", "tuned", "pytorch"):
        if baseline is not None and latency.get(engine):
            row[f"{engine}_vs_ort"] = baseline / latency[engine]
    for engine in ("rules", "tuned", "ort_fp32", "ort_int8"):
        row[f"{engine}_err"] = error.get(engine)
    report = record["reports"].get("rules")
    row["unscheduled"] = len(report["unscheduled"]) if report is not None else None
    waits = [w for w in record.get("cpu_wait", {}).values() if w is not None]
    row["cpu_wait"] = max(waits) if waits else None
    ran = [n for n in record.get("threads_ran", {}).values() if n is not None]
    row["threads_ran"] = max(ran) if ran else None
    return row


def summary(rows: list[dict]) -> dict:
    """The zoo's median speed-up of our rules over ONNX Runtime fp32, and its slowest model."""
    ratios = {row["model"]: row["rules_vs_ort"] for row in rows if row.get("rules_vs_ort") is not None}
    if not ratios:
        return {"median_rules_vs_ort": None, "slowest": None}
    slowest = min(ratios, key=ratios.get)
    return {"median_rules_vs_ort": statistics.median(ratios.values()), "slowest": slowest,
            "slowest_rules_vs_ort": ratios[slowest], "models_timed": len(ratios)}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, repeat=5)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="MODEL",
                        help=f"models to run (default: all of {', '.join(MODELS)})")
    parser.add_argument("--threads", type=int, default=1, help="threads for every engine (1)")
    parser.add_argument("--db", "--database", dest="db", help="tuning database of `tvm-lut tune` (adds 'tuned')")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or the process's CPU time (--threads 1 only): on a shared machine "
                             "the time other processes take is then not counted")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of every failure")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.clock == "cpu" and args.threads != 1:
        parser.error(f"--clock cpu times one thread only (it sums every thread's CPU time), "
                     f"got --threads {args.threads}")

    from schedules import host_target
    from schedules.target import use_runtime_threads
    target = host_target(args.threads)
    use_runtime_threads(target)
    records = []
    for name in args.models:
        print(f"{name}:", flush=True)
        records.append(measure(name, args, target))
    rows = [table_row(record) for record in records]
    overall = summary(rows)
    print(f"\nCPU {cpu_name()}; target {target}; {args.threads} thread(s); {args.clock} clock; "
          f"median of {args.repeat}; *_vs_ort > 1 means faster than ONNX Runtime fp32; cpu_wait: the most any "
          f"engine's threads waited for a CPU other processes held (0 on a quiet machine); threads_ran: the most "
          f"threads of the process that ran in one engine's repetition; "
          f"load average {load_average()}")
    print(format_table(rows, COLUMNS))
    median = overall["median_rules_vs_ort"]
    print(f"zoo median rules_vs_ort: {'n/a' if median is None else f'{median:.3f}'}"
          + (f"; slowest {overall['slowest']} ({overall['slowest_rules_vs_ort']:.3f})" if median else ""))
    for record in records:
        for stage, message in record["failures"].items():
            print(f"FAILED {record['model']} {stage}: {message}")
        report = record["reports"].get("rules")
        if report is not None and report["unscheduled"]:
            print(f"unscheduled in {record['model']}: {', '.join(report['unscheduled'])}")
    write_json(args.json, {"cpu": cpu_name(), "target": str(target), "threads": args.threads, "clock": args.clock,
                           "repeat": args.repeat, "load_average": load_average(),
                           "summary": overall, "rows": rows, "models": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
