"""LUT-NN from calibration alone on a real model: MiniLM-L6 exported to ONNX, every encoder dense layer PQ (K=16,
V=`--V`) fitted by `tvm_lut.pq.calibration_fit.learn_from_onnx` on calibration tweets (no labels, no training
code), accuracy on held-out tweets against FP32.

    python -m benchmarks.pq_calibration_accuracy [--V 16] [--n-calib 256] [--fit-rows 8192] [--refine-steps 0]
        [--ridge 1.0] [--independent] [--n-test 1000] [--n-train 1000] [--json PATH]

The PQ model runs in ONNX Runtime with the tables spliced into the graph (`tvm_lut.pq.onnx_splice`: the semantics
of the PQ reference, no compile), so one variant of the fit is measured in minutes. Each model (FP32, PQ) gets a
logistic-regression head fitted on its own embeddings of `--n-train` training tweets (the PQ model is another
model; `tvm-lut demo` does the same). Printed: both accuracies, the drop in points (target <= 2 at V=16), the
cosine of the PQ embeddings to FP32 on the test tweets, the fit's wall time, and each layer's relative output
error. `--independent` fits every layer on the exact model's activations (the earlier fit) instead of
sequentially (each layer on the inputs the fitted upstream layers produce).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.timing import format_table, write_json


def main(argv=None) -> int:
    from tvm_lut.pq.calibration_fit import FitSettings

    defaults = FitSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--V", type=int, default=16, help="sub-vector length of every encoder dense layer (16)")
    parser.add_argument("--n-calib", type=int, default=256, help="calibration tweets the tables are fitted on (256)")
    parser.add_argument("--fit-rows", type=int, default=8192, help="activation rows sampled per layer (8192)")
    parser.add_argument("--refine-steps", type=int, default=0, help="Adam steps on the centroids (0)")
    parser.add_argument("--ridge", type=float, default=defaults.ridge, help=f"prior weight ({defaults.ridge})")
    parser.add_argument("--kmeans-iters", type=int, default=20, help="k-means iterations (20)")
    parser.add_argument("--independent", action="store_true", help="fit each layer on the exact model's inputs")
    parser.add_argument("--all-tokens", action="store_true", help="fit on padding tokens too (no token mask)")
    parser.add_argument("--n-test", type=int, default=1000, help="held-out tweets (1000)")
    parser.add_argument("--n-train", type=int, default=1000, help="training tweets for each head (1000)")
    parser.add_argument("--threads", type=int, default=1, help="threads for ONNX Runtime and torch (1)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result to PATH as JSON")
    args = parser.parse_args(argv)

    import onnx
    import torch

    from tvm_lut.datasets import load_tweets
    from tvm_lut.lut_accuracy import export_onnx, ort_encoder
    from tvm_lut.models import load_minilm
    from tvm_lut.pq.calibration_fit import learn_from_onnx
    from tvm_lut.pq.config import PQConfig
    from tvm_lut.pq.onnx_splice import splice_bundle
    from tvm_lut.sentiment import accuracy, cosines, embed, train_live_head

    torch.set_num_threads(args.threads)
    batch, length = 8, 64
    splits = load_tweets()
    test, train = splits.test.head(args.n_test), splits.train.head(args.n_train)
    calib_ids, calib_mask = splits.calibration.head(args.n_calib).tokens(length)
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
        start = time.perf_counter()
        bundle, report = learn_from_onnx(
            onnx_path,
            [{"input_ids": calib_ids[i:i + batch], "attention_mask": calib_mask[i:i + batch]}
             for i in range(0, len(calib_ids) - batch + 1, batch)],
            PQConfig(V=args.V, kmeans_iters=args.kmeans_iters), settings, threads=args.threads)
        fit_s = time.perf_counter() - start
        pq_model = splice_bundle(onnx.load(str(onnx_path)), bundle)
    pq_acc, pq_emb = score(ort_encoder(pq_model.SerializeToString()), "PQ")
    print(report)
    row = {"V": args.V, "fit": "independent" if args.independent else "sequential",
           "tokens": "all" if args.all_tokens else "unpadded", "n_calib": args.n_calib,
           "fit_rows": args.fit_rows, "refine_steps": args.refine_steps, "ridge": args.ridge,
           "kmeans_iters": args.kmeans_iters, "fp32_acc": round(100 * fp32_acc, 2), "pq_acc": round(100 * pq_acc, 2),
           "drop_points": round(100 * (fp32_acc - pq_acc), 2),
           "mean_cosine": round(float(np.nanmean(cosines(fp32_emb, pq_emb))), 4), "fit_s": round(fit_s, 1)}
    print(format_table([row], list(row)))
    write_json(args.json, {**row, "layer_errors": report.errors})
    return 0


if __name__ == "__main__":
    sys.exit(main())
