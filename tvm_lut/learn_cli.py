"""`tvm-lut learn MODEL -o OUT_DIR`: learn LUT tables for a model and write the artifact `tvm-lut compile` builds.

    tvm-lut learn fashion-cnn -o cnn_lut/                  # trains the CNN, learns PQ tables by backprop (LUT-NN)
    tvm-lut learn fashion-cnn --quick -o cnn_lut/          # the same at CI size (about a minute)
    tvm-lut learn minilm-l6 --V 16 --nonlinear -o minilm_lut/
    tvm-lut learn minilm.onnx --input input_ids:8x64:int64 --input attention_mask:8x64:int64 \\
        --calib calib.npz -o minilm_lut/                   # no training code: tables from calibration alone
    tvm-lut compile minilm_lut/ -o minilm.so

Built-in models learn on their task's data (Fashion-MNIST, tweets) with labels and backprop
(`tvm_lut.pq.handler.learn_pq`, settings `tvm_lut.pq.tasks.TASK_CONFIGS`); an interrupted run continues from
`--checkpoint`. A model file (.onnx, .pt2) learns from `--calib` alone (`tvm_lut.pq.calibration_fit`). The artifact
(`tvm_lut.artifact`) holds the model the tables belong to (with `trainable="all"` the trained weights), the bundle,
and a manifest; with `--nonlinear` the bundle also holds NN-LUT tables (calibrated on a built-in model's data, the
shipped defaults for a model file).
"""

from __future__ import annotations

import argparse
import dataclasses

from tvm_lut import model_spec
from tvm_lut.model_spec import UsageError

# CI-sized runs (`--quick`): a CNN trained briefly on a few images, few tweets, one epoch, short fits.
QUICK_SIZES = {"fashion-cnn": {"train_size": 2048, "train_epochs": 1, "calib_size": 256, "learn_size": 512,
                               "test_size": 1000},
               "minilm-l6": {"head_size": 256, "calib_size": 64, "learn_size": 128, "test_size": 200}}
_TASK_SIZES = ("calib", "learn", "test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model_spec.add_model_argument(parser, artifacts=False)
    model_spec.add_output_argument(parser, "the artifact directory to write (model, bundle, manifest)")
    parser.add_argument("--calib", type=str, metavar="FILE", help="model files: calibration inputs (.npz or "
                        ".safetensors, one array per input, samples along the first axis)")
    parser.add_argument("--config", type=str, metavar="JSON", help="a PQConfig as JSON (default: the built-in task's "
                        "measured settings, tvm_lut.pq.tasks.TASK_CONFIGS; PQConfig() with V=16 for a model file)")
    parser.add_argument("--V", type=int, help="sub-vector length of linear layers (overrides the config)")
    parser.add_argument("--nonlinear", action="store_true", help="also NN-LUT tables for GELU/Softmax/LayerNorm")
    parser.add_argument("--token-mask", type=str, metavar="INPUT", help="model files: the input (B, L) whose zeros "
                        "mark padding tokens, whose rows the fit skips (default: attention_mask when the model has "
                        "it; 'none' fits every row)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run: small data, one epoch, short fits")
    parser.add_argument("--checkpoint", type=str, metavar="FILE", help="built-in models: resumable training "
                        "checkpoint (.safetensors)")
    parser.add_argument("--weights", type=str, metavar="FILE", help="fashion-cnn: FP32 weights (.safetensors) to "
                        "start from instead of training the CNN")
    for size in _TASK_SIZES:
        parser.add_argument(f"--{size}-size", type=int, help=f"built-in models: {size} rows (task default if unset)")
    model_spec.add_threads_argument(parser)
    model_spec.add_progress_argument(parser)


def _config(args, default):
    from tvm_lut.pq.config import PQConfig

    if args.config is None:
        config = default
    else:
        try:
            with open(args.config) as handle:
                config = PQConfig.from_json(handle.read())
        except (OSError, ValueError, TypeError) as err:
            raise UsageError(f"--config {args.config!r}: not a readable PQConfig ({err})") from None
    return config if args.V is None else dataclasses.replace(config, V=args.V)


def run(args: argparse.Namespace) -> int:
    import torch

    source = model_spec.model_from_args(args)
    threads = model_spec.threads_from_args(args)
    torch.set_num_threads(threads)
    progress = model_spec.progress_from_args(args)
    if source.kind == "artifact":
        raise UsageError(f"{source.spec!r} is already a learned artifact; learn from the model itself")
    if source.kind == "builtin":
        for option in ("calib", "token_mask"):
            if getattr(args, option) is not None:
                raise UsageError(f"{source.spec} learns on its own task data; --{option.replace('_', '-')} applies "
                                 "to model files")
        if args.weights is not None and source.spec != "fashion-cnn":
            raise UsageError("--weights applies to fashion-cnn only")
        return _learn_builtin(args, source, progress)
    for option in ("checkpoint", "weights", *(f"{size}_size" for size in _TASK_SIZES)):
        if getattr(args, option) is not None:
            raise UsageError(f"--{option.replace('_', '-')} applies to built-in models; {source.spec!r} learns "
                             "from --calib alone")
    if args.calib is None:
        raise UsageError(f"{source.spec!r} has no training code here: give calibration inputs with --calib FILE "
                         "(.npz or .safetensors)")
    return _learn_from_calibration(args, source, threads, progress)


def _learn_builtin(args, source, progress: bool) -> int:
    from tvm_lut.artifact import save_artifact
    from tvm_lut.pq.handler import learn_pq
    from tvm_lut.pq.swap import unswap_
    from tvm_lut.pq.tasks import TASK_CONFIGS, accuracy, cnn_task, minilm_task

    task_name = "cnn" if source.spec == "fashion-cnn" else "minilm"
    config = _config(args, TASK_CONFIGS[task_name])
    if args.quick:
        config = dataclasses.replace(config, epochs=1, warmup_steps=min(config.warmup_steps, 2))
    sizes = dict(QUICK_SIZES[source.spec]) if args.quick else {}
    sizes.update({f"{size}_size": getattr(args, f"{size}_size") for size in _TASK_SIZES
                  if getattr(args, f"{size}_size") is not None})
    task = (cnn_task(weights=args.weights, progress=progress, **sizes) if task_name == "cnn"
            else minilm_task(progress=progress, **sizes))
    result = learn_pq(task.model, task.calib + task.learn, config, checkpoint=args.checkpoint, progress=progress)
    print(result.report)
    scores = {"fp32": accuracy(task.model, task.test), "pq": accuracy(result.model, task.test)}
    print(f"accuracy on {sum(len(labels) for _, labels in task.test)} held-out rows: FP32 {scores['fp32']:.4f}, "
          f"PQ {scores['pq']:.4f} (PyTorch)")
    trained = unswap_(result.model)
    deployed = trained if task_name == "cnn" else trained.encoder  # MiniLM: the encoder; the head is the task's
    bundle = result.bundle
    if args.nonlinear:
        import tvm_lut
        from tvm_lut.training import NonlinearConfig

        bundle = bundle.merged(tvm_lut.learn(deployed, task.calib, NonlinearConfig(), progress=progress))
    provenance = {"learned_by": "backprop (tvm_lut.pq.handler.learn_pq) on the task's labelled data",
                  "task": task_name, "task_sizes": sizes, "accuracy": scores}
    save_artifact(args.output, deployed, source.inputs, bundle, source=source.spec, provenance=provenance)
    print(f"wrote {args.output}: the model the tables belong to, {len(bundle)} tables, manifest")
    return 0


def _learn_from_calibration(args, source, threads: int, progress: bool) -> int:
    from tvm_lut.artifact import save_artifact
    from tvm_lut.pq.calibration_fit import FitSettings, learn_from_onnx
    from tvm_lut.pq.config import PQConfig

    batches = model_spec.load_calibration(args.calib, source.inputs)
    config = _config(args, PQConfig(V=16))
    names = [spec.name for spec in source.inputs]
    token_mask = args.token_mask or ("attention_mask" if "attention_mask" in names else "none")
    if token_mask != "none" and token_mask not in names:
        raise UsageError(f"--token-mask {token_mask!r} is not an input of the model ({', '.join(names)})")
    settings = dataclasses.replace(FitSettings(fit_rows=4096, refine_steps=20) if args.quick else FitSettings(),
                                   token_mask=None if token_mask == "none" else token_mask)
    if source.kind != "onnx":
        from tvm_lut.pq.calibration_fit import learn_from_pt2

        bundle, report = learn_from_pt2(source.path, batches, config, settings, progress=progress)
    else:
        bundle, report = learn_from_onnx(source.path, batches, config, settings, threads, progress=progress)
    print(report)
    if args.nonlinear:
        from tvm_lut.defaults import default_bundle

        bundle = bundle.merged(default_bundle())
    provenance = {"learned_by": "calibration only (tvm_lut.pq.calibration_fit), no labels",
                  "calibration": {"file": str(args.calib), "batches": len(batches)},
                  "nonlinear": "shipped default tables" if args.nonlinear else None}
    save_artifact(args.output, source.path, source.inputs, bundle, source=source.spec, provenance=provenance)
    print(f"wrote {args.output}: the model, {len(bundle)} tables, manifest")
    return 0
