"""GFLOPS of the `Matmul` schedule rule against PyTorch (oneDNN) on the matmul shapes of MiniLM-L6.

    python -m benchmarks.matmul_rule [--repeat N] [--threads N] [--json PATH]

Each row: one fp32 (batch) matmul, PyTorch with the same thread count, then our rule (untuned), same inputs.
PyTorch is timed first for every shape, then TVM, so the two thread pools never spin against each other.
"""

import argparse
import sys

import numpy as np

from .timing import add_common_arguments, format_table, median_seconds, write_json

# (batch, M, N, K): Q/K/V/out projections, FFN up and down at batch 8 x 64 tokens, attention scores and context.
SHAPES = [(1, 128, 384, 384), (1, 512, 384, 384), (1, 512, 1536, 384), (1, 512, 384, 1536), (96, 64, 64, 32),
          (96, 64, 32, 64), (1, 64, 384, 384)]


def matmul_func(batch: int, m: int, n: int, k: int):
    from tvm import te

    a = te.placeholder((batch, m, k), name="a")
    b = te.placeholder((batch, k, n), name="b")
    r = te.reduce_axis((0, k), "k")
    c = te.compute((batch, m, n), lambda x, i, j: te.sum(a[x, i, r] * b[x, r, j], axis=r), name="matmul")
    return te.create_prim_func([a, b, c])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--threads", type=int, help="threads for both (default: the cores this process may use)")
    args = parser.parse_args(argv)

    import torch
    import tvm

    from schedules import host_target
    from schedules.rules import Matmul
    from schedules.target import num_cores, use_runtime_threads

    target = host_target(args.threads)
    torch.set_num_threads(use_runtime_threads(target))
    rng = np.random.default_rng(0)
    operands = {shape: (rng.standard_normal(shape[:2] + shape[3:]).astype("float32"),
                        rng.standard_normal((shape[0], shape[3], shape[2])).astype("float32")) for shape in SHAPES}
    rows = []
    for shape, (a, b) in operands.items():
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        rows.append({"shape": "x".join(map(str, shape)), "torch_ms": 1e3 * median_seconds(lambda: ta @ tb, args.repeat)})
    for row, (shape, (a, b)) in zip(rows, operands.items()):
        func = Matmul().apply(matmul_func(*shape), target, False).mod["main"].with_attr("global_symbol", "main")
        kernel = tvm.compile(tvm.IRModule({"main": func}), target=target)["main"]
        ta, tb = tvm.runtime.tensor(a), tvm.runtime.tensor(b)
        tc = tvm.runtime.tensor(np.empty((shape[0], shape[1], shape[2]), "float32"))
        row["ours_ms"] = 1e3 * median_seconds(lambda: kernel(ta, tb, tc), args.repeat)
        row["max_err"] = float(np.abs(tc.numpy() - a @ b).max())
        flops = 2 * np.prod(shape) / 1e9
        row["torch_gflops"] = flops / row["torch_ms"] * 1e3
        row["ours_gflops"] = flops / row["ours_ms"] * 1e3
        row["ours_vs_torch"] = row["torch_ms"] / row["ours_ms"]
    print(f"target {target}, {num_cores(target)} threads; batch x M x N x K; median of {args.repeat}")
    print(format_table(rows, ["shape", "torch_ms", "ours_ms", "torch_gflops", "ours_gflops", "ours_vs_torch",
                              "max_err"]))
    write_json(args.json, {"target": str(target), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
