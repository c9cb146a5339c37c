"""Where a parallel loop starts to pay on this CPU: the break-even work behind `CPUParams.min_parallel_work`.

    python -m benchmarks.parallel_launch [--threads N] [--repeat N] [--json PATH]

A parallel loop costs a fork and a join of TVM's thread pool whatever its body; below some work the serial loop is
faster. For each size, an elementwise add of two float32 vectors (the kind of function a small model's layout and
residual steps are) is scheduled by the `Elementwise` rule twice, serial and parallel, and both are timed with
repetitions interleaved. The break-even is the smallest size from which the parallel build is faster at every
larger size; `min_parallel_work` should sit at or above it (it counts elements for elementwise functions, a thread
launch weighed against one element's work). Run it on a quiet machine: a busy core delays the join, not the
serial loop, and moves the break-even up.
"""

import argparse
import sys

from .timing import add_common_arguments, format_table, load_average, timings, write_json

SIZES = [1 << s for s in range(10, 21)]  # 1K .. 1M elements
NEVER = 1 << 62  # a min_parallel_work no function reaches


def add_func(size: int):
    from tvm import te

    a = te.placeholder((size,), "float32", name="a")
    b = te.placeholder((size,), "float32", name="b")
    return te.create_prim_func([a, b, te.compute((size,), lambda i: a[i] + b[i], name="add")])


def build(size: int, target, min_parallel_work: int):
    """The add of `size` elements scheduled by the `Elementwise` rule with `min_parallel_work`, compiled."""
    import tvm
    from schedules.rules.elementwise import Elementwise
    from schedules.target import override_params

    with override_params(min_parallel_work=min_parallel_work):
        sch = Elementwise().apply(add_func(size), target, False)
    return tvm.compile(sch.mod, target=target)["main"]


def break_even(rows: list[dict]) -> int | None:
    """The smallest size from which the parallel build is faster at every size (None if it never is)."""
    size = None
    for row in reversed(rows):
        if row["parallel_us"] >= row["serial_us"]:
            break
        size = row["elements"]
    return size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parallel_launch", description=__doc__.split("\n")[0])
    add_common_arguments(parser, repeat=15)
    parser.add_argument("--threads", type=int, default=2, help="threads of the parallel build and of TVM's pool (2)")
    args = parser.parse_args(argv)
    if args.threads < 2:
        parser.error("--threads must be at least 2: one thread never launches")

    import numpy as np
    import tvm
    from schedules import host_target
    from schedules.target import use_runtime_threads

    target = host_target(args.threads)
    use_runtime_threads(target)
    load = load_average()
    rows = []
    for size in SIZES:
        a, b, out = (tvm.runtime.tensor(np.ones(size, np.float32)) for _ in range(3))
        fns = {kind: (lambda f=build(size, target, work): f(a, b, out)) for kind, work in
               (("serial", NEVER), ("parallel", 0))}
        seconds = timings(fns, args.repeat, min_seconds=0.005)
        row = {"elements": size, **{f"{kind}_us": 1e6 * t.median for kind, t in seconds.items()}}
        row["parallel_gain"] = row["serial_us"] / row["parallel_us"]
        rows.append(row)
    even = break_even(rows)
    print(f"target: {target.attrs['mcpu']}, {args.threads} threads; median of {args.repeat}; load {load} at the "
          f"start, {load_average()} at the end")
    print(format_table(rows, ["elements", "serial_us", "parallel_us", "parallel_gain"]))
    print(f"break-even: {even if even is not None else 'none'} elements (parallel faster from there on)")
    write_json(args.json, {"target": str(target), "threads": args.threads, "repeat": args.repeat, "rows": rows,
                           "break_even": even})
    return 0


if __name__ == "__main__":
    sys.exit(main())
