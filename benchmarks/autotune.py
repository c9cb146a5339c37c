"""Per-layer autotuning of the Fashion-MNIST CNN: the autotuned model against every baseline, in one run.

    python -m benchmarks.autotune [--max-drop 1.0] [--cnn-weights FP32.safetensors] [--out-dir DIR] [--json PATH]

One thread throughout (the target, TVM's runtime pool, torch, ONNX Runtime). Steps:
1. `tvm_lut.autotune` on the CNN (`tvm-lut autotune fashion-cnn`'s task: calibration images from the end of the
   training split, learning from its start, the metric = test accuracy in percent), into `--out-dir` (resumable).
2. Which proxy predicts the drop: for every layer and PQ choice, the measured accuracy drop (first
   `--proxy-images` test images) of the model with only that layer PQ (k-means centroids) against both proxies
   (Spearman rank correlation).
3. Whole-model latency at batch 1, engines timed in turn (A B C A B C ...): ONNX Runtime fp32, TVM with our rules
   (exact, Winograd), TVM with the hand-picked LUT-NN settings of `tvm_lut.pq.tasks.CNN_PQ` (conv1 exact, conv2 V=9,
   conv3 V=4, fc1 V=4, fc2 V=2, K=16; learned like a trial), and TVM with the autotuned plan. Accuracy of each on
   the test images, the compiled models run by TVM.
The checks of issue 14 are printed: autotuned never slower than exact, >= 1.3x ONNX Runtime fp32, drop within budget.
"""

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .helpers.engines import aligned, export_onnx, median_latencies, ort_runner, tvm_runner
from .timing import add_common_arguments, format_table, write_json


def proxy_study(setup, result_dir: Path, images: int, out: dict) -> list[dict]:
    """Per layer and PQ choice: both proxies and the measured drop on the first `images` test images with only
    that layer PQ (k-means)."""
    import torch

    from tvm_lut.autotuning.layers import EXACT, Choice
    from tvm_lut.autotuning.output import STATE_DIR
    from tvm_lut.autotuning.sensitivity import Sensitivity, kmeans_model
    from tvm_lut.pq.tasks import accuracy as torch_accuracy

    sensitivity = Sensitivity.load(result_dir / STATE_DIR)
    (x,), y = setup.test[0]
    subset = [((x[:images],), y[:images])]
    exact = 100.0 * torch_accuracy(setup.model, subset)
    names = list(sensitivity.proxies)
    rows = []
    with torch.no_grad():
        for name, proxies in sensitivity.proxies.items():
            for label, values in proxies.items():
                plan = {other: EXACT for other in names}
                plan[name] = Choice.from_label(label)
                drop = exact - 100.0 * torch_accuracy(kmeans_model(setup.model, plan, sensitivity), subset)
                rows.append({"layer": name, "choice": label, "drop": drop, **values})
    for proxy in ("task_loss", "output_error"):
        out[f"spearman_{proxy}"] = _spearman([r[proxy] for r in rows], [r["drop"] for r in rows])
    return rows


def _spearman(a, b) -> float:
    ranks = [np.argsort(np.argsort(np.asarray(v, float), kind="stable")) for v in (a, b)]
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def engines(setup, plan_model, plan_bundle, hand_model, hand_bundle, workdir: Path):
    """name -> callable on one numpy image batch."""
    import tvm_lut
    from schedules import host_target
    from schedules.target import use_runtime_threads
    from tvm_lut.frontend import from_torch

    target = host_target(1)
    use_runtime_threads(target)
    example = setup.example_inputs
    onnx_path, _ = export_onnx(setup.model, example, workdir)
    built = {"ort fp32": ort_runner(onnx_path, 1),
             "tvm rules exact": tvm_runner(tvm_lut.compile(from_torch(setup.model, example), target=target),
                                           workdir / "exact.so")[0]}
    for label, model, bundle in (("tvm hand-picked pq", hand_model, hand_bundle),
                                 ("tvm autotuned", plan_model, plan_bundle)):
        executable = tvm_lut.compile(from_torch(model, example), bundle, target=target)
        print(f"  {label}: {executable.lut_report}", flush=True)
        built[label] = tvm_runner(executable, workdir / f"{label.replace(' ', '_')}.so")[0]
    return built


def accuracy(run, batches) -> float:
    """Test accuracy (percent) of an engine, one image at a time (the engines are built for batch 1)."""
    correct = total = 0
    for (images,), labels in batches:
        images = images.numpy()
        for i in range(len(images)):
            correct += int(run(aligned(images[i:i + 1])).argmax() == int(labels[i]))
        total += len(images)
    return 100.0 * correct / total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, repeat=9)
    parser.add_argument("--max-drop", type=float, default=1.0, help="allowed test-accuracy drop in points (1.0)")
    parser.add_argument("--max-trials", type=int, default=4, help="autotuning trials (4)")
    parser.add_argument("--epochs", type=int, default=1, help="learning epochs per trial (1)")
    parser.add_argument("--learn-size", type=int, default=10000, help="training images for learning (10000)")
    parser.add_argument("--cnn-weights", type=Path, help="FP32 CNN weights (default: train 5 epochs here)")
    parser.add_argument("--out-dir", type=Path, help="autotune output directory (resumable; default: a temporary one)")
    parser.add_argument("--no-proxy-study", dest="proxy_study", action="store_false")
    parser.add_argument("--proxy-images", type=int, default=1000,
                        help="test images the proxy study measures single-layer drops on (1000, at most one batch)")
    args = parser.parse_args(argv)

    import torch

    from schedules import host_target
    from tvm_lut.autotune_cli import task_setup
    from tvm_lut.autotuning.config import AutotuneConfig
    from tvm_lut.autotuning.driver import autotune
    from tvm_lut.defaults import _cpu_model
    from tvm_lut.pq.handler import learn_pq
    from tvm_lut.pq.swap import unswap_
    from tvm_lut.pq.tasks import CNN_PQ

    torch.set_num_threads(1)
    target = host_target(1)
    out = {"cpu": _cpu_model(), "target": str(target), "threads": 1, "max_drop": args.max_drop}
    started = time.perf_counter()
    setup = task_setup("fashion-cnn", weights=args.cnn_weights, epochs=args.epochs, learn_size=args.learn_size)
    out["seconds_fp32_training"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = args.out_dir or Path(scratch) / "autotune"
        config = AutotuneConfig(max_drop=args.max_drop, max_trials=args.max_trials)
        result = autotune(setup.model, setup.calib, setup.eval_fn, config, target, example_inputs=setup.example_inputs,
                          learning=setup.learning, learn_batches=setup.learn, out_dir=out_dir, source="fashion-cnn")
        print(result.plan.table(), flush=True)
        out["autotune_seconds"] = result.seconds
        out["plan"] = result.plan.to_dict()
        out["trials"] = [{"latency_us": t.latency_us, "metric": t.metric, "pq_layers": t.pq_layers}
                         for t in result.trials]
        if args.proxy_study:
            out["proxy_study"] = proxy_study(setup, out_dir, args.proxy_images, out)
            print(f"proxies against the measured single-layer k-means drop (Spearman): task loss "
                  f"{out['spearman_task_loss']:.3f}, output error {out['spearman_output_error']:.3f}", flush=True)
        hand_start = time.perf_counter()
        hand = learn_pq(setup.model, setup.learn, dataclasses.replace(CNN_PQ, epochs=args.epochs), progress=False)
        out["seconds_hand_picked_learning"] = time.perf_counter() - hand_start
        hand_metric = setup.eval_fn(hand.model)
        built = engines(setup, result.model, result.bundle, unswap_(hand.model), hand.bundle, Path(scratch))
        image = aligned(setup.example_inputs[0].numpy())
        seconds = median_latencies({k: (lambda run=run: run(image)) for k, run in built.items()}, 1, args.repeat)
    exact_metric = result.plan.exact_metric
    torch_metric = {"ort fp32": exact_metric, "tvm rules exact": exact_metric, "tvm hand-picked pq": hand_metric,
                    "tvm autotuned": result.plan.metric}
    rows = [{"engine": name, "latency_us": 1e6 * seconds[name], "vs_ort_fp32": seconds["ort fp32"] / seconds[name],
             "accuracy_torch": torch_metric[name], "accuracy_compiled": accuracy(run, setup.test)}
            for name, run in built.items()]
    out["rows"] = rows
    by_name = {row["engine"]: row for row in rows}
    auto, exact = by_name["tvm autotuned"], by_name["tvm rules exact"]
    out["checks"] = {
        "autotuned_not_slower_than_exact": auto["latency_us"] <= exact["latency_us"],
        "autotuned_vs_ort_fp32_at_least_1.3x": auto["vs_ort_fp32"] >= 1.3,
        "within_budget_on_test_set": exact["accuracy_compiled"] - auto["accuracy_compiled"] <= args.max_drop,
    }
    print(f"CPU {out['cpu']}; one thread; median of {args.repeat}; vs_ort_fp32 > 1 is faster than ONNX Runtime fp32")
    print(format_table(rows, ["engine", "latency_us", "vs_ort_fp32", "accuracy_torch", "accuracy_compiled"]))
    print("wall time by part (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    for check, ok in out["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
