"""LUT-NN dense / conv kernels (PQ encode + vpshufb lookup) against fp32 and int8 dense on the same CPU.

    python -m benchmarks.pq_dense [--repeat N] [--json PATH] [--sub-len V] [--threads T]

Per shape, median milliseconds of: PyTorch fp32 `F.linear` / `F.conv2d` (same thread count as TVM), ONNX Runtime
fp32 and int8 (dynamic quantization: `MatMulInteger` / `ConvInteger`), TVM dense under the project's `Matmul`
schedule rule (dense shapes only), and the LUT kernels: encode + lookup, and each part. The ratio columns divide
PyTorch's time by the LUT time. Centroids and tables are random: the kernels' speed does not depend on their
values. The systems take turns, `--repeat` rounds of 10 single calls each (with a pause between systems so idle
worker threads sleep), and each time is the median over every call: load changes on a shared machine hit all
systems alike, and calls the OS preempted do not count.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from .timing import add_common_arguments, format_table, write_json

# name, rows N, in features D, out features M. MiniLM-L6 at 8 x 64 tokens, BERT-base at 128 tokens, one token.
DENSE_SHAPES = [
    ("minilm qkv/out", 512, 384, 384), ("minilm ffn up", 512, 384, 1536), ("minilm ffn down", 512, 1536, 384),
    ("bert qkv/out", 128, 768, 768), ("bert ffn up", 128, 768, 3072), ("bert ffn down", 128, 3072, 768),
    ("one token 384", 1, 384, 384), ("one token 768", 1, 768, 768),
]
# name, (batch, channels, height, width), out channels, kernel: a ResNet stage-1 3x3 conv.
CONV_SHAPES = [("conv3x3 64->64 56x56", (1, 64, 56, 56), 64, 3)]
CONV_SUB_LEN = 9  # one channel's 3x3 patch, as LUT-NN uses for 3x3 convs
CALLS_PER_ROUND = 10


def _call_ms(fn, calls: int) -> list[float]:
    """Milliseconds of `calls` single calls. Their median ignores the calls the OS preempted, which on a loaded
    machine inflate any average over a long loop (by 2-3x here, with 10 runnable processes on 2 cores)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def _onnx_sessions(node_type: str, x_shape, weight: np.ndarray, threads: int, tmp: str):
    """ONNX Runtime fp32 and dynamically quantized int8 sessions of one MatMul (x @ W.T) or Conv (pad 1)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if node_type == "MatMul":
        init = numpy_helper.from_array(np.ascontiguousarray(weight.T), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        out_shape = [x_shape[0], weight.shape[0]]
    else:
        init = numpy_helper.from_array(weight, "w")
        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
        out_shape = [x_shape[0], weight.shape[0], x_shape[2], x_shape[3]]
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [init])
    fp32_path, int8_path = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32_path)
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle workers must not steal cores
    return [ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]) for path in (fp32_path, int8_path)]


def _lut_kernels(rows, features, outputs, sub_len, target, intrin, source=None):
    """Compiled encode and lookup kernels with random centroids and table, and their packed operands."""
    import tvm

    from schedules.kernels.pq_encode import pack_centroids, pq_encode_func
    from schedules.kernels.pq_lookup import LookupLayout, pack_table, pq_lookup_func
    from schedules.target import num_cores

    rng = np.random.default_rng(0)
    layout = LookupLayout(rows, features // sub_len, 16, outputs, intrin.lanes)
    centroids = rng.standard_normal((layout.codebooks, 16, sub_len)).astype(np.float32)
    table = rng.integers(-127, 128, (layout.codebooks, 16, outputs)).astype(np.int8)
    built = [tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=target)["main"]
             for f in (pq_encode_func(layout, sub_len, source, num_cores(target)), pq_lookup_func(layout, intrin))]
    operands = [tvm.runtime.tensor(a) for a in (pack_centroids(centroids, layout), np.zeros(layout.codes_shape, np.uint8),
                                                pack_table(table, layout), np.full(outputs, 0.01, np.float32),
                                                np.zeros(outputs, np.float32),
                                                np.zeros((rows, outputs), np.float32))]
    return built, operands


def _systems(row, x, weight, source, target, threads, intrin, tmp) -> dict:
    """Name -> a no-argument callable running that system on this case (all compiled / loaded already)."""
    import torch
    import torch.nn.functional as F
    import tvm

    from benchmarks.matmul_rule import matmul_func
    from schedules.rules import Matmul

    tx, tw = torch.from_numpy(x), torch.from_numpy(weight)
    conv = source is not None

    def torch_fp32():
        with torch.no_grad():
            return F.conv2d(tx, tw, padding=1) if conv else F.linear(tx, tw)

    fp32, int8 = _onnx_sessions("Conv" if conv else "MatMul", x.shape, weight, threads, tmp)
    systems = {"torch_ms": torch_fp32, "ort_fp32_ms": lambda: fp32.run(None, {"x": x}),
               "ort_int8_ms": lambda: int8.run(None, {"x": x})}
    scheduled = None if conv else Matmul().apply(matmul_func(1, row["N"], row["M"], row["D"]), target, False)
    if scheduled is not None:  # no conv rule, and the Matmul rule does not fit one row: left empty, not faked
        dense = tvm.compile(tvm.IRModule({"main": scheduled.mod["main"].with_attr("global_symbol", "main")}),
                            target=target)["main"]
        dense_args = [tvm.runtime.tensor(a) for a in (x[None], np.ascontiguousarray(weight.T)[None],
                                                      np.zeros((1, row["N"], row["M"]), np.float32))]
        systems["tvm_dense_ms"] = lambda: dense(*dense_args)
    (encode, lookup), (centroids, codes, table, scale, bias, out) = _lut_kernels(
        row["N"], row["D"], row["M"], row["V"], target, intrin, source)
    lut_x = tvm.runtime.tensor(x)
    systems["encode_ms"] = lambda: encode(lut_x, centroids, codes)
    systems["lookup_ms"] = lambda: lookup(codes, table, scale, bias, out)
    systems["lut_ms"] = lambda: (encode(lut_x, centroids, codes), lookup(codes, table, scale, bias, out))
    return systems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--sub-len", type=int, default=16, help="V, the sub-vector length of the dense layers (16)")
    parser.add_argument("--threads", type=int, help="threads for every system (default: the cores this process "
                        "may use); on a loaded machine 1 gives the steadiest ratios")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")

    import torch
    from tvm_lut.progress import progress_bar

    from schedules import host_target
    from schedules.intrin import lookup_intrin
    from schedules.kernels.pq_encode import Im2col
    from schedules.target import use_runtime_threads

    target = host_target(args.threads)
    threads = use_runtime_threads(target)  # TVM's own default is half the logical CPUs
    intrin = lookup_intrin(target)
    if intrin is None:
        print(f"target {target} has no lookup intrinsic (AVX2 / AVX-512BW / NEON): nothing to measure")
        return 1
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    cases = []  # (row, x, weight, conv source)
    for name, rows, features, outputs in DENSE_SHAPES:
        cases.append(({"shape": name, "N": rows, "D": features, "M": outputs, "V": args.sub_len},
                      rng.standard_normal((rows, features)).astype(np.float32),
                      rng.standard_normal((outputs, features)).astype(np.float32), None))
    for name, x_shape, outputs, kernel in CONV_SHAPES:
        source = Im2col(x_shape, (kernel, kernel), padding=(1, 1, 1, 1))
        cases.append(({"shape": name, "N": source.rows, "D": source.features, "M": outputs, "V": CONV_SUB_LEN},
                      rng.standard_normal(x_shape).astype(np.float32),
                      rng.standard_normal((outputs, x_shape[1], kernel, kernel)).astype(np.float32), source))

    with tempfile.TemporaryDirectory() as tmp:
        for row, x, weight, source in progress_bar(cases, desc="compile and measure", progress=True):
            systems = _systems(row, x, weight, source, target, threads, intrin, tmp)
            for fn in systems.values():
                fn()  # warm-up
            samples = {name: [] for name in systems}
            for _ in range(args.repeat):  # interleaved: load changes on a shared machine hit every system alike
                for name, fn in systems.items():
                    time.sleep(0.02)  # let the previous system's worker threads go idle
                    samples[name] += _call_ms(fn, CALLS_PER_ROUND)
            row.update({name: statistics.median(values) for name, values in samples.items()})
            row["vs_torch"] = row["torch_ms"] / row["lut_ms"]
            row["vs_ort_int8"] = row["ort_int8_ms"] / row["lut_ms"]
            row["encode_share"] = row["encode_ms"] / (row["encode_ms"] + row["lookup_ms"])

    print(f"target {target}; {threads} threads for every system; lookup intrinsic {intrin.name} ({intrin.lanes} rows); "
          f"K = 16; median of {args.repeat} x {CALLS_PER_ROUND} calls, milliseconds")
    print(format_table([row for row, *_ in cases],
                       ["shape", "N", "D", "M", "V", "torch_ms", "ort_fp32_ms", "ort_int8_ms", "tvm_dense_ms",
                        "encode_ms", "lookup_ms", "lut_ms", "vs_torch", "vs_ort_int8", "encode_share"]))
    write_json(args.json, {"target": str(target), "threads": threads, "intrin": intrin.name,
                           "rows": [row for row, *_ in cases]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
