"""Whole models built here for another CPU, run on a device of a TVM RPC tracker: device latency, and the outputs
checked against this machine's build of the same model.

    python -m benchmarks.device --target aarch64 --rpc-tracker 127.0.0.1:9190 --rpc-key pi4 [--threads 4]
        [--models minilm-8x64 cnn] [--engines exact nnlut nnlut+pq]
    python -m benchmarks.device --target aarch64 --emulated 1      # its own tracker and emulated device

Each row is one model and engine (`tvm_lut.device`): latency on the device (median of `--repeat` runs), and the
relative difference `max |device - host| / max |host|` against the host build, with its tolerance (1e-4 for the
exact and NN-LUT builds; PQ's argmin may flip a near tie under other rounding). The exit status is 1 if any row is
outside its tolerance. Under emulation (qemu-user, `--emulated`) the latencies mean nothing; the outputs do.
"""

import argparse
import contextlib
import sys
from pathlib import Path

from tvm_lut.target_args import add_target_arguments, resolve_target, resolve_tracker

from .timing import format_table, write_json

MODELS = {"minilm-8x64": ("minilm-l6", 8, 64), "minilm-1x64": ("minilm-l6", 1, 64), "cnn": ("fashion-cnn", 8, 0)}


def main(argv=None) -> int:
    from schedules.target import num_cores
    from tvm_lut.device import ENGINES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.device", description=__doc__.splitlines()[0])
    add_target_arguments(parser, rpc=True)
    parser.add_argument("--threads", type=int, help="threads of the target's device (default: the preset's)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["minilm-8x64", "cnn"])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--emulated", type=int, metavar="N", default=0,
                        help="start a tracker with N emulated aarch64 devices (scripts/arm_device.sh) and use it")
    parser.add_argument("--repeat", type=int, default=3, help="device runs per latency (median; 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    target = resolve_target(args)
    if args.emulated and args.rpc_tracker:
        parser.error("--emulated starts its own tracker: give it or --rpc-tracker, not both")
    if not args.emulated and not args.rpc_tracker:
        parser.error("give --rpc-tracker HOST:PORT --rpc-key KEY (or --emulated N)")
    with contextlib.ExitStack() as stack:
        if args.emulated:
            from schedules.rpc import emulated_pool

            tracker = stack.enter_context(emulated_pool(args.emulated, threads=num_cores(target)))
        else:
            tracker = resolve_tracker(args, target)
        rows = measure(args, target, tracker)
    print(f"target {target}; devices under {tracker.key!r} at {tracker.address}")
    print("latency measured on the device; under emulation (qemu-user) device timings mean nothing, outputs do")
    print(format_table(rows, ["model", "engine", "device_ms", "relative_difference", "tolerance", "ok"]))
    write_json(args.json and Path(args.json), {"target": str(target), "rows": rows})
    return 0 if all(row["ok"] for row in rows) else 1


def measure(args, target, tracker) -> list[dict]:
    from tvm_lut.device import check_on_device, kmeans_pq_bundle, model_and_inputs
    from tvm_lut.frontend import from_torch

    rows = []
    for name in args.models:
        model_name, batch, length = MODELS[name]
        model, example = model_and_inputs(model_name, batch, length)
        mod = from_torch(model, example)
        inputs = [tensor.numpy() for tensor in example]
        bundle = kmeans_pq_bundle(model, example) if "nnlut+pq" in args.engines else None
        for engine in args.engines:
            check = check_on_device(mod, inputs, target, tracker, engine, bundle, repeat=args.repeat)
            rows.append({"model": name, "engine": engine, "device_ms": check.device_ms,
                         "relative_difference": check.relative_difference, "tolerance": check.tolerance,
                         "ok": check.ok})
            print(f"{name} {engine}: {check.device_ms:.1f} ms on the device, relative difference "
                  f"{check.relative_difference:.2e} (tolerance {check.tolerance:g})", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
