"""Tweet accuracy of MiniLM-L6 with learned PQ tables: PyTorch PQ model vs the same model through LUTDense, compiled.

    python -m benchmarks.pq_compiled_accuracy [--V 16] [--test-size 300] [--json PATH]

A small end-to-end check of the LUT-NN inference path (not a training benchmark; `benchmarks.lutnn_accuracy` is
that): MiniLM-L6 (frozen) and a logistic-regression head trained on FP32 embeddings of `--head-size` training
tweets; every encoder Linear PQ (K=16) from k-means plus one epoch of centroid learning on `--calib-size`
calibration tweets; the learned model imported with torch.export, rewritten by `relay_passes.LUTDense` and
compiled for this CPU. The same held-out test tweets go through the PyTorch PQ model and the compiled one, and
the same head labels both. Printed: the three accuracies, how many test labels differ between PyTorch PQ and
compiled PQ, and the largest embedding difference.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .timing import format_table, write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--V", type=int, default=16, help="sub-vector length of every encoder Linear (16)")
    parser.add_argument("--head-size", type=int, default=500, help="training tweets for the head (500)")
    parser.add_argument("--calib-size", type=int, default=96, help="calibration tweets for k-means + learning (96)")
    parser.add_argument("--test-size", type=int, default=300, help="held-out test tweets (300)")
    parser.add_argument("--length", type=int, default=32, help="tokens per tweet (32)")
    parser.add_argument("--batch", type=int, default=16, help="rows per compiled call (16)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results to PATH as JSON")
    args = parser.parse_args(argv)

    import torch
    import tvm
    from tvm import relax

    from relay_passes import LUTDense, PassReport
    from schedules import host_target
    from tvm_lut.datasets.tweets import load_tweets
    from tvm_lut.frontend import from_torch
    from tvm_lut.models.minilm import load_minilm
    from tvm_lut.pq.config import PQConfig
    from tvm_lut.pq.handler import learn_pq
    from tvm_lut.sentiment import accuracy, embed, torch_encoder, train_head, vm_encoder

    torch.set_num_threads(1)  # a shared machine: more threads than free cores make torch far slower
    splits = load_tweets()
    encoder = load_minilm()
    head_set, test_set = splits.train.head(args.head_size), splits.test.head(args.test_size)
    test_ids, test_mask = test_set.tokens(args.length)
    head = train_head(embed(torch_encoder(encoder), *head_set.tokens(args.length), batch_size=args.batch,
                            desc="FP32 head embeddings"), head_set.labels)

    start = time.perf_counter()
    ids, mask = (torch.from_numpy(a) for a in splits.calibration.head(args.calib_size).tokens(args.length))
    batches = [((ids[i:i + args.batch], mask[i:i + args.batch]), None) for i in range(0, len(ids), args.batch)]
    learned = learn_pq(encoder, batches, PQConfig(K=16, V=args.V, epochs=1, include=("encoder.*",)))
    learn_s = time.perf_counter() - start

    start = time.perf_counter()
    target = host_target()
    rewritten = LUTDense(learned.bundle, target=target)(from_torch(encoder, (ids[:args.batch], mask[:args.batch])))
    report = PassReport.of(rewritten, "LUTDense")
    compiled = vm_encoder(relax.VirtualMachine(tvm.compile(rewritten, target=target), tvm.cpu()))
    compile_s = time.perf_counter() - start

    fp32 = embed(torch_encoder(encoder), test_ids, test_mask, batch_size=args.batch, desc="FP32")
    torch_pq = embed(torch_encoder(learned.model), test_ids, test_mask, batch_size=args.batch, desc="PyTorch PQ")
    tvm_pq = embed(compiled, test_ids, test_mask, batch_size=args.batch, desc="compiled PQ")
    labels = test_set.labels
    row = {"V": args.V, "test_tweets": len(labels), "layers_lut": len(report.replaced),
           "layers_exact": len(report.kept), "fp32_acc": accuracy(head, fp32, labels),
           "torch_pq_acc": accuracy(head, torch_pq, labels), "compiled_pq_acc": accuracy(head, tvm_pq, labels),
           "labels_differ": int((head.predict(torch_pq) != head.predict(tvm_pq)).sum()),
           "max_embedding_diff": float(np.abs(torch_pq - tvm_pq).max()), "learn_s": learn_s, "compile_s": compile_s}
    print(format_table([row], list(row)))
    write_json(args.json, {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "rows": [row]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
