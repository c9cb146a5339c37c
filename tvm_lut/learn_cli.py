"""`tvm-lut learn`: learn LUT-NN (PQ) tables for one of the real tasks and write the bundle.

    tvm-lut learn cnn --out cnn_pq.safetensors [--config pq.json] [--checkpoint ckpt.safetensors]
    tvm-lut learn minilm --out minilm_pq.safetensors --V 8
    tvm-lut learn cnn --out small.safetensors --weights cnn.safetensors --learn-size 512 --test-size 1000

Interrupted runs continue from `--checkpoint` (same config). The FP32 weights the tables were learned against
(the CNN's, or MiniLM's encoder) are written beside the bundle (`<out>.model.safetensors`; with `trainable: "all"`
the trained ones), since the bundle's fingerprints identify exactly those weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=["cnn", "minilm"], help="Fashion-MNIST CNN or MiniLM on tweets")
    parser.add_argument("--out", type=Path, required=True, help="bundle file to write (.safetensors)")
    parser.add_argument("--config", type=Path,
                        help="PQConfig as JSON (otherwise the task's measured settings, tvm_lut.pq.tasks.TASK_CONFIGS)")
    parser.add_argument("--V", type=int, help="sub-vector length of linear layers (overrides the config)")
    parser.add_argument("--checkpoint", type=Path, help="resumable training checkpoint (.safetensors)")
    parser.add_argument("--weights", type=Path, help="CNN: FP32 weights to load instead of training the CNN")
    for size in ("calib", "learn", "test"):
        parser.add_argument(f"--{size}-size", type=int, help=f"{size} rows (images or tweets; task default if unset)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from tvm_lut.pq.config import PQConfig
    from tvm_lut.pq.handler import learn_pq
    from tvm_lut.pq.swap import unswap_
    from tvm_lut.pq.tasks import TASK_CONFIGS, accuracy, cnn_task, minilm_task

    torch.set_num_threads(args.threads)
    config = PQConfig.from_json(args.config.read_text()) if args.config else TASK_CONFIGS[args.task]
    if args.V is not None:
        config = dataclasses.replace(config, V=args.V)
    sizes = {f"{size}_size": getattr(args, f"{size}_size") for size in ("calib", "learn", "test")}
    sizes = {key: value for key, value in sizes.items() if value is not None}
    task = (cnn_task(weights=args.weights, progress=args.progress, **sizes) if args.task == "cnn"
            else minilm_task(progress=args.progress, **sizes))
    result = learn_pq(task.model, task.calib + task.learn, config, checkpoint=args.checkpoint,
                      progress=args.progress)
    print(result.report)
    print(f"accuracy on held-out data: FP32 {accuracy(task.model, task.test):.4f}, "
          f"PQ {accuracy(result.model, task.test):.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.bundle.save(args.out)
    print(f"wrote {len(result.bundle)} PQ tables to {args.out}")
    model_path = args.out.with_suffix(".model.safetensors")
    model = unswap_(result.model)
    save_file((model if args.task == "cnn" else model.encoder).state_dict(), str(model_path))
    print(f"wrote the matching FP32 weights to {model_path}")
    return 0
