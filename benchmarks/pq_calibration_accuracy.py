"""LUT-NN from calibration alone on a real model: MiniLM-L6 exported to ONNX, every encoder dense layer PQ (K=16,
V=`--V`) fitted by `tvm_lut.pq.calibration_fit.learn_from_onnx` on calibration tweets (no labels, no training
code), accuracy on held-out tweets against FP32.

    python -m benchmarks.pq_calibration_accuracy [--V 16] [--n-calib 512] [--fit-rows 16384] [--refine-steps 0]
        [--ridge R] [--independent] [--ablate] [--library LIB.so] [--n-test 1000] [--n-train 1000] [--json PATH]

The PQ model runs in ONNX Runtime with the tables spliced into the graph (`tvm_lut.pq.onnx_splice`: the semantics
of the PQ reference, no compile), so one variant of the fit is measured in minutes. Each model (FP32, PQ) gets a
logistic-regression head fitted on its own embeddings of `--n-train` training tweets (the PQ model is another
model; `tvm-lut demo` does the same). Printed: both accuracies, the drop in points (target <= 2 at V=16), the
cosine of the PQ embeddings to FP32 on the test tweets, the fit's wall time, and each layer's relative output
error. `--independent` fits every layer on the exact model's activations (the earlier fit) instead of
sequentially (each layer on the inputs the fitted upstream layers produce). `--library LIB.so` scores a library
compiled by `tvm-lut compile` (e.g. from `tvm-lut learn minilm.onnx --calib ...`) instead of fitting: the same
FP32 reference, its own head. `--ablate` also prints the test cosine
with only one kind of layer product-quantized (the tables of the same fit): which kind costs the most.
"""

import argparse
import fnmatch
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.timing import format_table, write_json

# The kinds of encoder dense layer (MiniLM's ONNX node names), for `--ablate`.
LAYER_GROUPS = {"Q/K": ("*attention.self.query*", "*attention.self.key*"),
                "V/O": ("*attention.self.value*", "*attention.output.dense*"),
                "FFN in": ("*intermediate.dense*",),
                "FFN out": ("*layer.*.output.dense*",)}


def layer_group(name: str) -> str:
    """The first group of LAYER_GROUPS one of whose patterns `name` matches (FFN out's pattern also matches
    attention.output.dense, which V/O claims first)."""
    for group, patterns in LAYER_GROUPS.items():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return group
    raise ValueError(f"layer {name!r} is in no group of {sorted(LAYER_GROUPS)}")


def _scores(fp32_acc: float, fp32_emb: np.ndarray, pq_acc: float, pq_emb: np.ndarray) -> dict:
    from tvm_lut.sentiment import cosines

    return {"fp32_acc": round(100 * fp32_acc, 2), "pq_acc": round(100 * pq_acc, 2),
            "drop_points": round(100 * (fp32_acc - pq_acc), 2),
            "mean_cosine": round(float(np.nanmean(cosines(fp32_emb, pq_emb))), 4)}


def _score_library(args, score, fp32_acc: float, fp32_emb: np.ndarray) -> int:
    """The accuracy of a library compiled by `tvm-lut compile` (inputs input_ids, attention_mask of 8 x 64)."""
    import tvm
    from tvm import relax

    from tvm_lut.sentiment import vm_encoder

    library = relax.VirtualMachine(tvm.runtime.load_module(str(args.library)), tvm.cpu())
    pq_acc, pq_emb = score(vm_encoder(library), "library")
    row = {"library": str(args.library), **_scores(fp32_acc, fp32_emb, pq_acc, pq_emb)}
    print(format_table([row], list(row)))
    write_json(args.json, row)
    return 0


def main(argv=None) -> int:
    from tvm_lut.lut_accuracy import ExperimentConfig
    from tvm_lut.pq.calibration_fit import FitSettings

    defaults = FitSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--V", type=int, default=16, help="sub-vector length of every encoder dense layer (16)")
    config = ExperimentConfig()
    parser.add_argument("--n-calib", type=int, default=config.n_pq_calib, help="calibration tweets the tables are "
                        f"fitted on ({config.n_pq_calib}; "
                        "beyond the 512 of the calibration split, training-pool tweets the heads do not use)")
    parser.add_argument("--fit-rows", type=int, default=config.pq_fit_rows,
                        help=f"activation rows sampled per layer ({config.pq_fit_rows})")
    parser.add_argument("--refine-steps", type=int, default=0, help="Adam steps on the centroids (0)")
    parser.add_argument("--ridge", type=float, default=defaults.ridge,
                        help="prior weight (default: chosen per layer on held-out calibration rows)")
    parser.add_argument("--kmeans-iters", type=int, default=20, help="k-means iterations (20)")
    parser.add_argument("--independent", action="store_true", help="fit each layer on the exact model's inputs")
    parser.add_argument("--all-tokens", action="store_true", help="fit on padding tokens too (no token mask)")
    parser.add_argument("--n-test", type=int, default=1000, help="held-out tweets (1000)")
    parser.add_argument("--n-train", type=int, default=1000, help="training tweets for each head (1000)")
    parser.add_argument("--ablate", action="store_true", help="also the test cosine to FP32 with only one kind of "
                        "layer's tables spliced (Q/K, V/O, FFN in, FFN out), the others exact")
    parser.add_argument("--library", type=Path, metavar="LIB", help="no fit: score this library, compiled by "
                        "`tvm-lut compile` from a MiniLM artifact for inputs 8 x 64, against FP32")
    parser.add_argument("--threads", type=int, default=1, help="threads for ONNX Runtime and torch (1)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result to PATH as JSON")
    args = parser.parse_args(argv)

    import onnx
    import torch

    from tvm_lut.bundle import Bundle
    from tvm_lut.datasets import load_tweets
    from tvm_lut.lut_accuracy import export_onnx, ort_encoder, pq_calibration_tweets
    from tvm_lut.models import load_minilm
    from tvm_lut.pq.calibration_fit import learn_from_onnx
    from tvm_lut.pq.config import PQConfig
    from tvm_lut.pq.onnx_splice import splice_bundle
    from tvm_lut.sentiment import accuracy, cosines, embed, train_live_head

    torch.set_num_threads(args.threads)
    batch, length = 8, 64
    splits = load_tweets()
    test, train = splits.test.head(args.n_test), splits.train.head(args.n_train)
    calib_ids, calib_mask = pq_calibration_tweets(splits, args.n_calib, args.n_train).tokens(length)
    settings = FitSettings(fit_rows=args.fit_rows, refine_steps=args.refine_steps, ridge=args.ridge,
                           sequential=not args.independent, token_mask=None if args.all_tokens else "attention_mask")

    def score(encoder, name):
        train_emb = embed(encoder, *train.tokens(length), batch, f"train embeddings ({name})")
        test_emb = embed(encoder, *test.tokens(length), batch, f"test embeddings ({name})")
        live, head = train_live_head(train_emb, train.labels)
        return accuracy(head, test_emb[:, live], test.labels), test_emb

    with tempfile.TemporaryDirectory(prefix="tvm-lut-pq-calib-") as workdir:
        onnx_path = Path(workdir) / "minilm.onnx"
        ids, mask = calib_ids[:batch], calib_mask[:batch]
        export_onnx(load_minilm(), (torch.from_numpy(ids), torch.from_numpy(mask)), onnx_path)
        fp32_acc, fp32_emb = score(ort_encoder(onnx_path), "FP32")
        if args.library is not None:
            return _score_library(args, score, fp32_acc, fp32_emb)
        start = time.perf_counter()
        bundle, report = learn_from_onnx(
            onnx_path,
            [{"input_ids": calib_ids[i:i + batch], "attention_mask": calib_mask[i:i + batch]}
             for i in range(0, len(calib_ids) - batch + 1, batch)],
            PQConfig(V=args.V, kmeans_iters=args.kmeans_iters), settings, threads=args.threads)
        fit_s = time.perf_counter() - start
        exact_model = onnx.load(str(onnx_path))
    pq_acc, pq_emb = score(ort_encoder(splice_bundle(exact_model, bundle).SerializeToString()), "PQ")
    print(report)
    ablation = {}
    for group in LAYER_GROUPS if args.ablate else ():
        only = Bundle({name: entry for name, entry in bundle.items() if layer_group(name) == group})
        emb = embed(ort_encoder(splice_bundle(exact_model, only).SerializeToString()), *test.tokens(length), batch,
                    f"test embeddings ({group} only)")
        ablation[group] = round(float(np.nanmean(cosines(fp32_emb, emb))), 4)
    if ablation:
        print(format_table([{"only this kind PQ": group, "mean_cosine": value} for group, value in ablation.items()],
                           ["only this kind PQ", "mean_cosine"]))
    row = {"V": args.V, "fit": "independent" if args.independent else "sequential",
           "tokens": "all" if args.all_tokens else "unpadded", "n_calib": args.n_calib, "fit_rows": args.fit_rows,
           "refine_steps": args.refine_steps, "ridge": "held-out" if args.ridge is None else args.ridge,
           "kmeans_iters": args.kmeans_iters, **_scores(fp32_acc, fp32_emb, pq_acc, pq_emb), "fit_s": round(fit_s, 1)}
    print(format_table([row], list(row)))
    write_json(args.json, {**row, "ablation_mean_cosine": ablation, "layer_errors": report.errors})
    return 0


if __name__ == "__main__":
    sys.exit(main())
